"""
The JSON control API, on twisted.web.

Every request carries a signature made with the token (``api.auth``: what
the ``gridbackup`` command sends) or ``Authorization: Bearer <token>``; every failure is
``{"error": {"code", "message"}}`` with a 4xx or 5xx, never a traceback or an
HTML page.  Routes are a table of (method, pattern) -> handler; a handler is
an ``async`` function of the daemon object and the request, returning
``(status, document)`` or raising a domain error or an ``APIError``, which
``api.errors`` turns into the JSON answer.  ``document`` is a JSON value,
or ``Raw`` (bytes of another content type, e.g. the Prometheus metrics); a
handler that streams its answer writes and finishes the request itself and
returns ``STREAMED``.  A failure after a streamed answer has started can no
longer become a JSON error: the connection is dropped instead, so that the
client sees a short body rather than a wrong one.
"""

import io
import json
import os
import re

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import http, resource, server
from zope.interface import implementer

from gridbackupd.api.auth import Authenticator
from gridbackupd.api.console import Console, Page
from gridbackupd.api.errors import APIError, answer
from gridbackupd.errors import NotFound

MAX_BODY = 64 * 1024
log = Logger()

STREAMED = object()


class Raw:
    """An answer that is not JSON: its bytes and its content type."""

    def __init__(self, body, content_type):
        self.body = body
        self.content_type = content_type


class _Discard(io.BytesIO):
    """Where the body of a refused request goes: nowhere, so it is never buffered."""

    def write(self, data):
        return len(data)


class APIRequest(server.Request):
    """
    Refuses a body larger than MAX_BODY from its Content-Length, before
    reading it: the JSON 413 goes out at once and the connection is closed,
    so the client is not left sending a body nobody reads.  A chunked body
    that grows past the limit is refused the same way.
    """

    too_large = False

    def gotLength(self, length):
        if length is not None and length > MAX_BODY:
            self._refuse_too_large()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        content = self.content
        assert content is not None  # made by gotLength
        if content.tell() + len(data) > MAX_BODY:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def _refuse_too_large(self):
        self.too_large = True
        self.content = _Discard()
        # No "100 Continue" after the answer.
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        _raw_json_error(channel.transport, b"413 Request Entity Too Large", "too_large",
                        f"the request body is larger than {MAX_BODY} bytes")
        # Whatever the client still sends is dropped unread.
        for name in ("dataReceived", "lineReceived"):
            setattr(channel, name, lambda *args: None)
        channel.loseConnection()


@implementer(IPushProducer)
class Pacer:
    """
    Writes a streamed answer at the pace the client reads it: ``await
    pacer.write(data)`` returns once the transport wants more, so a large
    file never piles up in memory.  Raises ``ConnectionDone`` once the client
    has gone.
    """

    def __init__(self, request):
        self.request = request
        self.stopped = False
        self._paused = None
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self.stopProducing())

    def pauseProducing(self):
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self):
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self):
        self.stopped = True
        self.resumeProducing()

    async def write(self, data):
        if self.stopped or self.request._disconnected:
            raise ConnectionDone("the client went away")
        self.request.write(data)
        if self._paused is not None:
            await self._paused
        if self.stopped and not self.request.finished:
            raise ConnectionDone("the client went away")

    def finish(self):
        self.request.unregisterProducer()
        if not self.request.finished and not self.request._disconnected:
            self.request.finish()


class Router:
    """
    (method, path pattern) -> handler, where ``{name}`` in a pattern is one
    path segment passed as a keyword; ``Router(a, b)`` holds the routes of both.
    """

    def __init__(self, *parts):
        self.routes = [route for part in parts for route in part.routes]

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
        raise NotFound("not_found", f"no such endpoint: {path}")


class APIResource(resource.Resource):
    isLeaf = True

    def __init__(self, router, app, auth, console):
        super().__init__()
        self.router = router
        self.app = app
        self.auth = auth
        self.console = console

    def render(self, request):
        if getattr(request, "too_large", False):
            return server.NOT_DONE_YET  # answered already, from the Content-Length
        self.console.add_security_headers(request)
        d = Deferred.fromCoroutine(self._handle(request))
        d.addCallback(self._answer, request)
        d.addErrback(self._failed, request)
        # Last resort: a failure while answering must not stay unlogged.
        d.addErrback(lambda f: log.failure("answering the API request failed", f))
        return server.NOT_DONE_YET

    def _answer(self, result, request):
        if result is STREAMED:
            return None
        if isinstance(result, Page):
            return self._respond_page(request, result)
        return self._respond(request, *result)

    async def _handle(self, request):
        if getattr(request, "too_large", False):
            raise APIError(413, "too_large", f"the request body is larger than {MAX_BODY} bytes")
        self.console.check_host(request)
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        if self.console.is_page(path):
            return self.console.page(request, method, path)
        if (method, path) == ("POST", "/v1/session"):
            return self.console.sign_in(request)
        header = request.getHeader("authorization")
        request.console_session = None
        if not header:
            request.console_session = self.console.check_cookie(request, method)
        if request.console_session is None:
            nonce = self.auth.check(request.method, request.uri, _body(request), header or "")
            if nonce is not None:
                request.setHeader(*self.auth.answer_header(nonce))
        if path in self.console.SESSION_PATHS:
            return self.console.session_call(request, method, path, self.app)
        fn, args = self.router.match(method, path)
        return await fn(self.app, request, **args)

    def _failed(self, failure, request):
        if failure.check(ConnectionDone, ConnectionLost):
            # The client went away while a streamed answer was being written
            # (raised by Pacer.write; the connection may not know it yet).
            return None
        error = answer(failure.value)
        if request.startedWriting:
            # Part of a streamed answer is out: a JSON error cannot follow it.
            if error is None:
                log.failure("API request {method} {path} failed while streaming", failure,
                            method=request.method, path=request.path)
            if not request.finished and not request._disconnected and request.channel is not None:
                request.channel.transport.abortConnection()
            return None
        if error is not None:
            return self._respond(request, error.status, error.body())
        log.failure("API request {method} {path} failed", failure,
                    method=request.method, path=request.path)
        return self._respond(request, 500, {"error": {
            "code": "internal_error", "message": "internal error; the daemon's log has the details"}})

    def _respond_page(self, request, page):
        if request.finished or request._disconnected:
            return
        request.setResponseCode(page.status)
        for name, value in page.headers:
            request.responseHeaders.addRawHeader(name, value)
        request.setHeader(b"content-type", page.content_type.encode("ascii"))
        request.setHeader(b"content-length", str(len(page.body)).encode("ascii"))
        if not request.responseHeaders.hasHeader(b"cache-control"):
            request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(page.body)
        request.finish()

    def _respond(self, request, status, document):
        if request.finished or request._disconnected:
            return
        if isinstance(document, Raw):
            body, content_type = document.body, document.content_type
        else:
            body = json.dumps(document, indent=1, sort_keys=True).encode("utf-8") + b"\n"
            content_type = "application/json"
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()


