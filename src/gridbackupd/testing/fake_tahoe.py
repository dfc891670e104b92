"""
An in-memory fake of the part of the Tahoe-LAFS web API that
``gridbackupd.grid.client.TahoeClient`` uses, as twisted.web resources.

It answers as Tahoe 1.20 does (tests/integration/test_tahoe.py runs the same contract
checks against it and against a real grid), with deterministic caps:

- immutable files: identical bytes give identical caps (like convergent
  encryption); up to 55 bytes a ``URI:LIT:`` cap holding the data, else
  ``URI:CHK:...:needed:total:size``;
- mutable directories (``URI:DIR2:`` / ``URI:DIR2-RO:``) and deep-immutable
  ones (``URI:DIR2-CHK:``, the empty one ``URI:DIR2-LIT:``);
- ranged GETs (206 with Content-Range, cut at the end; 416 past it);
- ``t=json`` for nodes and for the welcome page, with as many connected
  servers as ``connected`` says;
- Tahoe's error answers: 400 for a malformed cap, 404 "No such child",
  409 for ``replace=false`` clashes, 410 for an object without shares,
  500 with an UploadUnhappinessError traceback for an immutable upload
  while fewer than ``happy`` servers are connected.

Failure injection: ``fail_next(status)``, ``fail_next_unhappy()``,
``drop_next()`` (the node does the work, the answer is lost) and
``refuse_next()`` (connection refused, nothing sent); each can be limited
to one HTTP method.  ``requests`` records every request the client made.

Where the fake is stricter than Tahoe, it says so: a cap it does not
recognise is refused in ``set_children``/``mkdir-immutable`` (Tahoe would
store it as an unknown node).

``fake_client()`` gives a TahoeClient wired to a fake through
``treq.testing.RequestTraversalAgent``: everything runs synchronously,
file bodies (``FileBodyProducer``) included.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import attr
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet import task
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from zope.interface import implementer

from gridbackupd.grid.client import TahoeClient
from gridbackupd.grid.retry import RetryPolicy

__all__ = ["FakeTahoe", "FakeTahoeAgent", "RecordedRequest", "fake_client"]

LIT_THRESHOLD = 55

_B32 = r"[a-z2-7]"
_CHK_RE = re.compile(rf"^URI:(CHK|DIR2-CHK):({_B32}{{26}}):({_B32}{{52}}):(\d+):(\d+):(\d+)$")
_LIT_RE = re.compile(rf"^URI:(LIT|DIR2-LIT):({_B32}*)$")
_DIR_RE = re.compile(rf"^URI:(DIR2|DIR2-RO):({_B32}{{26}}):({_B32}{{52}})$")

_TEXT = b"text/plain;charset=utf-8"


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


def _well_formed(cap: str) -> bool:
    """Whether a cap's base32 parts decode canonically (as Tahoe insists)."""
    for m in (_CHK_RE.match(cap), _DIR_RE.match(cap), _LIT_RE.match(cap)):
        if m:
            parts = [p for p in m.groups()[1:] if p and not p.isdigit()]
            try:
                return all(_b32(_unb32(p)) == p for p in parts)
            except ValueError:
                return False
    return False


