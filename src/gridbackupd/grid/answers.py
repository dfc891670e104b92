"""
What a Tahoe node's answers mean: an unexpected status or a failed
connection becomes one of the ``Tahoe*`` exceptions of
``gridbackupd.errors`` (``error_from_response``, ``transport_errors``), and
the bodies the client reads become values (caps, listings, ranges, server
counts), each checked so that a surprising answer is a TahoeBadResponse
rather than a wrong value.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
from contextlib import contextmanager

import attr
import treq
from twisted.internet import error as _ierror
from twisted.web import _newclient

from gridbackupd.errors import (
    TahoeBadRequest,
    TahoeBadResponse,
    TahoeError,
    TahoeNotFound,
    TahoeServerError,
    TahoeSharesMissing,
    TahoeUnavailable,
    TahoeUnhappy,
)
from gridbackupd.grid.caps import expected_size, scrub_caps

__all__ = [
    "NO_SUCH_CHILD",
    "DirChild",
    "check_response",
    "checked_download",
    "connected_count",
    "offsite",
    "error_from_response",
    "parse_cap",
    "parse_listing",
    "summarize_body",
    "transport_errors",
]

_EXCEPTION_LINE = re.compile(r"^(?:Failure: )?[A-Za-z_][\w.]*(?:Error|Exception)\b")
_MODULE_PREFIX = re.compile(r"^(?:Failure: )?(?:[A-Za-z_]\w*\.)+(?=\w+(?:Error|Exception)\b)")
_UNHAPPY = re.compile(
    r"UploadUnhappinessError|NotEnoughSharesError|NotEnoughServersError"
    r"|shares could be placed"
)
# 500s that say the same thing again however often they are retried.
_PERMANENT_500 = re.compile(r"NotWriteableError|MustBeDeepImmutableError")
# The start of the detail of a 404 for a child that does not exist.
NO_SUCH_CHILD = "No such child"


def summarize_body(body, limit: int = 200) -> str:
    """
    A short, cap-free line from an error answer of a Tahoe node: the
    exception line of a traceback (plain or Twisted's HTML page), the text of
    an HTML error page, the ``error`` of a JSON answer, or its first line.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if re.search(r"<(?:html|div|p|span|title)\b", text, re.I):
        text = re.sub(r"<(style|script)\b.*?</\1>", " ", text, flags=re.S | re.I)
        for pattern in (r'<div class="error">(.*?)</div>', r"<p>(.*?)</p>", r"<title>(.*?)</title>"):
            found = re.findall(pattern, text, re.S | re.I)
            if found:
                text = found[-1]
                break
        text = html.unescape(re.sub(r"<[^>]+>", "", text))
    try:
        parsed = json.loads(text)
    except ValueError:
        pass
    else:
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            text = parsed["error"]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    exception_lines = [line for line in lines if _EXCEPTION_LINE.match(line)]
    if exception_lines:
        line = exception_lines[-1]
    elif lines[0].startswith("Traceback"):
        line = lines[-1]  # a traceback's last line names the exception
    else:
        line = lines[0]
    line = _MODULE_PREFIX.sub("", line)
    # UploadUnhappinessError: "server selection failed for <...>: shares
    # could be placed on only 2 server(s) ... such servers. (placed all ...)"
    line = re.sub(r"server selection failed for <[^>]*>: ", "", line)
    line = re.split(r"(?<=\.) \(", line, maxsplit=1)[0]
    line = scrub_caps(" ".join(line.split()))
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return line


def error_from_response(status: int, body: bytes, operation: str, cap=None) -> TahoeError:
    """The exception for a Tahoe answer with an unexpected status."""
    text = body.decode("utf-8", "replace")
    detail = summarize_body(text)
    cls: type[TahoeError]
    if status == 404:
        cls = TahoeNotFound
    elif status == 410:
        cls = TahoeSharesMissing
    elif 400 <= status < 500:
        cls = TahoeBadRequest
    elif status >= 500:
        if _UNHAPPY.search(text):
            cls = TahoeUnhappy
        elif _PERMANENT_500.search(text):
            cls = TahoeBadRequest
        else:
            cls = TahoeServerError
    else:
        cls = TahoeBadResponse
        detail = detail or "unexpected status"
    return cls(operation, status, detail, cap=cap)


async def check_response(response, operation, cap=None, ok=(200, 201)):
    """Raise the Tahoe* error of ``response`` unless its status is in ``ok``."""
    if response.code in ok:
        return
    try:
        with transport_errors(operation, cap):
            body = await treq.content(response)
    except TahoeUnavailable:
        body = b""
    raise error_from_response(response.code, body, operation, cap)


# Failures that happen before any byte of the request reaches the node.
_NOT_SENT = (_ierror.ConnectError, _ierror.DNSLookupError, _ierror.TimeoutError,
             _newclient.RequestNotSent)
# Failures that happen after the request may have reached it.
_MAYBE_SENT = (_newclient.ResponseNeverReceived, _newclient.RequestTransmissionFailed,
               _newclient.ResponseFailed, _ierror.ConnectionLost, _ierror.ConnectionDone)


def _describe_transport_error(e: Exception) -> str:
    name = type(e).__name__
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = ", ".join(sorted({type(r.value).__name__ for r in reasons}))
        return f"{name} ({inner})"
    text = str(e).strip()
    return scrub_caps(f"{name}: {text}" if text else name)


@contextmanager
def transport_errors(operation, cap=None):
    """Turn "no answer" failures of the HTTP client into TahoeUnavailable."""
    try:
        yield
    except _NOT_SENT as e:
        raise TahoeUnavailable(operation, None, _describe_transport_error(e),
                               cap=cap, sent=False) from e
    except _MAYBE_SENT as e:
        raise TahoeUnavailable(operation, None, _describe_transport_error(e),
                               cap=cap, sent=True) from e


# -- bodies into values --------------------------------------------------------


@attr.frozen
class DirChild:
    """
    One entry of a Tahoe directory listing.

    ``kind`` is ``"filenode"``, ``"dirnode"`` or ``"unknown"``.  ``rw_uri`` is
    set only for a mutable child listed through a write cap.  ``size`` is
    the file size (None for directories and where Tahoe does not say);
    ``mutable`` is None where Tahoe does not say.
    """

    name: str
    kind: str
    ro_uri: str | None = attr.field(repr=False)
    rw_uri: str | None = attr.field(repr=False, default=None)
    size: int | None = None
    mutable: bool | None = None

    @property
    def cap(self) -> str | None:
        """The strongest cap we have of the child."""
        return self.rw_uri or self.ro_uri



def parse_cap(body: bytes, operation: str, prefix: str = "URI:") -> str:
    """The cap a node answered with, which must start with ``prefix``."""
    text = body.decode("ascii", "replace").strip()
    if not text.startswith(prefix) or any(c.isspace() for c in text):
        raise TahoeBadResponse(operation, None, f"the answer is not a {prefix}... cap")
    return text


def parse_listing(node, dircap: str) -> dict[str, DirChild]:
    """The children, by name, of a directory's ``t=json`` description."""
    if not (isinstance(node, list) and len(node) == 2 and isinstance(node[1], dict)):
        raise TahoeBadResponse("list_dir", 200, "the answer is not a node description",
                               cap=dircap)
    kind, info = node
    if kind != "dirnode":
        raise TahoeBadRequest("list_dir", None, f"not a directory (the node says {kind!r})",
                              cap=dircap)
    children = {}
    for name, entry in (info.get("children") or {}).items():
        try:
            child_kind, props = entry
            children[name] = DirChild(
                name=name,
                kind=child_kind,
                ro_uri=props.get("ro_uri"),
                rw_uri=props.get("rw_uri"),
                size=props.get("size") if child_kind == "filenode" else None,
                mutable=props.get("mutable"),
            )
        except (TypeError, ValueError, AttributeError):
            raise TahoeBadResponse("list_dir", 200, "a child entry of an unknown shape",
                                   cap=dircap) from None
    return children


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def checked_download(cap: str, response, body: bytes, offset: int | None,
                     length: int | None) -> bytes:
    """
    The bytes asked for (all, or ``length`` from ``offset``) out of a 200
    or 206 answer, after checking that the answer is exactly that.
    """
    def bad(detail):
        return TahoeBadResponse("download", response.code, detail, cap=cap)

    total: int | None
    if response.code == 200:
        expected = expected_size(cap)
        if expected is not None and len(body) != expected:
            raise bad(f"got {len(body)} bytes of a {expected}-byte file")
        if offset is None:
            return body
        # The node ignored the Range header: cut the range out ourselves.
        total = len(body)
        body = body[offset:] if length is None else body[offset:offset + length]
    else:
        if offset is None:
            raise bad("a partial answer to a request for the whole file")
        values = response.headers.getRawHeaders("content-range") or [""]
        match = _CONTENT_RANGE.match(values[0].strip())
        if match is None:
            raise bad("a partial answer without a valid Content-Range")
        start, end = int(match.group(1)), int(match.group(2))
        total = None if match.group(3) == "*" else int(match.group(3))
        if start != offset or len(body) != end - start + 1:
            raise bad(f"asked for bytes from {offset}, got {len(body)} bytes "
                      f"labelled {start}-{end}")
    if length is not None and len(body) != length:
        raise bad(f"asked for {length} bytes at {offset}, got {len(body)} "
                  f"(the file has {total} bytes)")
    if length is None and total is not None and offset + len(body) != total:
        raise bad(f"asked for bytes {offset}- of {total}, got {len(body)}")
    return body


def connected_count(servers) -> int:
    """
    How many of the servers of a welcome page's ``t=json`` are connected:
    ``connection_status`` is ``"connected"`` for HTTP storage servers and
    ``"Connected to ... via ..."`` for Foolscap ones.
    """
    return sum(
        1 for server in servers
        if str(server.get("connection_status", "")).lower().startswith("connected")
    )


def offsite(servers, announced) -> bool | None:
    """
    True when every connected server of a welcome page's ``t=json`` has
    announced addresses (``announced``: nodeid -> hosts, from
    ``announced_hosts``) and none of them is loopback; None when that
    cannot be told: no server connected, one on loopback, one whose
    announcement is unknown.  (The welcome page itself names no address
    for a server reached over HTTP.)
    """
    connected = [s for s in servers if str(s.get("connection_status", "")).lower().startswith("connected")]
    if not connected:
        return None
    for server in connected:
        hosts = announced.get(str(server.get("nodeid")))
        if not hosts or any(host is None or _is_loopback(host) for host in hosts):
            return None
    return True


def announced_hosts(announcements) -> dict[str, list[str | None]]:
    """
    The hosts each storage server announced (its FURL's location hints and
    its NURLs' hosts), by server id, from the introducer client's cached
    announcements; None for a hint that names no host.
    """
    hosts: dict[str, list[str | None]] = {}
    for entry in announcements if isinstance(announcements, list) else ():
        ann = entry.get("ann") if isinstance(entry, dict) else None
        if not isinstance(ann, dict):
            continue
        urls = [ann.get("anonymous-storage-FURL")] + list(ann.get("anonymous-storage-NURLs") or [])
        found: list[str | None] = []
        for url in urls:
            if isinstance(url, str) and url.startswith("pb://") and "@" in url:
                location = url.split("@", 1)[1].split("/", 1)[0]
                found.extend(_hint_host(hint) for hint in location.split(","))
        hosts[str(entry.get("key_s"))] = found
    return hosts
def _hint_host(hint: str) -> str | None:
    """The host of a Foolscap location hint: ``tcp:HOST:PORT``, ``tor:HOST:PORT`` or ``HOST:PORT``."""
    if hint.count(":") >= 2 and hint.split(":", 1)[0].isalpha() and not hint.startswith("["):
        hint = hint.split(":", 1)[1]
    host, _, port = hint.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
