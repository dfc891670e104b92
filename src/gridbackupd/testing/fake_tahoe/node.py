"""
The fake node's state: what its grid holds (files, mutable and immutable
directories, by cap), how many servers it sees, the failures queued for the
next requests, and the requests seen.  The web face (``web.py``) turns HTTP
into calls on it; nothing here knows HTTP beyond the ``Answer`` it raises.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import attr
from twisted.internet import task

from .answers import DEFAULT_BODIES, Answer, no_shares, unrecoverable
from .caps import CHK_RE, DIR_RE, LIT_RE, LIT_THRESHOLD, b32, digest, unb32, well_formed

if TYPE_CHECKING:
    from twisted.web.resource import Resource


@attr.frozen
class RecordedRequest:
    """One request as the client sent it (``path`` includes the query)."""

    method: str
    path: str
    headers: dict
    body_producer: object = attr.field(repr=False)
    time: float


@attr.frozen
class _Link:
    """A directory entry: a write cap (mutable children only) and a read cap."""

    rw: str | None = attr.field(repr=False)
    ro: str = attr.field(repr=False)
    metadata: dict = attr.field(factory=dict)


@attr.define
class _MutableDir:
    writecap: str = attr.field(repr=False)
    readcap: str = attr.field(repr=False)
    children: dict = attr.field(factory=dict)


@attr.frozen
class _Injection:
    kind: str  # "status", "unhappy", "drop", "refuse"
    method: str | None
    status: int | None = None
    body: bytes | None = None


class FakeTahoe:
    """
    The state of a fake Tahoe node and its grid.

    :ivar connected: storage servers connected (the welcome page lists them).
    :ivar disconnected: storage servers known but not connected.
    :ivar needed, happy, total: the node's share encoding parameters.
    :ivar requests: a ``RecordedRequest`` per request, in order.
    """

    def __init__(self, connected=3, disconnected=0, needed=2, happy=3, total=3, clock=None):
        self.connected = connected
        self.disconnected = disconnected
        self.needed = needed
        self.happy = happy
        self.total = total
        self.clock = clock if clock is not None else task.Clock()
        self.files: dict[str, bytes] = {}
        self.mutable_dirs: dict[str, _MutableDir] = {}  # by fingerprint
        self.immutable_dirs: dict[str, dict[str, _Link]] = {}
        self.requests: list[RecordedRequest] = []
        self._injections: list[_Injection] = []
        self._dir_counter = 0

    # -- failure injection -------------------------------------------------

    def fail_next(self, status: int, *, body=None, times: int = 1, method: str | None = None):
        """Answer the next ``times`` requests (of ``method``) with ``status``."""
        if body is None:
            body = DEFAULT_BODIES.get(status, f"allmydata.fake.InjectedError: status {status}")
        if isinstance(body, str):
            body = body.encode("utf-8")
        for _ in range(times):
            self._injections.append(_Injection("status", method, status, body))

    def fail_next_unhappy(self, *, times: int = 1, method: str | None = None):
        """Answer the next requests as an unhappy upload does (500, traceback)."""
        for _ in range(times):
            self._injections.append(_Injection("unhappy", method))

    def drop_next(self, *, times: int = 1, method: str | None = None):
        """Do the work of the next requests, but lose the answer."""
        for _ in range(times):
            self._injections.append(_Injection("drop", method))

    def refuse_next(self, *, times: int = 1, method: str | None = None):
        """Refuse the connection of the next requests (nothing reaches the node)."""
        for _ in range(times):
            self._injections.append(_Injection("refuse", method))

    def _take(self, method: str, kinds) -> _Injection | None:
        for i, injection in enumerate(self._injections):
            if injection.method is not None and injection.method != method:
                continue
            if injection.kind in kinds:
                return self._injections.pop(i)
            return None
        return None

    # -- caps --------------------------------------------------------------

    def _immutable_cap(self, kind: str, data: bytes) -> str:
        key = b32(digest(b"key", kind.encode(), data)[:16])
        ueb = b32(digest(b"ueb", kind.encode(), data))
        return f"URI:{kind}:{key}:{ueb}:{self.needed}:{self.total}:{len(data)}"

    def add_file(self, data: bytes) -> str:
        """Store an immutable file as PUT /uri would; return its cap."""
        if len(data) <= LIT_THRESHOLD:
            return "URI:LIT:" + b32(data)
        cap = self._immutable_cap("CHK", data)
        self.files[cap] = bytes(data)
        return cap

    def _new_mutable_dir(self) -> str:
        self._dir_counter += 1
        seed = str(self._dir_counter).encode()
        writekey = b32(digest(b"writekey", seed)[:16])
        readkey = b32(digest(b"readkey", seed)[:16])
        fingerprint = b32(digest(b"fingerprint", seed))
        d = _MutableDir(f"URI:DIR2:{writekey}:{fingerprint}", f"URI:DIR2-RO:{readkey}:{fingerprint}")
        self.mutable_dirs[fingerprint] = d
        return d.writecap

    def _new_immutable_dir(self, children: dict[str, _Link]) -> str:
        if not children:
            return "URI:DIR2-LIT:"
        packed = json.dumps({n: link.ro for n, link in sorted(children.items())}).encode("utf-8")
        cap = self._immutable_cap("DIR2-CHK", packed)
        self.immutable_dirs[cap] = dict(children)
        return cap

    def _resolve(self, cap: str):
        """
        ``("file", bytes)``, ``("dir", children, writable, mutable, dir)``
        or ``("unknown",)``; raises a 410 for a well-formed cap we have no
        shares of.
        """
        if not well_formed(cap):
            return ("unknown",)
        m = LIT_RE.match(cap)
        if m:
            data = unb32(m.group(2))
            if m.group(1) == "LIT":
                return ("file", data)
            if data:
                return ("unknown",)
            return ("dir", {}, False, False, None)
        m = CHK_RE.match(cap)
        if m:
            if m.group(1) == "CHK":
                if cap not in self.files or self.connected < self.needed:
                    raise no_shares(self.needed)
                return ("file", self.files[cap])
            if cap not in self.immutable_dirs or self.connected < self.needed:
                raise unrecoverable()
            return ("dir", self.immutable_dirs[cap], False, False, None)
        m = DIR_RE.match(cap)
        if m:
            d = self.mutable_dirs.get(m.group(3))
            writable = m.group(1) == "DIR2"
            if (d is None or cap not in (d.writecap, d.readcap)
                    or self.connected < self.needed):
                raise unrecoverable()
            return ("dir", d.children, writable, True, d)
        return ("unknown",)

    def _link_for(self, cap: str, mutable_parent: bool) -> _Link:
        """The link to store for a cap given to set_children/mkdir-immutable."""
        m = DIR_RE.match(cap)
        if m:
            d = self.mutable_dirs.get(m.group(3))
            if m.group(1) == "DIR2":
                readcap = d.readcap if d is not None else cap.replace("URI:DIR2:", "URI:DIR2-RO:")
                return _Link(cap, readcap)
            return _Link(None, cap)
        if CHK_RE.match(cap) or LIT_RE.match(cap):
            return _Link(None, cap)
        raise Answer(400, f"the fake Tahoe does not know this cap: {cap}")

    # -- JSON descriptions -------------------------------------------------

    def _describe(self, cap: str, link: _Link | None = None, parent_writable=True):
        """The ``[kind, info]`` of t=json for a cap (and the link to it)."""
        if link is not None:
            cap = link.rw if link.rw is not None and parent_writable else link.ro
        info: dict = {}
        if link is not None:
            info["metadata"] = link.metadata
        lit, chk, mutable_dir = LIT_RE.match(cap), CHK_RE.match(cap), DIR_RE.match(cap)
        if lit and lit.group(1) == "LIT":
            size = len(unb32(lit.group(2)))
            info.update({"mutable": False, "format": "CHK", "size": size, "ro_uri": cap})
            return ["filenode", info]
        if chk and chk.group(1) == "CHK":
            size = int(chk.group(6))
            info.update({"mutable": False, "format": "CHK", "size": size, "ro_uri": cap})
            return ["filenode", info]
        if mutable_dir:
            info.update({"mutable": True, "format": "SDMF"})
            if mutable_dir.group(1) == "DIR2":
                d = self.mutable_dirs.get(mutable_dir.group(3))
                info["rw_uri"] = cap
                info["ro_uri"] = d.readcap if d is not None else cap
            else:
                info["ro_uri"] = cap
            return ["dirnode", info]
        if lit or chk:
            info.update({"mutable": False, "ro_uri": cap})
            return ["dirnode", info]
        return ["unknown", {}]

    def _describe_dir(self, cap, children, writable, mutable):
        _, info = self._describe(cap)
        info["children"] = {
            name: self._describe(link.ro, link, writable) for name, link in children.items()
        }
        return ["dirnode", info]

    def _welcome(self):
        servers = []
        for i in range(self.connected + self.disconnected):
            up = i < self.connected
            servers.append({
                "nodeid": "v0-" + b32(digest(b"server", str(i).encode())),
                "connection_status": "connected" if up else
                "failure: [Failure instance: Traceback: ConnectionRefusedError]",
                "available_space": 10 ** 12,
                "nickname": f"fake{i}",
                "version": "tahoe-lafs/1.20.0",
                "last_received_data": self.clock.seconds() if up else None,
            })
        return {"introducers": {"statuses": ["Connected to tcp:fake:1 via tcp"]},
                "servers": servers}

    # -- the web resource --------------------------------------------------

    def resource(self) -> Resource:
        """The root resource of the fake node's web API."""
        # Imported here: the state does not depend on its web face.
        from .web import FakeTahoeResource

        return FakeTahoeResource(self)