def _hash(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


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
    kind: str  # "status", "drop", "refuse"
    method: str | None
    status: int | None = None
    body: bytes | None = None


class _Answer(Exception):
    """Raised inside the resource to answer with an error."""

    def __init__(self, status, body, content_type=_TEXT, headers=()):
        super().__init__(status)
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode("utf-8")
        self.content_type = content_type
        self.headers = headers


def _html_error(status, title, message=None):
    para = f"\n    <p>{message}</p>" if message else ""
    return _Answer(
        status,
        f"\n<html>\n  <head><title>{status} - {title}</title></head>\n  <body>\n"
        f"    <h1>{title}</h1>{para}\n  </body>\n</html>\n",
        b"text/html; charset=utf-8",
    )


def _traceback(request, status, exception, message, where="allmydata/fake.py"):
    """A 500-style traceback answer, plain or HTML as the request asks."""
    short = exception.rsplit(".", 1)[-1]
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    if "text/plain" in accept:
        body = (
            "Traceback (most recent call last):\n"
            f'  File "/site-packages/{where}", line 1, in fake\n'
            f"    raise {short}(msg)\n"
            f"{exception}: {message}\n"
        )
        return _Answer(status, body)
    escaped = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = (
        "<!DOCTYPE html>\n<html><head><title>Exception</title></head><body><div>\n"
        f'  <div class="error">\n    <span>{exception}</span>: <span>{escaped}</span>\n  </div>\n'
        '  <div class="stackTrace">\n  </div>\n'
        f'  <div class="error">\n    <span>{exception}</span>: <span>{escaped}</span>\n  </div>\n'
        "</div></body></html>"
    )
    return _Answer(status, body, b"text/html")


_DEFAULT_BODIES = {
    400: "injected bad request",
    404: None,  # an HTML "No Such Resource" page
    409: "There was already a child by that name, and you asked me to not replace it.",
    410: "NoSharesError: no shares could be found. (injected)",
}


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
            body = _DEFAULT_BODIES.get(status, f"allmydata.fake.InjectedError: status {status}")
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
        key = _b32(_hash(b"key", kind.encode(), data)[:16])
        ueb = _b32(_hash(b"ueb", kind.encode(), data))
        return f"URI:{kind}:{key}:{ueb}:{self.needed}:{self.total}:{len(data)}"

    def add_file(self, data: bytes) -> str:
        """Store an immutable file as PUT /uri would; return its cap."""
        if len(data) <= LIT_THRESHOLD:
            return "URI:LIT:" + _b32(data)
        cap = self._immutable_cap("CHK", data)
        self.files[cap] = bytes(data)
        return cap

    def _new_mutable_dir(self) -> str:
        self._dir_counter += 1
        seed = str(self._dir_counter).encode()
        writekey = _b32(_hash(b"writekey", seed)[:16])
        readkey = _b32(_hash(b"readkey", seed)[:16])
        fingerprint = _b32(_hash(b"fingerprint", seed))
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
        if not _well_formed(cap):
            return ("unknown",)
        m = _LIT_RE.match(cap)
        if m:
            data = _unb32(m.group(2))
            if m.group(1) == "LIT":
                return ("file", data)
            if data:
                return ("unknown",)
            return ("dir", {}, False, False, None)
        m = _CHK_RE.match(cap)
        if m:
            if m.group(1) == "CHK":
                if cap not in self.files or self.connected < self.needed:
                    raise _Answer(410, (
                        "NoSharesError: no shares could be found. Zero shares usually "
                        "indicates a corrupt URI, or that no servers were connected, but it "
                        "might also indicate severe corruption. You should perform a "
                        "filecheck on this object to learn more.\n\n"
                        f"The full error message is:\nno shares (need {self.needed}). "
                        "Last failure: None"))
                return ("file", self.files[cap])
            if cap not in self.immutable_dirs or self.connected < self.needed:
                raise self._unrecoverable()
            return ("dir", self.immutable_dirs[cap], False, False, None)
        m = _DIR_RE.match(cap)
        if m:
            d = self.mutable_dirs.get(m.group(3))
            writable = m.group(1) == "DIR2"
            if (d is None or cap not in (d.writecap, d.readcap)
                    or self.connected < self.needed):
                raise self._unrecoverable()
            return ("dir", d.children, writable, True, d)
        return ("unknown",)

    @staticmethod
    def _unrecoverable():
        return _Answer(410, json.dumps({"error": (
            "UnrecoverableFileError: the directory (or mutable file) could not be "
            "retrieved, because there were insufficient good shares. This might "
            "indicate that no servers were connected, insufficient servers were "
            "connected, the URI was corrupt, or that shares have been lost due to "
            "server departure, hard drive failure, or disk corruption. You should "
            "perform a filecheck on this object to learn more.")}), b"text/html")

    def _link_for(self, cap: str, mutable_parent: bool) -> _Link:
        """The link to store for a cap given to set_children/mkdir-immutable."""
        m = _DIR_RE.match(cap)
        if m:
            d = self.mutable_dirs.get(m.group(3))
            if m.group(1) == "DIR2":
                readcap = d.readcap if d is not None else cap.replace("URI:DIR2:", "URI:DIR2-RO:")
                return _Link(cap, readcap)
            return _Link(None, cap)
        if _CHK_RE.match(cap) or _LIT_RE.match(cap):
            return _Link(None, cap)
        raise _Answer(400, f"the fake Tahoe does not know this cap: {cap}")

    # -- JSON descriptions -------------------------------------------------

    def _describe(self, cap: str, link: _Link | None = None, parent_writable=True):
        """The ``[kind, info]`` of t=json for a cap (and the link to it)."""
        if link is not None:
            cap = link.rw if link.rw is not None and parent_writable else link.ro
        info: dict = {}
        if link is not None:
            info["metadata"] = link.metadata
        lit, chk, mutable_dir = _LIT_RE.match(cap), _CHK_RE.match(cap), _DIR_RE.match(cap)
        if lit and lit.group(1) == "LIT":
            size = len(_unb32(lit.group(2)))
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
                "nodeid": "v0-" + _b32(_hash(b"server", str(i).encode())),
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
        return _FakeTahoeResource(self)


class _FakeTahoeResource(Resource):
    isLeaf = True

    def __init__(self, fake: FakeTahoe):
        super().__init__()
        self.fake = fake

    def render(self, request):
        try:
            status, body, content_type, headers = self._dispatch(request)
        except _Answer as a:
            status, body, content_type, headers = a.status, a.body, a.content_type, a.headers
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        for name, value in headers:
            request.setHeader(name, value)
        return body

    # helpers

    @staticmethod
    def _arg(request, name, default=""):
        values = request.args.get(name.encode())
        return values[0].decode("utf-8") if values else default

    def _injected(self, request):
        method = request.method.decode("ascii")
        injection = self.fake._take(method, ("status", "unhappy"))
        if injection is None:
            return
        if injection.kind == "unhappy":
            raise self._unhappy(request)
        if injection.status == 404 and injection.body is None:
            raise _html_error(404, "No Such Resource", "File not found.")
        raise _Answer(injection.status, injection.body or b"")

    def _unhappy(self, request):
        f = self.fake
        return _traceback(
            request, 500, "allmydata.interfaces.UploadUnhappinessError",
            f"server selection failed for <Tahoe2ServerSelector for upload fake>: "
            f"shares could be placed on only {f.connected} server(s) such that any "
            f"{f.needed} of them have enough shares to recover the file, but we were "
            f"asked to place shares on at least {f.happy} such servers. (placed all "
            f"{f.total} shares)",
            where="allmydata/immutable/upload.py",
        )

    def _ok(self, body, content_type=b"text/plain", status=200, headers=()):
        if isinstance(body, str):
            body = body.encode("utf-8")
        return status, body, content_type, headers

    def _json(self, value):
        return self._ok(json.dumps(value, indent=1) + "\n")

    def _require_mutable_servers(self, request):
        if self.fake.connected == 0:
            raise _traceback(request, 500, "allmydata.interfaces.NotEnoughServersError",
                             "Ran out of non-bad servers (no servers connected)")

    # dispatch

    def _dispatch(self, request):
        self._injected(request)
        path = [segment.decode("utf-8") for segment in request.postpath]
        method = request.method.decode("ascii")
        t = self._arg(request, "t")
        if path in ([], [""]):
            if method == "GET" and t == "json":
                return self._json(self.fake._welcome())
            raise _html_error(404, "No Such Resource", "File not found.")
        if path[0] != "uri":
            raise _html_error(404, "No Such Resource", "File not found.")
        rest = path[1:]
        if rest in ([], [""]):
            return self._uri_root(request, method, t)
        cap = rest[0]
        if len(rest) == 1 or (len(rest) == 2 and rest[1] == ""):
            return self._node(request, method, t, cap)
        if len(rest) == 2:
            return self._child(request, method, t, cap, rest[1])
        raise _html_error(404, "No Such Resource", "File not found.")

    def _uri_root(self, request, method, t):
        fake = self.fake
        if method in ("PUT", "POST") and t == "mkdir":
            self._require_mutable_servers(request)
            return self._ok(fake._new_mutable_dir(), b"text/html")
        if method == "PUT" and t == "":
            data = request.content.read()
            if len(data) > LIT_THRESHOLD and fake.connected < fake.happy:
                raise self._unhappy(request)
            return self._ok(fake.add_file(data), b"text/html")
        if method == "POST" and t == "mkdir-immutable":
            children = self._children_from_body(request)
            links = {}
            for name, (_, props) in children.items():
                cap = props.get("rw_uri") or props.get("ro_uri")
                if not cap or _DIR_RE.match(cap):
                    raise _Answer(400, (
                        "MustBeDeepImmutableError: a cap passed to this operation for the "
                        f"child named {name!r}, needed to be immutable but was not. Either "
                        "the cap is being added to an immutable directory, or it was "
                        "originally retrieved from an immutable directory as an unknown cap."))
                links[name] = fake._link_for(cap, mutable_parent=False)
            body = json.dumps({n: link.ro for n, link in links.items()}).encode()
            if len(body) > LIT_THRESHOLD and fake.connected < fake.happy:
                raise self._unhappy(request)
            return self._ok(fake._new_immutable_dir(links), b"text/html")
        raise _Answer(400, f"POST /uri: unknown or missing t= argument: {t!r}")

    def _children_from_body(self, request):
        body = request.content.read()
        if not body.strip():
            return {}
        try:
            children = json.loads(body)
            for name, (kind, props) in children.items():
                if not isinstance(props, dict):
                    raise ValueError(name)
        except (ValueError, TypeError, AttributeError):
            raise _traceback(request, 500, "json.decoder.JSONDecodeError",
                             f"bad children JSON: {body[:200]!r}") from None
        return children

    def _node(self, request, method, t, cap):
        fake = self.fake
        if method == "GET" and t == "json":
            node = fake._resolve(cap)
            if node[0] == "dir":
                return self._json(fake._describe_dir(cap, node[1], node[2], node[3]))
            return self._json(fake._describe(cap))
        if method == "GET" and t == "uri":
            fake._resolve(cap)
            return self._ok(cap)
        if method == "GET" and t == "":
            node = fake._resolve(cap)
            if node[0] == "unknown":
                raise _Answer(400, (
                    "GET unknown URI type: can only do t=info and t=json, not t=.\n"
                    "Using a webapi server that supports a later version of Tahoe may help."))
            if node[0] == "dir":
                raise _Answer(400, "the fake Tahoe has no HTML directory pages")
            return self._file_body(request, node[1])
        if method == "POST" and t in ("set_children", "set-children"):
            node = fake._resolve(cap)
            if node[0] != "dir":
                raise _html_error(405, "Method Not Allowed",
                                  'I only allow the methods HEAD, GET here.')
            _, children, writable, mutable, _ = node
            if not writable:
                raise _traceback(request, 500, "allmydata.mutable.common.NotWriteableError", "")
            self._require_mutable_servers(request)
            new = self._children_from_body(request)
            replace = self._arg(request, "replace", "true").lower()
            if replace in ("false", "f", "0") and any(name in children for name in new):
                raise _Answer(409, _DEFAULT_BODIES[409])
            now = fake.clock.seconds()
            # All links first: a refused cap leaves the directory unchanged.
            links = {
                name: fake._link_for(props.get("rw_uri") or props.get("ro_uri") or "",
                                     mutable_parent=True)
                for name, (_, props) in new.items()
            }
            for name, link in links.items():
                old = children.get(name)
                created = old.metadata["tahoe"]["linkcrtime"] if old else now
                children[name] = attr.evolve(
                    link, metadata={"tahoe": {"linkcrtime": created, "linkmotime": now}})
            return self._ok("Okay so I did it.", b"text/html")
        if method == "POST" and t == "check":
            node = fake._resolve(cap)
            if node[0] == "unknown":
                raise _Answer(400, "cannot check an unknown cap")
            return self._json(self._check_results(cap))
        raise _Answer(400, f"{method} /uri/CAP with t={t!r} is not in the fake Tahoe")

    def _check_results(self, cap):
        f = self.fake
        if cap.startswith(("URI:LIT:", "URI:DIR2-LIT:")):
            return {"storage-index": "", "summary": "Healthy", "results": {"healthy": True}}
        good = min(f.connected, f.total)
        return {
            "storage-index": _b32(_hash(b"si", cap.encode())[:16]),
            "summary": "Healthy" if good >= f.total else "Not Healthy",
            "results": {
                "count-happiness": good,
                "count-shares-good": good,
                "count-shares-needed": f.needed,
                "count-shares-expected": f.total,
                "count-good-share-hosts": good,
                "count-corrupt-shares": 0,
                "healthy": good >= f.total,
                "recoverable": good >= f.needed,
            },
        }

    def _child(self, request, method, t, cap, name):
        fake = self.fake
        node = fake._resolve(cap)
        if node[0] == "unknown":
            raise _html_error(404, "No Such Resource", "File not found.")
        if node[0] == "file":
            raise _html_error(400, f"Files have no children named {name!r}")
        _, children, writable, mutable, _ = node
        if method == "DELETE":
            if not writable:
                raise _traceback(request, 500, "allmydata.mutable.common.NotWriteableError", "")
            if name not in children:
                raise _html_error(404, "Error", f"No such child: {name}")
            self._require_mutable_servers(request)
            link = children.pop(name)
            return self._ok(link.rw or link.ro, b"text/html")
        if name not in children:
            raise _html_error(404, "Error", f"No such child: {name}")
        link = children[name]
        child_cap = link.rw if link.rw is not None and writable else link.ro
        if method == "GET" and t == "uri":
            return self._ok(child_cap)
        if method == "GET" and t == "json":
            return self._json(fake._describe(child_cap, link, writable))
        if method == "GET" and t == "":
            child = fake._resolve(child_cap)
            if child[0] != "file":
                raise _Answer(400, "the fake Tahoe has no HTML directory pages")
            return self._file_body(request, child[1])
        raise _Answer(400, f"{method} /uri/CAP/NAME with t={t!r} is not in the fake Tahoe")

    def _file_body(self, request, data):
        size = len(data)
        header = (request.getHeader(b"range") or b"").decode("latin-1").strip()
        m = re.match(r"^bytes=(\d+)-(\d*)$", header)
        if not m:
            return self._ok(data, b"text/plain", headers=[(b"accept-ranges", b"bytes")])
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size or end < start:
            raise _Answer(416, "Requested Range not satisfiable", _TEXT,
                          [(b"content-range", f"bytes */{size}".encode())])
        end = min(end, size - 1)
        return self._ok(data[start:end + 1], b"text/plain", 206, [
            (b"accept-ranges", b"bytes"),
            (b"content-range", f"bytes {start}-{end}/{size}".encode()),
        ])


# ---------------------------------------------------------------------------
# The in-memory HTTP client


class _PendingCall:
    def __init__(self, f):
        self.f = f
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


@implementer(IAgent)
class FakeTahoeAgent:
    """
    An IAgent that sends requests to a FakeTahoe in memory.

    ``treq.testing.RequestTraversalAgent`` does the HTTP; this agent also
    runs the ``cooperator`` that file body producers write with, and pumps
    the in-memory connection until the answer is there, so that a request
    with a ``FileBodyProducer`` completes synchronously too.
    """

    def __init__(self, fake: FakeTahoe):
        self._fake = fake
        self._inner = RequestTraversalAgent(fake.resource())
        self._pending: list[_PendingCall] = []
        self.cooperator = task.Cooperator(scheduler=self._schedule, started=True)

    def _schedule(self, f):
        call = _PendingCall(f)
        self._pending.append(call)
        return call

    def request(self, method, uri, headers=None, bodyProducer=None):
        fake = self._fake
        method_text = method.decode("ascii")
        path = uri.decode("ascii").split("/", 3)[-1]
        fake.requests.append(RecordedRequest(
            method=method_text,
            path="/" + path,
            headers={k.decode().lower(): [v.decode() for v in vs]
                     for k, vs in (headers.getAllRawHeaders() if headers else [])},
            body_producer=bodyProducer,
            time=fake.clock.seconds(),
        ))
        if fake._take(method_text, ("refuse",)) is not None:
            return fail(ConnectionRefusedError("the fake Tahoe refused the connection"))
        drop = fake._take(method_text, ("drop",)) is not None
        d = self._inner.request(method, uri, headers, bodyProducer)
        done = []

        def finished(result):
            done.append(True)
            return result

        d.addBoth(finished)
        # Alternate: run the producer's pending work, move the bytes.
        for _ in range(1_000_000):
            self._inner.flush()
            if done:
                break
            pending, self._pending = self._pending, []
            if not pending:
                break
            for call in pending:
                if not call.cancelled:
                    call.f()
        if drop:
            def lose(response):
                return Failure(ResponseNeverReceived([Failure(ConnectionLost("dropped"))]))
            d.addCallback(lose)
        return d


def fake_client(fake: FakeTahoe | None = None, clock=None, **kwargs):
    """
    A ``(TahoeClient, FakeTahoe)`` pair talking in memory.

    ``clock`` (default: the fake's clock, a ``task.Clock``) drives retry
    waits; ``kwargs`` go to TahoeClient (``retry`` defaults to a policy
    without jitter, so that tests can predict the waits).
    """
    if fake is None:
        fake = FakeTahoe(clock=clock)
    if clock is None:
        clock = fake.clock
    kwargs.setdefault("retry", RetryPolicy(jitter=False))
    agent = FakeTahoeAgent(fake)
    client = TahoeClient(
        "http://fake-tahoe.invalid:3456/",
        # FakeTahoeAgent provides IAgent: zope declarations are not types to mypy.
        http_client=HTTPClient(agent),  # type: ignore[arg-type]
        clock=clock,
        cooperator=agent.cooperator,
        **kwargs,
    )
    return client, fake
