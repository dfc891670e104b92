"""
TahoeClient: the subset of the Tahoe-LAFS web API that gridbackupd uses,
over treq.

Every method is ``async``.  Failures come out as the ``Tahoe*`` exceptions
of ``gridbackupd.errors``, made in one place (``grid.answers``), after
transient ones were retried with capped exponential backoff
(``grid.retry``).  This module knows which request each operation makes
and which failures of it are safe to retry.

Facts about Tahoe 1.20 this module relies on (each checked on a real grid,
and mirrored by ``gridbackupd.testing.fake_tahoe``):

- ``PUT /uri`` answers 200 with the read cap (the docs allow 201: accepted);
  bodies of up to 55 bytes give ``URI:LIT:`` caps that hold the data itself.
- A ranged GET answers 206 with ``Content-Range``; a range that runs past
  the end is cut short (still 206), one that starts past the end is a 416.
- A malformed cap in a GET is a 400; a well-formed cap of an object with no
  shares is a 410; a missing child is a 404 "No such child: NAME"; a child
  of a malformed dircap is a 404 "No Such Resource".
- ``GET /uri/BOGUS?t=json`` answers 200 ``["unknown", {}]``.
- ``t=set_children`` reads ``replace=false``, not the ``overwrite=false`` of
  webapi.rst (which is ignored); a clash is then a 409.
- Errors of operations that crashed come as 500 with a traceback, as HTML
  unless the request says ``Accept: text/plain``: we always do.
- In ``GET /?t=json`` a server's ``connection_status`` is ``"connected"``
  for HTTP storage servers, ``"Connected to ... via ..."`` for Foolscap ones
  and ``"failure: ..."``/``"Trying to connect"``/... otherwise.
- Mutable writes (mkdir, set_children, unlink) succeed with fewer servers
  than ``shares.happy``: we check the connected servers ourselves first.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import quote, urlencode

import treq
from treq.client import HTTPClient
from twisted.internet.task import TaskFinished
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, _HTTP11ClientFactory

from gridbackupd.errors import (
    TahoeBadRequest,
    TahoeBadResponse,
    TahoeError,
    TahoeNotFound,
    TahoeSharesMissing,
    TahoeTooLarge,
    TahoeUnavailable,
)
from gridbackupd.grid.answers import (
    NO_SUCH_CHILD,
    DirChild,
    check_response,
    checked_download,
    connected_count,
    parse_cap,
    parse_listing,
    transport_errors,
)
from gridbackupd.grid.caps import child_kind, expected_size, is_read_only
from gridbackupd.grid.retry import RetryPolicy, is_transient, not_sent, retrying, sleep
from gridbackupd.model import short_cap

__all__ = ["MAX_LISTING", "QuietPool", "TahoeClient", "pooled_client"]

# The largest directory listing (``t=json``) a reader takes in: the backup
# set's directories grow by one child (some hundreds of bytes) per snapshot
# and per commit.  docs/FORMAT.md ("Sizes a reader accepts") lists it.
MAX_LISTING = 128 * 1024 * 1024


def _stop_producer(producer):
    """Stop a body producer the request may have left running; it closes its file."""
    try:
        producer.stopProducing()
    except (AttributeError, TaskFinished):
        pass  # never started, or already finished


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    """A connection pool that does not log "Starting factory" for every connection it opens."""

    _factory = _QuietFactory


def pooled_client(reactor, pool: HTTPConnectionPool) -> HTTPClient:
    """A treq client whose connections come from ``pool``."""
    # Agent provides IAgent: zope declarations are not types to mypy.
    return HTTPClient(Agent(reactor, pool=pool))  # type: ignore[arg-type]


class TahoeClient:
    """
    A client of one Tahoe node's web API.

    :param base_url: e.g. ``http://127.0.0.1:3456/``.
    :param http_client: a ``treq.client.HTTPClient``; by default one with
        its own persistent connection pool (``close()`` closes it).
    :param clock: an ``IReactorTime`` for retry waits and polling.
    :param retry: the ``RetryPolicy`` of every method.
    :param min_servers: mutable writes are refused (``TahoeUnavailable``)
        while fewer storage servers are connected; the daemon passes
        ``shares.happy``.
    :param cooperator: drives file bodies (``FileBodyProducer``); the fake
        web API passes one it can run in memory.
    """

    log = Logger()

    def __init__(self, base_url: str, http_client: HTTPClient | None = None,
                 clock=None, retry: RetryPolicy = RetryPolicy(),
                 min_servers: int = 1, cooperator=None):
        if http_client is None or clock is None:
            from twisted.internet import reactor
        self._pool = None
        if http_client is None:
            self._pool = QuietPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 16
            http_client = pooled_client(reactor, self._pool)
        if cooperator is None:
            from twisted.internet import task as cooperator
        self.base_url = base_url.rstrip("/")
        self._http = http_client
        # An IReactorTime: zope interfaces are not types to mypy.
        self._clock: Any = clock if clock is not None else reactor
        self.retry = retry
        self.min_servers = min_servers
        self._cooperator = cooperator

    async def close(self) -> None:
        """Close the connections of the pool this client made, if it made one."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # -- plumbing ----------------------------------------------------------

    def _url(self, *segments: str, **query) -> str:
        url = "/".join([self.base_url, *segments])
        if query:
            url += "?" + urlencode(query)
        return url

    def _cap_url(self, cap: str, name: str | None = None, **query) -> str:
        segments = ["uri", quote(cap, safe=":")]
        if name is not None:
            segments.append(quote(name, safe=""))
        return self._url(*segments, **query)

    async def _request(self, operation, method, url, cap=None, data=None, headers=None):
        if isinstance(data, bytes):
            # Our own producer rather than treq's adapter, so that every body
            # runs on self._cooperator (which the in-memory fake drives).
            data = FileBodyProducer(io.BytesIO(data), cooperator=self._cooperator)
        all_headers: dict[bytes | str, list[bytes | str]] = {"Accept": ["text/plain"]}
        if headers:
            all_headers.update({k: [v] for k, v in headers.items()})
        with transport_errors(operation, cap):
            # unbuffered: treq would otherwise keep a copy of every body.
            return await self._http.request(method, url, data=data, headers=all_headers,
                                            unbuffered=True)

    async def _body(self, response, operation, cap=None, limit=None) -> bytes:
        """The answer's body; with ``limit``, TahoeTooLarge rather than more bytes."""
        if limit is None:
            with transport_errors(operation, cap):
                return await treq.content(response)
        parts: list[bytes] = []
        collect = _bounded_collector(response, operation, cap, limit, parts.append)
        with transport_errors(operation, cap):
            await treq.collect(response, collect)
        return b"".join(parts)

    async def _call(self, operation, method, url, cap=None, data=None, headers=None,
                    ok=(200, 201), limit=None) -> bytes:
        """One request whose whole answer body we want (at most ``limit`` bytes of it)."""
        response = await self._request(operation, method, url, cap, data, headers)
        await check_response(response, operation, cap, ok)
        return await self._body(response, operation, cap, limit)

    async def _json(self, operation, method, url, cap=None, data=None, limit=None):
        body = await self._call(operation, method, url, cap, data, ok=(200,), limit=limit)
        try:
            return json.loads(body)
        except ValueError:
            raise TahoeBadResponse(operation, 200, "the answer is not JSON", cap=cap) from None

    async def _retrying(self, operation, fn, retry_if=is_transient):
        return await retrying(self._clock, self.retry, operation, fn,
                              retry_if=retry_if, log=self.log)

    async def _require_servers(self, operation: str) -> None:
        """
        Refuse a mutable write while fewer than ``min_servers`` storage
        servers are connected: Tahoe would write it to fewer servers than
        ``shares.happy`` without complaint.  Raises TahoeUnavailable (not
        sent, so retried like a node that is down).
        """
        connected = await self._connected_servers_once()
        if connected < self.min_servers:
            raise TahoeUnavailable(
                operation, None,
                f"only {connected} storage server(s) connected, {self.min_servers} "
                f"needed for a mutable write",
                sent=False,
            )

    @staticmethod
    def _require_writable(operation: str, dircap: str) -> None:
        if is_read_only(dircap):
            raise TahoeBadRequest(operation, None, "this directory cap is read-only",
                                  cap=dircap, sent=False)

    # -- files -------------------------------------------------------------

    async def upload_file(self, path: str, wrap_body=None) -> str:
        """
        Upload the file at ``path`` as an immutable file; return its read cap.

        The body is streamed from the open file (``FileBodyProducer``, with
        a Content-Length), never read whole into memory; each attempt
        opens the file again.  Convergent encryption makes a repeated
        upload of the same bytes give the same cap, so retries are safe.
        ``wrap_body`` (the uploader's rate limit) may wrap that producer in
        one that paces it.
        """
        async def attempt():
            with open(path, "rb") as f:
                producer = FileBodyProducer(f, cooperator=self._cooperator)
                if wrap_body is not None:
                    producer = wrap_body(producer)
                try:
                    body = await self._call("upload_file", "PUT", self._url("uri"), data=producer)
                finally:
                    # The node may answer (an error) before it read the whole
                    # body: stop the producer before its file is closed.
                    _stop_producer(producer)
            return parse_cap(body, "upload_file")

        return await self._retrying("upload_file", attempt)

    async def upload_bytes(self, data: bytes) -> str:
        """Upload a small body (a log, an index segment); return its read cap."""
        async def attempt():
            body = await self._call("upload_bytes", "PUT", self._url("uri"), data=bytes(data))
            return parse_cap(body, "upload_bytes")

        return await self._retrying("upload_bytes", attempt)

    async def download(self, cap: str, offset: int | None = None,
                       length: int | None = None, max_size: int | None = None) -> bytes:
        """
        The content of an immutable file, or ``length`` bytes of it from
        ``offset`` (to the end if ``length`` is None).

        With ``max_size`` (the bound of the object's kind), more bytes than
        that are TahoeTooLarge: refused before any request when ``length``
        or the cap (a CHK cap states its file's size) says so, else when the
        answer's Content-Length does, else once that many bytes came.

        Checks the answer: 200 for a whole file (of the size its cap
        states), 206 with the asked-for ``Content-Range`` for a range, and
        exactly ``length`` bytes; anything else is TahoeBadResponse (a range
        that runs past the end included).  A range that starts past the end
        is TahoeBadRequest (416).
        """
        if length is not None and offset is None:
            offset = 0
        if (offset is not None and offset < 0) or (length is not None and length < 0):
            raise ValueError(f"bad range: offset={offset!r} length={length!r}")
        if length == 0:
            return b""
        if max_size is not None:
            _refuse_before_download("download", cap, offset, length, max_size)
        headers = {}
        if offset is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"

        async def attempt():
            response = await self._request("download", "GET", self._cap_url(cap), cap,
                                           headers=headers)
            await check_response(response, "download", cap, ok=(200, 206))
            body = await self._body(response, "download", cap, max_size)
            return checked_download(cap, response, body, offset, length)

        return await self._retrying("download", attempt)

    async def download_to(self, cap: str, fileobj, max_size: int | None = None) -> int:
        """
        Stream an immutable file into ``fileobj`` (which needs ``write``);
        return the number of bytes written.  ``max_size``: as for
        ``download``.

        A failed attempt is retried only if ``fileobj`` is seekable (it is
        then cut back to where it was) or nothing was written yet.
        """
        try:
            start = fileobj.tell() if fileobj.seekable() else None
        except (AttributeError, OSError):
            start = None
        written = 0
        if max_size is not None:
            _refuse_before_download("download_to", cap, None, None, max_size)

        def write(data):
            nonlocal written
            fileobj.write(data)
            written += len(data)

        async def attempt():
            nonlocal written
            if start is not None and written:
                fileobj.seek(start)
                fileobj.truncate()
            written = 0
            response = await self._request("download_to", "GET", self._cap_url(cap), cap)
            await check_response(response, "download_to", cap, ok=(200,))
            collect = write if max_size is None else _bounded_collector(
                response, "download_to", cap, max_size, write)
            with transport_errors("download_to", cap):
                await treq.collect(response, collect)
            expected = expected_size(cap)
            if expected is not None and written != expected:
                raise TahoeBadResponse("download_to", response.code,
                                       f"got {written} bytes of a {expected}-byte file", cap=cap)
            return written

        def retry_if(error):
            return error.transient and (start is not None or written == 0)

        return await self._retrying("download_to", attempt, retry_if)

    async def check(self, cap: str, verify: bool = False, add_lease: bool = False,
                    repair: bool = False) -> dict:
        """
        ``POST /uri/CAP?t=check&output=JSON``: the check results.  A 200 may
        still say ``results.healthy: false``: look at it.

        With ``repair`` (``repair=true``) the answer has another shape:
        ``repair-attempted``, ``repair-successful``, ``pre-repair-results``
        and ``post-repair-results`` (each shaped like a plain check's
        answer).  A literal cap gets the plain shape, ``{"storage-index": "",
        "results": {"healthy": true}}``, repair or not.  A repair is safe to
        retry.  A repair of an unrecoverable immutable file is a 410
        (TahoeSharesMissing: the repairer cannot download it), where a plain
        check answers 200 with ``recoverable: false``; an unrecoverable
        mutable one answers 200, ``repair-successful: false``.  That 410
        is not retried (every attempt would repeat the failed repair): ask
        a plain check what is left.
        """
        query = {"t": "check", "output": "JSON"}
        if verify:
            query["verify"] = "true"
        if add_lease:
            query["add-lease"] = "true"
        if repair:
            query["repair"] = "true"

        async def attempt():
            result = await self._json("check", "POST", self._cap_url(cap, **query), cap)
            if not isinstance(result, dict):
                raise TahoeBadResponse("check", 200, "the answer is not a JSON object", cap=cap)
            return result

        def retry_if(error):
            return error.transient and not (repair and isinstance(error, TahoeSharesMissing))

        return await self._retrying("check", attempt, retry_if)

    # -- directories -------------------------------------------------------

    async def mkdir(self) -> str:
        """
        Create a new, empty, unlinked mutable directory; return its write cap.

        Not idempotent: an attempt whose request may have reached the node is
        not retried (``not_sent``), only one refused before sending (node
        down, too few servers).  A retry after a lost answer would at worst
        leave an empty unlinked directory behind, but it would also hide the
        lost answer from the caller, who may prefer to know.
        """
        async def attempt():
            await self._require_servers("mkdir")
            body = await self._call("mkdir", "POST", self._url("uri", t="mkdir"))
            return parse_cap(body, "mkdir", "URI:DIR2:")

        return await self._retrying("mkdir", attempt, not_sent)

    async def mkdir_immutable(self, children: dict[str, str]) -> str:
        """
        Create a deep-immutable directory of ``children`` (name -> immutable
        read cap of a file or directory); return its cap.  An empty one is a
        ``URI:DIR2-LIT:``.  A mutable child is a TahoeBadRequest (400).

        Same children, same cap: retrying is safe.  This is an immutable
        upload, so Tahoe enforces happiness itself (TahoeUnhappy).
        """
        body = json.dumps(
            {name: [child_kind(cap), {"ro_uri": cap}] for name, cap in children.items()},
            sort_keys=True,
        ).encode("utf-8")

        async def attempt():
            answer = await self._call("mkdir_immutable", "POST",
                                      self._url("uri", t="mkdir-immutable"), data=body)
            return parse_cap(answer, "mkdir_immutable", "URI:DIR2-")

        return await self._retrying("mkdir_immutable", attempt)

    async def set_children(self, dircap: str, children: dict[str, str],
                           overwrite: bool = True) -> None:
        """
        Link ``children`` (name -> cap, read or write, file or directory)
        into the mutable directory ``dircap`` in one write.

        With ``overwrite=False`` a name that exists is a TahoeBadRequest
        (409), and the call is not retried once it may have reached the node
        (a retry could clash with its own first attempt).
        """
        self._require_writable("set_children", dircap)
        if not children:
            return None
        # A cap goes in rw_uri: Tahoe derives the read cap from a write cap,
        # and accepts a read cap there too (webapi.rst); a write cap must
        # never go in ro_uri.
        body = json.dumps(
            {name: [child_kind(cap), {"rw_uri": cap}] for name, cap in children.items()},
            sort_keys=True,
        ).encode("utf-8")
        query = {"t": "set_children"}
        if not overwrite:
            # Tahoe 1.20 reads "replace"; webapi.rst's "overwrite" is ignored.
            query["replace"] = "false"
        url = self._cap_url(dircap, **query)

        async def attempt():
            await self._require_servers("set_children")
            await self._call("set_children", "POST", url, dircap, data=body)

        await self._retrying("set_children", attempt, is_transient if overwrite else not_sent)

    async def list_dir(self, dircap: str) -> dict[str, DirChild]:
        """The children of a directory, by name."""
        async def attempt():
            node = await self._json("list_dir", "GET", self._cap_url(dircap, t="json"), dircap,
                                    limit=MAX_LISTING)
            return parse_listing(node, dircap)

        return await self._retrying("list_dir", attempt)

    async def child_cap(self, dircap: str, name: str) -> str | None:
        """
        The cap of one child (its write cap if it has one and ``dircap`` is a
        write cap), or None if the directory has no such child.  A 404 for
        any other reason (a malformed dircap) is raised as TahoeNotFound.
        """
        async def attempt():
            try:
                body = await self._call("child_cap", "GET",
                                        self._cap_url(dircap, name, t="uri"), dircap)
            except TahoeNotFound as e:
                if e.detail.startswith(NO_SUCH_CHILD):
                    return None
                raise
            return parse_cap(body, "child_cap", "")

        return await self._retrying("child_cap", attempt)

    async def unlink(self, dircap: str, name: str) -> None:
        """
        Remove the child ``name`` from the mutable directory ``dircap``.

        A missing child is TahoeNotFound, except on a retry after an attempt
        that may have reached the node: the child is then gone, as asked.
        """
        self._require_writable("unlink", dircap)
        url = self._cap_url(dircap, name)
        maybe_done = False

        async def attempt():
            nonlocal maybe_done
            await self._require_servers("unlink")
            try:
                await self._call("unlink", "DELETE", url, dircap)
            except TahoeNotFound as e:
                if maybe_done and e.detail.startswith(NO_SUCH_CHILD):
                    self.log.info("unlink of {dircap}: the child was already gone after "
                                  "an earlier attempt that may have removed it",
                                  dircap=short_cap(dircap))
                    return None
                raise
            except TahoeError as e:
                maybe_done = maybe_done or e.sent
                raise

        await self._retrying("unlink", attempt)

    # -- the grid ----------------------------------------------------------

    async def _servers_once(self, operation: str = "connected_servers") -> list:
        welcome = await self._json(operation, "GET", self._url("", t="json"))
        servers = welcome.get("servers") if isinstance(welcome, dict) else None
        if not isinstance(servers, list):
            raise TahoeBadResponse(operation, 200, "the welcome page JSON has no server list")
        return servers

    async def _connected_servers_once(self) -> int:
        return connected_count(await self._servers_once())

    async def servers(self) -> list:
        """The storage servers the node knows, connected or not, as its welcome page's ``t=json`` lists them."""
        return await self._retrying("servers", lambda: self._servers_once("servers"))

    async def connected_servers(self) -> int:
        """How many storage servers the node is connected to now."""
        return await self._retrying("connected_servers", self._connected_servers_once)

    async def wait_for_servers(self, n: int, timeout: float, interval: float = 1.0) -> None:
        """
        Poll until at least ``n`` storage servers are connected; after
        ``timeout`` seconds raise TahoeUnavailable.  Transient failures (the
        node still starting) count as zero servers.
        """
        deadline = self._clock.seconds() + timeout
        while True:
            last_error = None
            try:
                connected = await self._connected_servers_once()
            except TahoeError as e:
                if not e.transient:
                    raise
                connected, last_error = 0, e
            if connected >= n:
                return None
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                detail = f"{connected} of {n} storage servers connected after {timeout:g}s"
                if last_error is not None:
                    detail += f" (last error: {last_error})"
                raise TahoeUnavailable("wait_for_servers", None, detail, sent=False)
            await sleep(self._clock, min(interval, remaining))


