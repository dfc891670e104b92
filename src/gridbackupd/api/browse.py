"""
Reading snapshots for the API: listings, one entry, differences.

Everything here that reads a backup log is a plain function meant for a
worker thread: it streams the log (or the chain of logs of an incremental
snapshot, merged by ``chain.open_chain``) and keeps at most one
page of results, so a snapshot of a million files costs time, not memory.
``log_chain`` runs on the reactor thread: it reads the database and log headers.

Pages: a listing returns at most ``limit`` items and a ``next_cursor``, an
opaque string (the URL-safe base64 of the last path returned); the next
page is the same request with ``cursor=<next_cursor>``.  Because records are
sorted by ``logpaths.path_key``, "after the cursor" is a key comparison.
"""

import base64
import binascii
import contextlib
import hashlib
import os

import attr
import zstandard

from gridbackupd.api.errors import failure_answer
from gridbackupd.changes import tally as changes
from gridbackupd.errors import Conflict, Invalid, NotFound
from gridbackupd.format import chain, hardlinks, logpaths
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.pack import decode_blob
from gridbackupd.model import FILE
from gridbackupd.state import snapshots

# A content request fetches neighbouring blobs of one pack in one ranged
# GET, up to this many bytes.
MAX_RUN = 8 * 1024 * 1024


