"""
Backup logs: a streaming writer and a strict, streaming reader.

A backup log is one zstd frame holding UTF-8 JSON lines: a header, the
records of one snapshot in path order, and a trailer.  docs/FORMAT.md
("Backup logs") specifies every byte; this module is its reference
implementation.

Both directions work in constant memory: ``LogWriter`` never keeps a record
and ``LogReader`` holds one line (at most ``MAX_LINE_LENGTH`` bytes) and one
record at a time.  The reader rejects anything that is not exactly a
version 1 log with ``LogFormatError`` (a ``ValueError``) whose message names
the line; the writer refuses, with ``ValueError``, any record the reader
would reject, so that whatever it writes reads back.

Records are ordered by ``path_key``, which sorts a directory's descendants
immediately after it: a scanner that lists each directory, sorts the names
bytewise and recurses depth first produces exactly this order, a later scan
can compare with the previous log by a streaming merge, and a restore finds
a sub-tree as one contiguous run (see ``is_in_subtree``).
"""

import base64
import binascii
import hashlib
import heapq
import json
import math
import re

import attr
import zstandard

from gridbackupd.format import strictjson
from gridbackupd.model import (
    FILE,
    FLAGS,
    HARDLINK,
    KINDS,
    SYMLINK,
    Deletion,
    Entry,
    LogHeader,
)

__all__ = [
    "BLOBS_PER_LINE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KNOWN_FLAGS",
    "MAX_BLOBS",
    "MAX_HOLES",
    "MAX_LINE_LENGTH",
    "MAX_WINDOW_SIZE",
    "LogFormatError",
    "LogReader",
    "LogWriter",
    "is_in_subtree",
    "merge_records",
    "path_key",
    "read_log",
    "read_partial",
    "validate_path",
    "write_log",
]

FORMAT_NAME = "gridbackup-log"
FORMAT_VERSION = 1

# A line, its terminating newline included, is at most this long.
MAX_LINE_LENGTH = 1 << 20

# Blob references on one line: an entry line holds the first BLOBS_PER_LINE
# of a file's blobs, and each continuation line the next BLOBS_PER_LINE.
# 4096 references take at most 4096 * 91 bytes (about 364 KiB), which leaves
# room on an entry line for a long path and extended attributes.
BLOBS_PER_LINE = 4096

# Blob references in one entry, over all its lines: 2**22 chunks is more
# than 1 TiB even if every chunk had the smallest CDC size (256 KiB).
MAX_BLOBS = 1 << 22

# The largest zstd window a reader accepts; level 3 uses 2 MiB at most.
MAX_WINDOW_SIZE = 1 << 23

# The flags version 1 defines.
KNOWN_FLAGS = FLAGS

_COMPRESSION_LEVEL = 3
_READ_SIZE = 1 << 17
_WRITE_BUFFER = 1 << 17

_MAX_ID_BYTES = 255
_U32 = 1 << 32
_U63 = 1 << 63
_U64 = 1 << 64
_I128 = 1 << 127

_HEADER_KEYS = frozenset(
    [
        "format",
        "version",
        "snapshot",
        "kind",
        "parent",
        "host",
        "paths",
        "tags",
        "started",
        "finished",
    ]
)
_ENTRY_REQUIRED = frozenset(
    [
        "t",
        "path",
        "kind",
        "mode",
        "uid",
        "gid",
        "user",
        "group",
        "size",
        "mtime_ns",
        "ctime_ns",
        "ino",
        "dev",
        "rdev",
    ]
)
_ENTRY_OPTIONAL = frozenset(
    ["target", "inline", "blobs", "sha256", "xattrs", "flags", "holes"]
)

# Holes of one sparse file, all on its entry line: at most this many
# (2**14 pairs of 19-digit integers take about 690 KB, so they fit the line
# limit with a long path beside them).  A scanner that finds more records
# none: holes are an optimization, the content covers them as zeros.
MAX_HOLES = 1 << 14
_ENTRY_ALLOWED = _ENTRY_REQUIRED | _ENTRY_OPTIONAL
_ENTRY_REQUIRED_COUNT = len(_ENTRY_REQUIRED)
_DELETION_KEYS = frozenset(["t", "path"])
_CONTINUATION_KEYS = frozenset(["t", "blobs"])
_TRAILER_KEYS = frozenset(["t", "records"])

_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_ID_CHARS = re.compile(r"[^\x00-\x1f\x7f/]+")


class LogFormatError(ValueError):
    """A backup log is not a well-formed version 1 log."""


# ---------------------------------------------------------------------------
# Paths and their order


def path_key(path):
    """
    The sort key of a valid absolute path: records are in strictly
    increasing ``path_key`` order.

    Comparing keys bytewise is comparing the paths' component tuples: every
    ``/`` becomes NUL, the one byte that is smaller than any byte of a
    component, so ``/a`` < ``/a/b`` < ``/a/c`` < ``/a+`` < ``/ab``.  A
    directory's descendants therefore follow it without a gap, and sorting
    the names of each directory bytewise and recursing depth first walks a
    tree in this order.  ``path`` is not checked (see ``validate_path``).
    """
    return path.replace(b"/", b"\0")