def _body(request):
    """The whole request body (at most MAX_BODY), left for the handler to read again."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read()
    content.seek(0)
    return data


def _raw_json_error(transport, status_line, code, message):
    """Write a whole JSON error answer straight to a transport (no Request to go through)."""
    body = json.dumps({"error": {"code": code, "message": message}},
                      indent=1, sort_keys=True).encode("utf-8") + b"\n"
    transport.write(
        b"HTTP/1.1 " + status_line + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Cache-Control: no-store\r\n"
        b"Connection: close\r\n"
        b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body)


class APIChannel(http.HTTPChannel):
    """
    HTTP/1.1 only (no HTTP/2 negotiation: loopback needs none), and a
    request that twisted.web cannot even parse (a bad request line or header,
    headers too large, bad chunked encoding) is answered with a JSON 400,
    not an empty one.
    """

    def _respondToBadRequestAndDisconnect(self):
        if self.transport is not None:
            _raw_json_error(self.transport, b"400 Bad Request", "bad_http",
                            "the request is not well-formed HTTP/1.1")
        self.loseConnection()


class APISite(server.Site):
    """A Site that knows its open connections, so that stopping can close them."""

    # Typed as Site's HTTP/2-negotiating wrapper; a bare HTTP/1.1 channel is what we serve.
    protocol = APIChannel  # type: ignore[assignment]
    requestFactory = APIRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource):
        super().__init__(resource)
        self.connections = {}

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        lost: Deferred[None] = Deferred()
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
            # twisted.web wraps its HTTPChannel in a proxy that does not show .transport.
            channel = getattr(protocol, "_channel", protocol)
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
        return DeferredList(waiting)


#: The longest path a unix socket address holds (sun_path is 108 bytes with its NUL).
UNIX_PATH_MAX = 107


def listen(reactor, description, site):
    """
    Listen on the Twisted endpoint ``description``; fires with the port.
    A ``unix:`` socket is made by ``listen_unix``, mode 0600 from the start.
    """
    endpoint = endpoints.serverFromString(reactor, description)
    if not isinstance(endpoint, endpoints.UNIXServerEndpoint):
        return endpoint.listen(site)
    return listen_unix(reactor, endpoint._address, site, backlog=endpoint._backlog, wantPID=endpoint._wantPID)


def listen_unix(reactor, path, site, backlog=50, wantPID=False):
    """
    A unix socket that only its owner can connect to at any moment: it is
    bound under umask 0177 and Twisted is told mode 0600 (its default
    chmods it to 0666 right after the bind, a window in which anyone could
    connect).  A path longer than the kernel takes is bound through the
    directory's descriptor (``/proc/self/fd/N/name``), kept open while the
    port listens (Twisted unlinks the socket through that name at stop).
    """
    directory, name = os.path.split(path)
    dir_fd = None
    bind_path = path
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        dir_fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        bind_path = f"/proc/self/fd/{dir_fd}/{name}"
    endpoint = endpoints.UNIXServerEndpoint(reactor, bind_path, backlog=backlog, mode=0o600, wantPID=wantPID)
    old = os.umask(0o177)
    try:
        d = endpoint.listen(site)
    finally:
        os.umask(old)
    if dir_fd is None:
        return d

    def keep_fd(port):
        stop = port.connectionLost

        def connectionLost(reason):
            try:
                return stop(reason)
            finally:
                os.close(dir_fd)

        port.connectionLost = connectionLost
        return port

    def close_fd(failure):
        os.close(dir_fd)
        return failure

    return d.addCallbacks(keep_fd, close_fd)


def endpoint_description(port):
    """What a client connects to: ``unix:/path`` or ``tcp:PORT:interface=HOST``."""
    address = port.getHost()
    name = getattr(address, "name", None)
    if name is not None:
        return "unix:" + (os.fsdecode(name) if isinstance(name, bytes) else str(name))
    return f"tcp:{address.port}:interface={address.host}"


def make_site(router, app, token, allowed_hosts=()):
    return APISite(APIResource(router, app, Authenticator(token), Console(token, allowed_hosts)))
