"""
The fake node's web API as a twisted.web resource: it parses each request,
applies any injected failure, and answers from the ``FakeTahoe`` state as
Tahoe 1.20 would (status, content type, body).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import attr
from twisted.web.resource import Resource

from .answers import DEFAULT_BODIES, TEXT, Answer, html_error, traceback_answer
from .caps import DIR_RE, LIT_THRESHOLD, b32, digest

if TYPE_CHECKING:
    from .node import FakeTahoe



class FakeTahoeResource(Resource):
    """The root of the fake node's web API: every path is answered here."""

    isLeaf = True

    def __init__(self, fake: FakeTahoe):
        super().__init__()
        self.fake = fake

    def render(self, request):
        try:
            status, body, content_type, headers = self._dispatch(request)
        except Answer as a:
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
            raise html_error(404, "No Such Resource", "File not found.")
        raise Answer(injection.status, injection.body or b"")

    def _unhappy(self, request):
        f = self.fake
        return traceback_answer(
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
            raise traceback_answer(request, 500, "allmydata.interfaces.NotEnoughServersError",
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
            raise html_error(404, "No Such Resource", "File not found.")
        if path[0] != "uri":
            raise html_error(404, "No Such Resource", "File not found.")
        rest = path[1:]
        if rest in ([], [""]):
            return self._uri_root(request, method, t)
        cap = rest[0]
        if len(rest) == 1 or (len(rest) == 2 and rest[1] == ""):
            return self._node(request, method, t, cap)
        if len(rest) == 2:
            return self._child(request, method, t, cap, rest[1])
        raise html_error(404, "No Such Resource", "File not found.")

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
                if not cap or DIR_RE.match(cap):
                    raise Answer(400, (
                        "MustBeDeepImmutableError: a cap passed to this operation for the "
                        f"child named {name!r}, needed to be immutable but was not. Either "
                        "the cap is being added to an immutable directory, or it was "
                        "originally retrieved from an immutable directory as an unknown cap."))
                links[name] = fake._link_for(cap, mutable_parent=False)
            body = json.dumps({n: link.ro for n, link in links.items()}).encode()
            if len(body) > LIT_THRESHOLD and fake.connected < fake.happy:
                raise self._unhappy(request)
            return self._ok(fake._new_immutable_dir(links), b"text/html")
        raise Answer(400, f"POST /uri: unknown or missing t= argument: {t!r}")

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
            raise traceback_answer(request, 500, "json.decoder.JSONDecodeError",
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
                raise Answer(400, (
                    "GET unknown URI type: can only do t=info and t=json, not t=.\n"
                    "Using a webapi server that supports a later version of Tahoe may help."))
            if node[0] == "dir":
                raise Answer(400, "the fake Tahoe has no HTML directory pages")
            return self._file_body(request, node[1])
        if method == "POST" and t in ("set_children", "set-children"):
            node = fake._resolve(cap)
            if node[0] != "dir":
                raise html_error(405, "Method Not Allowed",
                                 'I only allow the methods HEAD, GET here.')
            _, children, writable, mutable, _ = node
            if not writable:
                raise traceback_answer(request, 500, "allmydata.mutable.common.NotWriteableError", "")
            self._require_mutable_servers(request)
            new = self._children_from_body(request)
            replace = self._arg(request, "replace", "true").lower()
            if replace in ("false", "f", "0") and any(name in children for name in new):
                raise Answer(409, DEFAULT_BODIES[409])
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
                raise Answer(400, "cannot check an unknown cap")
            return self._json(self._check_results(cap))
        raise Answer(400, f"{method} /uri/CAP with t={t!r} is not in the fake Tahoe")

    def _check_results(self, cap):
        f = self.fake
        if cap.startswith(("URI:LIT:", "URI:DIR2-LIT:")):
            return {"storage-index": "", "summary": "Healthy", "results": {"healthy": True}}
        good = min(f.connected, f.total)
        return {
            "storage-index": b32(digest(b"si", cap.encode())[:16]),
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
            raise html_error(404, "No Such Resource", "File not found.")
        if node[0] == "file":
            raise html_error(400, f"Files have no children named {name!r}")
        _, children, writable, mutable, _ = node
        if method == "DELETE":
            if not writable:
                raise traceback_answer(request, 500, "allmydata.mutable.common.NotWriteableError", "")
            if name not in children:
                raise html_error(404, "Error", f"No such child: {name}")
            self._require_mutable_servers(request)
            link = children.pop(name)
            return self._ok(link.rw or link.ro, b"text/html")
        if name not in children:
            raise html_error(404, "Error", f"No such child: {name}")
        link = children[name]
        child_cap = link.rw if link.rw is not None and writable else link.ro
        if method == "GET" and t == "uri":
            return self._ok(child_cap)
        if method == "GET" and t == "json":
            return self._json(fake._describe(child_cap, link, writable))
        if method == "GET" and t == "":
            child = fake._resolve(child_cap)
            if child[0] != "file":
                raise Answer(400, "the fake Tahoe has no HTML directory pages")
            return self._file_body(request, child[1])
        raise Answer(400, f"{method} /uri/CAP/NAME with t={t!r} is not in the fake Tahoe")

    def _file_body(self, request, data):
        size = len(data)
        header = (request.getHeader(b"range") or b"").decode("latin-1").strip()
        m = re.match(r"^bytes=(\d+)-(\d*)$", header)
        if not m:
            return self._ok(data, b"text/plain", headers=[(b"accept-ranges", b"bytes")])
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size or end < start:
            raise Answer(416, "Requested Range not satisfiable", TEXT,
                          [(b"content-range", f"bytes */{size}".encode())])
        end = min(end, size - 1)
        return self._ok(data[start:end + 1], b"text/plain", 206, [
            (b"accept-ranges", b"bytes"),
            (b"content-range", f"bytes {start}-{end}/{size}".encode()),
        ])