def validate_path(path):
    """
    Raise ``ValueError`` unless ``path`` is a path a backup log may hold:
    bytes, absolute, without NUL, and without empty, ``.`` or ``..``
    components; ``b"/"`` itself is valid.
    """
    problem = _path_problem(path)
    if problem is not None:
        raise ValueError(problem)


def _path_problem(path):
    """What is wrong with path as a log path, or None."""
    if type(path) is bytes and path[:1] == b"/":
        if path == b"/" or not (
            b"\0" in path
            or b"//" in path
            or b"/./" in path
            or b"/../" in path
            or path.endswith((b"/", b"/.", b"/.."))
        ):
            return None
    if type(path) is not bytes:
        return f"a path must be bytes, not {type(path).__name__}"
    if path == b"/":
        return None
    if not path.startswith(b"/"):
        return f"path {path!r} is not absolute"
    if b"\0" in path:
        return f"path {path!r} contains NUL"
    if (
        path.endswith(b"/")
        or b"//" in path
        or b"/./" in path
        or b"/../" in path
        or path.endswith(b"/.")
        or path.endswith(b"/..")
    ):
        return f"path {path!r} has an empty, '.' or '..' component"
    return None


def is_in_subtree(path, top):
    """Whether ``path`` is ``top`` or below it (both valid paths)."""
    if top == b"/" or path == top:
        return True
    return path.startswith(top) and path[len(top) : len(top) + 1] == b"/"


# ---------------------------------------------------------------------------
# Checks shared by the writer and the reader.  Each raises ValueError.