def path_doc(raw, field="path"):
    """A raw path as JSON: text, plus ``<field>_b64`` when it is not valid UTF-8."""
    try:
        return {field: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {field: raw.decode("utf-8", "replace"),
                field + "_b64": base64.b64encode(raw).decode("ascii")}


def entry_doc(entry):
    doc = path_doc(entry.path)
    doc.update(
        kind=entry.kind, size=entry.size, mode=entry.mode, uid=entry.uid, gid=entry.gid,
        user=entry.user, group=entry.group, mtime_ns=entry.mtime_ns,
    )
    if entry.target is not None:
        doc.update(path_doc(entry.target, "target"))
    if entry.sha256 is not None:
        doc["sha256"] = entry.sha256
    if entry.kind == FILE:
        doc["blobs"] = len(entry.blobs)
        doc["inline"] = entry.inline is not None
    if entry.flags:
        doc["flags"] = list(entry.flags)
    return doc


def parse_path(text, what="path"):
    """An absolute path from a query parameter, as the raw bytes a log holds."""
    if text is None:
        return b"/"
    return checked_path(os.fsencode(text), what)


def checked_path(raw, what):
    """A path without trailing slashes, valid as a log path (else Invalid)."""
    if raw != b"/":
        raw = raw.rstrip(b"/") or b"/"
    try:
        logpaths.validate_path(raw)
    except ValueError as e:
        raise Invalid("bad_request", f"{what}: {e}") from None
    return raw


def encode_cursor(raw):
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(text):
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
        logpaths.validate_path(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise Invalid("bad_request", f"cursor {text!r} is not one this API gave out") from None
    return raw


# -- which logs make a snapshot (reactor thread: database and log headers) ---


def log_chain(conn, snapshot_id):
    """
    The local log files of a snapshot, its full log first: ``[(id, path), ...]``
    (``chain.chain_paths``, which reads the first bytes of each log).
    NotFound for an unknown snapshot, Conflict for one that has no log yet;
    a log that cannot be read is answered as a JSON 500 (``failure_answer``).
    """
    row = snapshots.log_link(conn, snapshot_id)
    if row is None:
        raise NotFound("unknown_snapshot", f"no snapshot {snapshot_id!r}")
    _, _, log_path, state = row
    if log_path is None or not os.path.exists(log_path):
        if state in ("queued", "scanning"):
            raise Conflict("not_scanned", f"snapshot {snapshot_id} is {state}: no log yet")
        raise Conflict("log_unavailable", f"the log of snapshot {snapshot_id} is not on this machine")
    try:
        return chain.chain_paths(log_path, snapshots.log_resolver(conn))
    except chain.ChainError as e:
        raise Conflict("log_unavailable", str(e)) from None
    except LogFormatError as e:
        raise failure_answer(e) from e


# -- streaming over logs (worker threads) -------------------------------------


@contextlib.contextmanager
def entries(log_paths):
    """
    The entries of the snapshot the chain of logs describes, streaming
    (``chain.open_chain``, which also checks that the headers form a chain).
    """
    (_, top), known = log_paths[-1], dict(log_paths)
    with chain.open_chain(top, known.get) as (_, records):
        yield records


def _child_of(path, top):
    """The child of ``top`` that ``path`` (strictly below it) lies in."""
    base = len(top) + 1 if top != b"/" else 1
    slash = path.find(b"/", base)
    return path if slash < 0 else path[:slash]


def list_entries(log_paths, top, recursive, cursor, limit):
    """
    The entries under ``top`` after ``cursor``, as API documents: its
    children, or with ``recursive`` every descendant.  Returns ``(top_entry
    or None, [doc, ...], next_cursor or None)``; ``top_entry`` is None if
    ``top`` is not itself an entry (``/`` never is).  A directory that is
    not an entry but has entries below it (``/home`` above a backed-up
    ``/home/ann``) is listed as ``{"kind": "dir", "virtual": true}``.
    """
    top_key = logpaths.path_key(top)
    start = logpaths.path_key(cursor) if cursor is not None else None
    top_entry = None
    found: list[dict] = []
    last = None
    more = False
    with entries(log_paths) as records:
        for entry in records:
            key = logpaths.path_key(entry.path)
            if key < top_key:
                continue
            if entry.path == top:
                top_entry = entry
                continue
            if not logpaths.is_in_subtree(entry.path, top):
                break
            shown = entry.path if recursive else _child_of(entry.path, top)
            if shown == last or (start is not None and logpaths.path_key(shown) <= start):
                continue
            if len(found) == limit:
                more = True
                break
            if shown == entry.path:
                found.append(entry_doc(entry))
            else:
                doc = path_doc(shown)
                doc.update(kind="dir", virtual=True)
                found.append(doc)
            last = shown
    next_cursor = encode_cursor(last) if more and found else None
    return top_entry, found, next_cursor


def has_below(log_paths, top):
    """Whether any entry lies strictly below ``top``."""
    top_key = logpaths.path_key(top)
    with entries(log_paths) as records:
        for entry in records:
            if logpaths.path_key(entry.path) <= top_key:
                continue
            return logpaths.is_in_subtree(entry.path, top)
    return False


def missing_paths(log_paths, wanted):
    """
    Those of ``wanted`` (raw paths) that are neither an entry nor above one:
    what a restore of them would find nothing at (``/`` is never missing).
    One read of the log, stopped once every path is found.
    """
    left = set(wanted) - {b"/"}
    with entries(log_paths) as records:
        for entry in records:
            if not left:
                break
            path = entry.path
            while True:
                left.discard(path)
                if path == b"/" or b"/" not in path:
                    break
                path = path.rsplit(b"/", 1)[0] or b"/"
    return sorted(left, key=logpaths.path_key)


def _entry_at(log_paths, path):
    """The entry at ``path`` as the log has it, or None: one read, up to that path."""
    wanted = logpaths.path_key(path)
    with entries(log_paths) as records:
        for entry in records:
            key = logpaths.path_key(entry.path)
            if key == wanted:
                return entry
            if key > wanted:
                break
    return None


def find_entry(log_paths, path):
    """
    The entry at ``path``, a hard link followed to its file; or None.  A
    hostile log's chain of hard links costs at most ``hardlinks.MAX_HOPS``
    more reads, and a cycle is a Conflict.
    """
    found = _entry_at(log_paths, path)
    if found is None:
        return None
    try:
        return hardlinks.follow(found, lambda target: _entry_at(log_paths, target))
    except hardlinks.LinkError as e:
        raise Conflict("bad_hard_link", f"{logpaths.shown(path)}: {e}") from None


def diff(paths_a, paths_b, top, cursor, limit):
    """The differences from snapshot A to B under ``top``, one page: (changes, next_cursor)."""
    start = logpaths.path_key(cursor) if cursor is not None else None
    found: list[dict] = []
    more = False
    with entries(paths_a) as before, entries(paths_b) as after:
        for change, old, new in changes.stream(before, after):
            entry = new if new is not None else old
            if not logpaths.is_in_subtree(entry.path, top):
                continue
            if start is not None and logpaths.path_key(entry.path) <= start:
                continue
            if len(found) == limit:
                more = True
                break
            doc = {"change": change}
            doc.update(entry_doc(entry))
            if change == "changed":
                doc["before"] = {k: v for k, v in entry_doc(old).items()
                                 if k in ("kind", "size", "mode", "mtime_ns", "sha256", "uid", "gid")}
            found.append(doc)
    next_cursor = None
    if more and found:
        last = found[-1]
        raw = base64.b64decode(last["path_b64"]) if "path_b64" in last else last["path"].encode("utf-8")
        next_cursor = encode_cursor(raw)
    return found, next_cursor


# -- one file's content ---------------------------------------------------------


@attr.frozen
class Run:
    """
    Blobs of a file fetched together: a byte range ``[start, end)`` of one
    pack (``cap``), or one blob the index holds inline (``cap`` None, its
    bytes in ``inline``).  ``blobs`` are ``(hash, size, offset, length,
    compression)`` in file order.
    """

    cap: str | None = attr.field(repr=False)
    start: int
    end: int
    blobs: tuple
    inline: bytes | None = None


def content_runs(locations, max_run=MAX_RUN):
    """
    ``locations``: ``(hash, size, location)`` in file order, where location
    is what ``restore.locate`` gives (``(cap, offset, length,
    compression)`` or inline bytes).  Yields the Runs that fetch them, in
    order; a blob that starts where the one before it ended in the same pack
    joins its run.
    """
    current = None
    for blob_hash, size, location in locations:
        if isinstance(location, bytes):
            if current is not None:
                yield current
                current = None
            yield Run(None, 0, len(location), ((blob_hash, size, 0, len(location), "none"),), location)
            continue
        cap, offset, length, compression = location
        blob = (blob_hash, size, offset, length, compression)
        if (current is not None and current.cap == cap and current.end == offset
                and offset + length - current.start <= max_run):
            current = attr.evolve(current, end=offset + length, blobs=current.blobs + (blob,))
            continue
        if current is not None:
            yield current
        current = Run(cap, offset, offset + length, (blob,))
    if current is not None:
        yield current


class CorruptContent(Exception):
    """Content fetched from the grid is not what the snapshot says."""


def decode_run(run, stored, start):
    """A run's plaintext, each blob decompressed and checked against its SHA-256 (worker thread)."""
    parts = []
    for blob_hash, size, offset, length, compression in run.blobs:
        piece = stored[offset - start:offset - start + length]
        try:
            data = decode_blob(piece, compression, size)
        except (ValueError, zstandard.ZstdError) as e:
            raise CorruptContent(f"blob {blob_hash[:12]} cannot be decoded: {e}") from None
        if hashlib.sha256(data).hexdigest() != blob_hash:
            raise CorruptContent(f"blob {blob_hash[:12]} does not match its SHA-256")
        parts.append(data)
    return b"".join(parts)