def _refuse_before_download(operation, cap, offset, length, max_size):
    """TahoeTooLarge (not sent) if the range, or the size the cap states, is over ``max_size``."""
    size = length
    if size is None:
        whole = expected_size(cap)
        size = None if whole is None else whole - (offset or 0)
    if size is not None and size > max_size:
        raise TahoeTooLarge(operation, None, f"{size} bytes, more than the {max_size} "
                            f"an object of its kind may have", cap=cap, sent=False)


def _bounded_collector(response, operation, cap, limit, collect):
    """
    A body collector for ``treq.collect`` that passes bytes on to
    ``collect`` and raises TahoeTooLarge (treq then drops the connection)
    at the first byte past ``limit``, or at once when the answer's
    Content-Length is over it.
    """
    declared = response.length if isinstance(response.length, int) else None
    received = 0

    def collector(data):
        nonlocal received
        received += len(data)
        if declared is not None and declared > limit:
            raise TahoeTooLarge(operation, response.code, f"the answer is {declared} bytes, more "
                                f"than the {limit} an object of its kind may have", cap=cap)
        if received > limit:
            raise TahoeTooLarge(operation, response.code, f"the answer is more than the {limit} "
                                f"bytes an object of its kind may have", cap=cap)
        collect(data)

    return collector