def _check_text(value, what):
    if type(value) is not str:
        raise ValueError(f"{what} must be a string, not {_json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None


def _check_id(value, what):
    _check_text(value, what)
    if (
        len(value.encode("utf-8")) > _MAX_ID_BYTES
        or value in (".", "..")
        or not _ID_CHARS.fullmatch(value)
    ):
        raise ValueError(
            f"{what} {value!r} is not 1 to {_MAX_ID_BYTES} bytes without '/' "
            f"or control characters"
        )


def _check_int(value, what, low, high):
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer, not {_json_type(value)}")
    if not low <= value < high:
        raise ValueError(f"{what} {value} is out of range [{low}, {high})")


def _check_time(value, what):
    if type(value) is int:
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{what} {value} is out of range") from None
    elif type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite")
    else:
        raise ValueError(f"{what} must be a number, not {_json_type(value)}")


def _check_header(header):
    if not isinstance(header, LogHeader):
        raise ValueError(f"a log header must be a LogHeader, not {type(header).__name__}")
    _check_id(header.snapshot, "snapshot")
    if header.kind == "full":
        if header.parent is not None:
            raise ValueError("a full log has no parent")
    elif header.kind == "incremental":
        if header.parent is None:
            raise ValueError("an incremental log needs a parent")
        _check_id(header.parent, "parent")
    else:
        raise ValueError(f"log kind {header.kind!r} is neither 'full' nor 'incremental'")
    _check_text(header.host, "host")
    if type(header.paths) is not tuple:
        raise ValueError("header paths must be a tuple")
    seen = set()
    for path in header.paths:
        validate_path(path)
        if path in seen:
            raise ValueError(f"header path {path!r} is listed twice")
        seen.add(path)
    if type(header.tags) is not tuple:
        raise ValueError("header tags must be a tuple")
    seen = set()
    for tag in header.tags:
        _check_text(tag, "a tag")
        if not tag:
            raise ValueError("a tag must not be empty")
        if tag in seen:
            raise ValueError(f"tag {tag!r} is listed twice")
        seen.add(tag)
    _check_time(header.started, "started")
    _check_time(header.finished, "finished")


def _check_blob_refs(blobs):
    """Check a sequence of (hex, size) pairs; return the sum of the sizes."""
    total = 0
    for ref in blobs:
        if type(ref) is not tuple or len(ref) != 2:
            raise ValueError("a blob reference must be a (sha256 hex, size) pair")
        digest, size = ref
        if type(digest) is not str or not _HEX64.fullmatch(digest):
            raise ValueError(f"blob hash {digest!r} is not 64 lowercase hex digits")
        if type(size) is not int or not 1 <= size < _U63:
            raise ValueError(f"blob size {size!r} is not an integer in [1, 2**63)")
        total += size
    return total


def _check_entry(entry, blobs_checked=False, blobs_continue=False):
    """
    All the rules an entry obeys, whether it is written or read.

    A reader passes ``blobs_checked`` (it checked the blob references before
    ``Entry`` converted them) and ``blobs_continue`` for an entry line whose
    blob list may go on over continuation lines: the blob sizes are then not
    yet held against the size; ``LogReader`` does that when it has them all.
    """
    problem = _path_problem(entry.path)
    if problem is not None:
        raise ValueError(problem)
    kind = entry.kind
    if type(kind) is not str or kind not in KINDS:
        raise ValueError(f"unknown entry kind {kind!r}")
    # One expression for the common case (scans check millions of entries);
    # the checks one by one only to say what is wrong.
    mode, uid, gid, size = entry.mode, entry.uid, entry.gid, entry.size
    mtime, ctime, ino, dev, rdev = (
        entry.mtime_ns,
        entry.ctime_ns,
        entry.ino,
        entry.dev,
        entry.rdev,
    )
    user, group = entry.user, entry.group
    if not (
        type(mode) is int
        and type(uid) is int
        and type(gid) is int
        and type(size) is int
        and type(mtime) is int
        and type(ctime) is int
        and type(ino) is int
        and type(dev) is int
        and type(rdev) is int
        and 0 <= mode < _U32
        and 0 <= uid < _U32
        and 0 <= gid < _U32
        and 0 <= size < _U63
        and -_I128 <= mtime < _I128
        and -_I128 <= ctime < _I128
        and 0 <= ino < _U64
        and 0 <= dev < _U64
        and 0 <= rdev < _U64
        and (user is None or (type(user) is str and user.isascii()))
        and (group is None or (type(group) is str and group.isascii()))
    ):
        _check_int(mode, "mode", 0, _U32)
        _check_int(uid, "uid", 0, _U32)
        _check_int(gid, "gid", 0, _U32)
        if user is not None:
            _check_text(user, "user")
        if group is not None:
            _check_text(group, "group")
        _check_int(size, "size", 0, _U63)
        _check_int(mtime, "mtime_ns", -_I128, _I128)
        _check_int(ctime, "ctime_ns", -_I128, _I128)
        _check_int(ino, "ino", 0, _U64)
        _check_int(dev, "dev", 0, _U64)
        _check_int(rdev, "rdev", 0, _U64)

    target = entry.target
    if kind == SYMLINK or kind == HARDLINK:
        if target is None:
            raise ValueError(f"a {kind} entry needs a target")
        if type(target) is not bytes:
            raise ValueError("a target must be bytes")
        if kind == SYMLINK:
            if not target or b"\0" in target:
                raise ValueError("a symlink target must be non-empty and without NUL")
        else:
            problem = _path_problem(target)
            if problem is not None:
                raise ValueError("hard link target: " + problem)
            if target == entry.path:
                raise ValueError("a hard link cannot be a link to itself")
    elif target is not None:
        raise ValueError(f"a {kind} entry has no target")

    inline = entry.inline
    blobs = entry.blobs
    if kind == FILE:
        if inline is not None:
            if type(inline) is not bytes:
                raise ValueError("inline content must be bytes")
            if blobs:
                raise ValueError("an entry has inline content or blobs, not both")
            if len(inline) != entry.size:
                raise ValueError(
                    f"inline content is {len(inline)} bytes but size is {entry.size}"
                )
        if blobs:
            if len(blobs) > MAX_BLOBS:
                raise ValueError(f"more than {MAX_BLOBS} blobs in one entry")
            if blobs_checked:
                total = sum(size for _, size in blobs)
            else:
                total = _check_blob_refs(blobs)
            if total != entry.size and not blobs_continue:
                raise ValueError(f"blob sizes add up to {total} but size is {entry.size}")
        if entry.sha256 is not None:
            if type(entry.sha256) is not str or not _HEX64.fullmatch(entry.sha256):
                raise ValueError(f"sha256 {entry.sha256!r} is not 64 lowercase hex digits")
            if inline is not None and hashlib.sha256(inline).hexdigest() != entry.sha256:
                raise ValueError("sha256 does not match the inline content")
    elif inline is not None or blobs or entry.sha256 is not None:
        raise ValueError(f"a {kind} entry has no content (inline, blobs, sha256)")

    holes = entry.holes
    if holes != ():
        _check_holes(holes, kind, entry.size)
    xattrs = entry.xattrs
    flags = entry.flags
    if xattrs == () and flags == ():
        return
    if type(xattrs) is not tuple:
        raise ValueError("xattrs must be a tuple of (name, value) pairs")
    previous = None
    for pair in xattrs:
        if type(pair) is not tuple or len(pair) != 2:
            raise ValueError("an xattr must be a (name bytes, value bytes) pair")
        name, value = pair
        if type(name) is not bytes or not name or b"\0" in name:
            raise ValueError(f"xattr name {name!r} is not non-empty bytes without NUL")
        if type(value) is not bytes:
            raise ValueError(f"xattr {name!r} has a value that is not bytes")
        if previous is not None and name <= previous:
            raise ValueError(f"xattr names are not strictly increasing at {name!r}")
        previous = name

    if type(flags) is not tuple:
        raise ValueError("flags must be a tuple of strings")
    previous = None
    for flag in flags:
        if type(flag) is not str or flag not in KNOWN_FLAGS:
            raise ValueError(f"unknown flag {flag!r}")
        if previous is not None and flag <= previous:
            raise ValueError(f"flags are not strictly increasing at {flag!r}")
        previous = flag


def _check_holes(holes, kind, size):
    """Holes: (offset, length) pairs, in order, apart, inside the file."""
    if kind != FILE:
        raise ValueError(f"a {kind} entry has no holes")
    if type(holes) is not tuple:
        raise ValueError("holes must be a tuple of (offset, length) pairs")
    if len(holes) > MAX_HOLES:
        raise ValueError(f"more than {MAX_HOLES} holes in one entry")
    end = -1
    for pair in holes:
        if type(pair) is not tuple or len(pair) != 2:
            raise ValueError("a hole must be an (offset, length) pair")
        offset, length = pair
        if type(offset) is not int or type(length) is not int:
            raise ValueError("a hole's offset and length must be integers")
        if offset < 0 or length < 1:
            raise ValueError(f"hole ({offset}, {length}) is not an offset >= 0 and a length >= 1")
        if offset <= end:
            raise ValueError(f"holes overlap, touch or are out of order at offset {offset}")
        end = offset + length
        if end > size:
            raise ValueError(f"hole ({offset}, {length}) runs past the size {size}")


def _json_type(value):
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------
# Encoding


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _encode_bytes(data):
    """A path-like byte string: its text if it is UTF-8, else {"b64": ...}."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": _b64(data)}


def _encode_line(obj, what):
    line = (_ENCODER.encode(obj) + "\n").encode("utf-8")
    if len(line) > MAX_LINE_LENGTH:
        raise ValueError(f"{what} takes {len(line)} bytes, more than a line may hold")
    return line


def _header_object(header):
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "snapshot": header.snapshot,
        "kind": header.kind,
        "parent": header.parent,
        "host": header.host,
        "paths": [_encode_bytes(p) for p in header.paths],
        "tags": list(header.tags),
        "started": header.started,
        "finished": header.finished,
    }


def _blob_list(blobs):
    return [[digest, size] for digest, size in blobs]


def _entry_object(entry):
    obj = {
        "t": "e",
        "path": _encode_bytes(entry.path),
        "kind": entry.kind,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "user": entry.user,
        "group": entry.group,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "ctime_ns": entry.ctime_ns,
        "ino": entry.ino,
        "dev": entry.dev,
        "rdev": entry.rdev,
    }
    if entry.target is not None:
        obj["target"] = _encode_bytes(entry.target)
    if entry.inline is not None:
        obj["inline"] = _b64(entry.inline)
    if entry.blobs:
        obj["blobs"] = _blob_list(entry.blobs[:BLOBS_PER_LINE])
    if entry.sha256 is not None:
        obj["sha256"] = entry.sha256
    if entry.xattrs:
        obj["xattrs"] = [[_encode_bytes(n), _b64(v)] for n, v in entry.xattrs]
    if entry.flags:
        obj["flags"] = list(entry.flags)
    if entry.holes:
        obj["holes"] = [[offset, length] for offset, length in entry.holes]
    return obj


# ---------------------------------------------------------------------------
# Writing


class LogWriter:
    """
    Write one backup log to a binary file object, streaming.

    ``LogWriter(fileobj, header)`` writes the header at once; ``add(record)``
    appends an ``Entry`` or a ``Deletion``; ``close()`` writes the trailer
    and ends the zstd frame.  Use it as a context manager: leaving the
    ``with`` block normally closes the log, leaving it by an exception
    abandons it without a trailer, so that no reader takes the partial log
    for a complete one.  ``fileobj`` is closed too only if ``closefd`` is
    true.

    ``add`` raises ``ValueError``, and writes nothing, for a record that
    breaks a rule of the format: an invalid field, a path not after the
    previous one in ``path_key`` order, a ``Deletion`` in a full log, an
    entry too large for a line.  The writer can go on after it.
    """

    def __init__(self, fileobj, header, *, closefd=False):
        _check_header(header)
        first_line = _encode_line(_header_object(header), "the header")
        self._fileobj = fileobj
        self._closefd = closefd
        self._incremental = header.kind == "incremental"
        self._compressor = zstandard.ZstdCompressor(
            level=_COMPRESSION_LEVEL, write_checksum=True
        ).stream_writer(fileobj, closefd=False)
        self._buffer = [first_line]
        self._buffered = len(first_line)
        self._last_key = None
        self._last_path = None
        self._closed = False
        self.records = 0

    def add(self, record):
        """Append one ``Entry`` or ``Deletion``."""
        if self._closed:
            raise ValueError("the log is closed")
        if type(record) is Entry:
            _check_entry(record)
        elif type(record) is Deletion:
            if not self._incremental:
                raise ValueError("a full log has no deletions")
            validate_path(record.path)
        else:
            raise ValueError(f"a log record is an Entry or a Deletion, not {record!r}")
        key = path_key(record.path)
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(
                f"path {record.path!r} does not sort after the previous record's path"
            )
        if type(record) is Entry:
            line = _encode_line(_entry_object(record), f"the entry for {record.path!r}")
        else:
            line = _encode_line({"t": "d", "path": _encode_bytes(record.path)}, "a deletion")
        self._last_key = key
        self._last_path = record.path
        self.records += 1
        self._write(line)
        blobs = record.blobs if type(record) is Entry else ()
        for start in range(BLOBS_PER_LINE, len(blobs), BLOBS_PER_LINE):
            part = _blob_list(blobs[start : start + BLOBS_PER_LINE])
            self._write(_encode_line({"t": "b", "blobs": part}, "blob references"))

    def checkpoint(self):
        """
        Make everything added so far readable from the file as it is: end
        a zstd block (not the frame) and flush.  Returns the file offset up
        to which ``read_partial`` reads the records added so far.  The log
        goes on; a scan killed after this resumes from here.
        """
        if self._closed:
            raise ValueError("the log is closed")
        self._flush_buffer()
        self._compressor.flush(zstandard.FLUSH_BLOCK)
        flush = getattr(self._fileobj, "flush", None)
        if flush is not None:
            flush()
        return self._fileobj.tell()

    @property
    def last_path(self):
        """The path of the last record added, or None."""
        return self._last_path

    def _write(self, line):
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= _WRITE_BUFFER:
            self._flush_buffer()

    def _flush_buffer(self):
        if self._buffer:
            self._compressor.write(b"".join(self._buffer))
            self._buffer = []
            self._buffered = 0

    def close(self):
        """Write the trailer, end the zstd frame and flush; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.append(_encode_line({"t": "end", "records": self.records}, "trailer"))
        self._flush_buffer()
        self._compressor.close()  # ends the frame; fileobj stays open
        flush = getattr(self._fileobj, "flush", None)
        if flush is not None:
            flush()
        if self._closefd:
            self._fileobj.close()

    def abort(self):
        """Stop without a trailer: what was written is a truncated log."""
        if self._closed:
            return
        self._closed = True
        self._buffer = []
        if self._closefd:
            self._fileobj.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_log(fileobj, header, records):
    """Write a whole log of ``records`` (any iterable) to ``fileobj``; return their count."""
    with LogWriter(fileobj, header) as writer:
        for record in records:
            writer.add(record)
    return writer.records


# ---------------------------------------------------------------------------
# Reading


class _FrameSource:
    """
    The compressed bytes of one zstd frame, checked on their way into the
    decompressor.

    The decompressor of the zstandard package silently accepts a frame cut
    short and reads on into a second frame.  This wrapper follows the frame
    structure (header, block headers, checksum) without decompressing, hands
    the decompressor the bytes of the first frame only, and remembers what
    is wrong: bad magic, a frame without a checksum or with a dictionary, a
    reserved block type, bytes after the frame, or an input that ends
    inside it.
    """

    def __init__(self, fileobj):
        self._fileobj = fileobj
        self._state = "start"
        self._need = 5  # bytes to collect in _pending before the next step
        self._pending = b""
        self._skip = 0  # block content bytes to pass over
        self._last_block = False
        self._has_checksum = False
        self._trailing = False
        self.done = False  # the frame is complete
        self.error = None

    def read(self, size):
        if self.error is not None or self.done:
            return b""
        data = self._fileobj.read(size)
        if not data:
            if self._state == "start" and not self._pending:
                self.error = "the file is empty"
            else:
                self.error = "the zstd frame is truncated"
            return b""
        if type(data) is not bytes:
            data = bytes(data)
        end = self._follow(data)
        if end < len(data):
            self._trailing = True  # reported by finish(), after the frame's lines
        return data[:end]

    def finish(self):
        """Check, once the decompressor is done, that the input ended with the frame."""
        if self.error is None:
            if not self.done:
                self.error = "the zstd frame is truncated"
            elif self._trailing or self._fileobj.read(1):
                self.error = "data after the end of the zstd frame"

    def _follow(self, data):
        """Advance the frame parser over data; return how much belongs to the frame."""
        pos = 0
        n = len(data)
        while pos < n and not self.done and self.error is None:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self._after_block()
                continue
            take = min(self._need - len(self._pending), n - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                field = self._pending
                self._pending = b""
                self._step(field)
        return pos

    def _step(self, field):
        if self._state == "start":
            if field[:4] != b"\x28\xb5\x2f\xfd":
                self.error = "not a zstd frame (bad magic number)"
                return
            fhd = field[4]
            single_segment = fhd & 0x20
            self._has_checksum = bool(fhd & 0x04)
            if not self._has_checksum:
                self.error = "the zstd frame has no content checksum"
                return
            if fhd & 0x03:
                self.error = "the zstd frame names a dictionary"
                return
            fcs_flag = fhd >> 6
            rest = (0 if single_segment else 1) + (
                (1 if single_segment else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
            )
            self._expect("header", rest)
        elif self._state == "header":
            self._expect("block", 3)
        elif self._state == "block":
            bits = int.from_bytes(field, "little")
            self._last_block = bool(bits & 1)
            block_type = (bits >> 1) & 3
            block_size = bits >> 3
            if block_type == 3:
                self.error = "reserved zstd block type"
                return
            self._skip = 1 if block_type == 1 else block_size
            if not self._skip:
                self._after_block()
        elif self._state == "checksum":
            self.done = True

    def _expect(self, state, count):
        self._state = state
        self._need = count
        if count == 0:
            self._step(b"")

    def _after_block(self):
        if self._last_block:
            self._expect("checksum", 4)
        else:
            self._expect("block", 3)


_DECODER = strictjson.decoder()
_SCAN_ONCE = _DECODER.scan_once


def _decode_b64(text, what):
    if type(text) is not str:
        raise ValueError(f"{what} must be a base64 string, not {_json_type(text)}")
    try:
        raw = text.encode("ascii")
        data = binascii.a2b_base64(raw)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError(f"{what} is not valid base64") from None
    # Canonical: re-encoding gives the same text.  This also rejects what
    # a2b_base64 skips over (characters outside the alphabet, whitespace).
    if binascii.b2a_base64(data, newline=False) != raw:
        if not _B64_CHARS.fullmatch(raw):
            raise ValueError(f"{what} is not valid base64")
        raise ValueError(f"{what} is not canonical base64")
    return data


def _decode_bytes(value, what):
    """Undo ``_encode_bytes``, insisting on its canonical form."""
    if type(value) is str:
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None
    if type(value) is dict:
        if value.keys() != {"b64"}:
            raise ValueError(f'{what} must be a string or {{"b64": ...}}')
        data = _decode_b64(value["b64"], what)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return data
        raise ValueError(f"{what} is valid UTF-8 and must be written as a string")
    raise ValueError(f"{what} must be a string or an object, not {_json_type(value)}")


def _decode_path(value, what="path"):
    path = _decode_bytes(value, what)
    problem = _path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path


def _decode_blob_refs(value):
    """A blobs array as checked (hex, size) pairs."""
    if type(value) is not list or not value:
        raise ValueError("blobs must be a non-empty array")
    if len(value) > BLOBS_PER_LINE:
        raise ValueError(f"more than {BLOBS_PER_LINE} blob references on one line")
    refs = []
    for ref in value:
        if type(ref) is not list or len(ref) != 2:
            raise ValueError("a blob reference must be a [sha256 hex, size] array")
        refs.append((ref[0], ref[1]))
    _check_blob_refs(refs)
    return refs


def _check_keys(obj, required, allowed, what):
    keys = obj.keys()
    if keys >= required and keys <= allowed:
        return
    missing = sorted(required - keys)
    unknown = sorted(keys - allowed)
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if unknown:
        parts.append("unknown " + ", ".join(unknown))
    raise ValueError(f"{what}: " + "; ".join(parts))


def _decode_header(obj):
    _check_keys(obj, _HEADER_KEYS, _HEADER_KEYS, "header")
    if obj["format"] != FORMAT_NAME or type(obj["format"]) is not str:
        raise ValueError(f"not a backup log (format {obj['format']!r})")
    version = obj["version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"unsupported backup log version {version!r}")
    kind = obj["kind"]
    if type(kind) is not str or kind not in ("full", "incremental"):
        raise ValueError(f"log kind {kind!r} is neither 'full' nor 'incremental'")
    parent = obj["parent"]
    if parent is not None and type(parent) is not str:
        raise ValueError(f"parent must be a string or null, not {_json_type(parent)}")
    paths = obj["paths"]
    if type(paths) is not list:
        raise ValueError(f"header paths must be an array, not {_json_type(paths)}")
    tags = obj["tags"]
    if type(tags) is not list:
        raise ValueError(f"header tags must be an array, not {_json_type(tags)}")
    started = obj["started"]
    finished = obj["finished"]
    for name, value in (("started", started), ("finished", finished)):
        if type(value) is int:
            _check_time(value, name)
    header = LogHeader(
        snapshot=obj["snapshot"],
        kind=kind,
        parent=parent,
        host=obj["host"],
        paths=tuple(_decode_path(p, "a header path") for p in paths),
        tags=tuple(tags),
        started=float(started) if type(started) is int else started,
        finished=float(finished) if type(finished) is int else finished,
    )
    _check_header(header)
    return header


_MISSING = object()


def _decode_entry(obj, verify=True):
    _check_keys(obj, _ENTRY_REQUIRED, _ENTRY_ALLOWED, "entry")
    kind = obj["kind"]
    if type(kind) is not str or kind not in KINDS:
        raise ValueError(f"unknown entry kind {kind!r}")
    path = obj["path"]
    if type(path) is str:
        try:
            path = path.encode("utf-8")
        except UnicodeEncodeError:
            path = _decode_bytes(path, "path")  # says what is wrong
    else:
        path = _decode_bytes(path, "path")
    target = inline = sha256 = None
    blobs = xattrs = flags = holes = ()
    if len(obj) > _ENTRY_REQUIRED_COUNT:  # optional keys (checked: all known)
        get = obj.get
        value = get("target", _MISSING)
        if value is not _MISSING:
            if value is None:
                raise ValueError("target must not be null")
            target = _decode_bytes(value, "target")
        value = get("inline", _MISSING)
        if value is not _MISSING:
            if value is None:
                raise ValueError("inline must not be null")
            inline = _decode_b64(value, "inline content")
        value = get("blobs", _MISSING)
        if value is not _MISSING:
            blobs = _decode_blob_refs(value)
        value = get("sha256", _MISSING)
        if value is not _MISSING:
            if value is None:
                raise ValueError("sha256 must not be null")
            sha256 = value
        value = get("xattrs", _MISSING)
        if value is not _MISSING:
            if type(value) is not list or not value:
                raise ValueError("xattrs must be a non-empty array")
            pairs = []
            for pair in value:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("an xattr must be a [name, base64 value] array")
                pairs.append(
                    (
                        _decode_bytes(pair[0], "an xattr name"),
                        _decode_b64(pair[1], "an xattr value"),
                    )
                )
            xattrs = tuple(pairs)
        value = get("flags", _MISSING)
        if value is not _MISSING:
            if type(value) is not list or not value:
                raise ValueError("flags must be a non-empty array")
            flags = tuple(value)
        value = get("holes", _MISSING)
        if value is not _MISSING:
            if type(value) is not list or not value:
                raise ValueError("holes must be a non-empty array")
            pairs = []
            for pair in value:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("a hole must be an [offset, length] array")
                pairs.append((pair[0], pair[1]))
            holes = tuple(pairs)
    entry = Entry(
        path=path,
        kind=kind,
        mode=obj["mode"],
        uid=obj["uid"],
        gid=obj["gid"],
        user=obj["user"],
        group=obj["group"],
        size=obj["size"],
        mtime_ns=obj["mtime_ns"],
        ctime_ns=obj["ctime_ns"],
        ino=obj["ino"],
        dev=obj["dev"],
        rdev=obj["rdev"],
        target=target,
        inline=inline,
        blobs=blobs,
        sha256=sha256,
        xattrs=xattrs,
        flags=flags,
        holes=holes,
    )
    if verify:
        _check_entry(entry, blobs_checked=True, blobs_continue=len(blobs) == BLOBS_PER_LINE)
    return entry


class LogReader:
    """
    Read one backup log from a binary file object, streaming and strictly.

    ``LogReader(fileobj)`` reads and checks the header (``.header``);
    iterating yields the ``Entry`` and ``Deletion`` records in order, once.
    Anything that is not a well-formed version 1 log raises
    ``LogFormatError`` naming the line, at the latest when the iteration
    reaches the end: the trailer and the end of the frame are checked only
    then, so a caller must consume the whole iterator before it trusts
    that the log was complete.  ``fileobj`` is never closed.
    """

    def __init__(self, fileobj, _partial_length=None, *, verify=True):
        # verify=False skips the per-entry value checks (paths, ranges,
        # types), never the framing, the checksum, the order or the
        # trailer: only for the daemon's own local logs, which were checked
        # when written or when recovered from the grid.
        self._verify = verify
        self._partial = _partial_length is not None
        if self._partial:
            self._source = _PartialSource(fileobj, _partial_length)
            self._stream = _PartialStream(self._source)
        else:
            self._source = _FrameSource(fileobj)
            self._stream = zstandard.ZstdDecompressor(
                max_window_size=MAX_WINDOW_SIZE
            ).stream_reader(self._source, read_size=_READ_SIZE, closefd=False)
        self._lines = self._read_lines()
        self._lineno = 0
        self._started = False
        self.header = self._read_header()

    def _fail(self, message, lineno=None):
        return LogFormatError(f"backup log line {lineno or self._lineno}: {message}")

    def _read_chunk(self):
        try:
            chunk = self._stream.read(_READ_SIZE)
        except zstandard.ZstdError as e:
            raise self._fail(f"invalid zstd data: {e}", self._lineno + 1) from None
        if self._source.error is not None:
            raise self._fail(self._source.error, self._lineno + 1)
        return chunk

    def _read_lines(self):
        """Yield the lines (without newline), counting them in _lineno."""
        pending = b""
        limit = MAX_LINE_LENGTH - 1
        while True:
            chunk = self._read_chunk()
            if not chunk:
                break
            parts = chunk.split(b"\n")
            if len(parts) == 1:
                pending += chunk
                if len(pending) > limit:
                    raise self._fail("line too long", self._lineno + 1)
                continue
            parts[0] = pending + parts[0]
            pending = parts.pop()
            for line in parts:
                self._lineno += 1
                if len(line) > limit:
                    raise self._fail("line too long")
                yield line
            if len(pending) > limit:
                raise self._fail("line too long", self._lineno + 1)
        self._source.finish()
        if self._source.error is not None:
            raise self._fail(self._source.error, self._lineno + 1)
        if pending:
            raise self._fail("the last line has no newline", self._lineno + 1)

    def _next_object(self):
        """The next line as a JSON object, or None at the end."""
        line = next(self._lines, None)
        if line is None:
            return None
        try:
            text = line.decode("utf-8")
            # The common case, a compact line, without decode()'s wrapping;
            # anything else (whitespace around, an error) goes through
            # decode() for its exact behaviour and message.
            try:
                obj, end = _SCAN_ONCE(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                obj = _DECODER.decode(text)
        except UnicodeDecodeError:
            raise self._fail("not valid UTF-8") from None
        except RecursionError:
            raise self._fail("JSON nested too deeply") from None
        except ValueError as e:
            raise self._fail(f"not valid JSON: {e}") from None
        if type(obj) is not dict:
            raise self._fail(f"a line must be a JSON object, not {_json_type(obj)}")
        return obj

    def _read_header(self):
        obj = self._next_object()
        if obj is None:
            raise self._fail("the log is empty (no header)", 1)
        try:
            return _decode_header(obj)
        except ValueError as e:
            raise self._fail(f"bad header: {e}") from None

    def __iter__(self):
        if self._started:
            raise ValueError("a LogReader can be iterated only once")
        self._started = True
        return self._records()

    def _records(self):
        incremental = self.header.kind == "incremental"
        last_key = None
        count = 0
        pending = None  # an entry whose blob list may continue on the next line
        pending_line = 0
        blobs = None
        while True:
            obj = self._next_object()
            if obj is None:
                if self._partial:
                    if pending is not None:
                        yield self._complete(pending, blobs, pending_line)
                    return
                raise self._fail("the log is truncated (no trailer)", self._lineno + 1)
            tag = obj.get("t")
            if tag == "b":
                if pending is None or len(blobs) % BLOBS_PER_LINE:
                    raise self._fail("blob references that continue no entry")
                try:
                    _check_keys(obj, _CONTINUATION_KEYS, _CONTINUATION_KEYS, "blob line")
                    blobs.extend(_decode_blob_refs(obj["blobs"]))
                except ValueError as e:
                    raise self._fail(str(e)) from None
                if len(blobs) > MAX_BLOBS:
                    raise self._fail(f"more than {MAX_BLOBS} blobs in one entry")
                continue
            if pending is not None:
                yield self._complete(pending, blobs, pending_line)
                pending = None
            try:
                if tag == "e":
                    record = _decode_entry(obj, self._verify)
                elif tag == "d":
                    if not incremental:
                        raise ValueError("a deletion in a full log")
                    _check_keys(obj, _DELETION_KEYS, _DELETION_KEYS, "deletion")
                    record = Deletion(path=_decode_path(obj["path"]))
                elif tag == "end":
                    _check_keys(obj, _TRAILER_KEYS, _TRAILER_KEYS, "trailer")
                    _check_int(obj["records"], "record count", 0, _U63)
                    if obj["records"] != count:
                        raise ValueError(
                            f"the trailer counts {obj['records']} records, "
                            f"the log has {count}"
                        )
                    break
                else:
                    raise ValueError(f"unknown record type {tag!r}")
            except ValueError as e:
                raise self._fail(str(e)) from None
            key = path_key(record.path)
            if last_key is not None and key <= last_key:
                if key == last_key:
                    raise self._fail(f"path {record.path!r} appears twice")
                raise self._fail(f"path {record.path!r} is out of order")
            last_key = key
            count += 1
            if type(record) is Entry and len(record.blobs) == BLOBS_PER_LINE:
                pending = record
                pending_line = self._lineno
                blobs = list(record.blobs)
            else:
                yield record
        if self._next_object() is not None:
            raise self._fail("a line after the trailer")

    def _complete(self, entry, blobs, lineno):
        """The entry of lineno with all its blobs, checked against its size."""
        total = sum(size for _, size in blobs)
        if total != entry.size:
            raise self._fail(
                f"blob sizes add up to {total} but size is {entry.size}", lineno
            )
        if len(blobs) == len(entry.blobs):
            return entry
        return attr.evolve(entry, blobs=blobs)


class _PartialSource:
    """The first ``length`` bytes of a log being written, as a frame source."""

    error = None

    def __init__(self, fileobj, length):
        self._fileobj = fileobj
        self._left = length

    def read(self, size):
        data = self._fileobj.read(min(size, self._left)) if self._left > 0 else b""
        self._left -= len(data)
        return data

    def finish(self):
        pass


class _PartialStream:
    """Decompress the start of a zstd frame that has no end yet."""

    def __init__(self, source):
        self._source = source
        self._decompressor = zstandard.ZstdDecompressor(
            max_window_size=MAX_WINDOW_SIZE
        ).decompressobj()

    def read(self, size):
        while True:
            data = self._source.read(_READ_SIZE)
            if not data:
                return b""
            out = self._decompressor.decompress(data)
            if out:
                return out


def read_partial(fileobj, length):
    """
    ``(header, records)`` of a log still being written, from its first
    ``length`` bytes (an offset ``LogWriter.checkpoint`` returned): the
    records are checked as strictly as in a whole log, but there is no
    trailer and no end of frame to check.
    """
    reader = LogReader(fileobj, _partial_length=length)
    return reader.header, iter(reader)


def read_log(fileobj):
    """Return ``(header, records)``: a log's header and an iterator of its records."""
    reader = LogReader(fileobj)
    return reader.header, iter(reader)


def merge_records(base, *changes):
    """
    The entries of a snapshot given as a chain of logs, streaming.

    ``base`` iterates the records of a full log, each of ``changes`` those
    of an incremental log, oldest first, each the child of the one before
    (the caller checks that chain in the headers).  Yields the snapshot's
    entries in ``path_key`` order: for each path the newest entry, none if
    the newest record is a ``Deletion``.  Holds one record per log.  A
    deletion of a path the snapshot before it does not have raises
    ``LogFormatError``.
    """

    if not changes:
        # A full log alone: its records are the entries (it has no deletions).
        for record in base:
            if type(record) is Deletion:
                raise LogFormatError(f"a full log deletes {record.path!r}")
            yield record
        return

    def keyed(layer, records):
        for record in records:
            yield path_key(record.path), layer, record

    merged = heapq.merge(
        *(keyed(i, r) for i, r in enumerate([base, *changes])), key=_merge_order
    )
    current_key = None
    present = None
    for key, layer, record in merged:
        if key != current_key:
            if present is not None:
                yield present
            current_key = key
            present = None
        if type(record) is Deletion:
            if present is None:
                raise LogFormatError(
                    f"incremental log {layer} deletes {record.path!r}, "
                    f"which the snapshot before it does not have"
                )
            present = None
        else:
            present = record
    if present is not None:
        yield present


def _merge_order(item):
    return item[0], item[1]
