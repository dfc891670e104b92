"""
The JSON control API, on twisted.web.

Every request carries ``Authorization: Bearer <token>``; every failure is
``{"error": {"code", "message"}}`` with a 4xx or 5xx, never a traceback or an
HTML page.  Routes are a table of (method, pattern) -> handler; a handler is
an ``async`` function of the daemon object and the request, returning
``(status, document)`` or raising ``APIError``.
"""

import hmac
import io
import json
import re

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.web import resource, server

from .errors import APIError

MAX_BODY = 64 * 1024
log = Logger()


class _Discard(io.BytesIO):
    """Where the body of a refused request goes: nowhere, so it is never buffered."""

    def write(self, data):
        return len(data)


class APIRequest(server.Request):
    """Refuses a body larger than MAX_BODY from its Content-Length, before reading it."""

    too_large = False

    def gotLength(self, length):
        if length is not None and length > MAX_BODY:
            self.too_large = True
            self.content = _Discard()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            # A chunked body that grows past the limit.
            self.too_large = True
            self.content = _Discard()
            return
        super().handleContentChunk(data)


def json_body(request):
    """The request's body as a JSON object, or APIError 400."""
    raw = request.content.read()
    if not raw:
        raise APIError(400, "bad_request", "a JSON object is required as the request body")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise APIError(400, "bad_json", f"the body is not valid JSON: {e}")
    if not isinstance(doc, dict):
        raise APIError(400, "bad_json", "the body must be a JSON object")
    return doc


class Router:
    def __init__(self):
        self.routes = []

    def route(self, method, pattern):
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def register(fn):
            self.routes.append((method, regex, fn))
            return fn

        return register

    def match(self, method, path):
        allowed = []
        for m, regex, fn in self.routes:
            found = regex.match(path)
            if found:
                if m == method:
                    return fn, found.groupdict()
                allowed.append(m)
        if allowed:
            raise APIError(405, "method_not_allowed",
                           f"{method} is not allowed here; use {', '.join(sorted(set(allowed)))}")
        raise APIError(404, "not_found", f"no such endpoint: {path}")


class APIResource(resource.Resource):
    isLeaf = True

    def __init__(self, router, app, token):
        super().__init__()
        self.router = router
        self.app = app
        self.token = token.encode("ascii")

    def render(self, request):
        d = Deferred.fromCoroutine(self._handle(request))
        d.addCallback(lambda result: self._respond(request, *result))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def _handle(self, request):
        if getattr(request, "too_large", False):
            raise APIError(413, "too_large", f"the request body is larger than {MAX_BODY} bytes")
        auth = request.getHeader("authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.token):
            raise APIError(401, "unauthorized",
                           "missing or wrong 'Authorization: Bearer <token>' (the token is in state_dir/private/api_token)")
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        fn, args = self.router.match(method, path)
        return await fn(self.app, request, **args)

    def _failed(self, failure, request):
        if failure.check(APIError):
            e = failure.value
            return self._respond(request, e.status, {"error": {"code": e.code, "message": e.message}})
        log.failure("API request {method} {path} failed", failure,
                    method=request.method, path=request.path)
        return self._respond(request, 500, {"error": {
            "code": "internal_error", "message": "internal error; the daemon's log has the details"}})

    def _respond(self, request, status, document):
        if request.finished or request._disconnected:
            return
        body = json.dumps(document, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()


class APISite(server.Site):
    """A Site that knows its open connections, so that stopping can close them."""

    requestFactory = APIRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource):
        super().__init__(resource)
        self.connections = {}

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        lost = Deferred()
        self.connections[protocol] = lost
        original = protocol.connectionLost

        def connectionLost(reason):
            self.connections.pop(protocol, None)
            try:
                return original(reason)
            finally:
                lost.callback(None)

        protocol.connectionLost = connectionLost
        return protocol

    def close_connections(self):
        """Drop every open connection; fires when all of them are gone."""
        waiting = list(self.connections.values())
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        return DeferredList(waiting)


def make_site(router, app, token):
    return APISite(APIResource(router, app, token))
