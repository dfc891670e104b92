"""
Reading backup logs, strictly and streaming.

``LogReader`` holds one line (at most ``MAX_LINE_LENGTH`` bytes) and one
record at a time.  It rejects anything that is not exactly a version 1 log
(docs/FORMAT.md, "Backup logs") with ``LogFormatError`` whose message names
the line.
"""

import binascii
import re

import attr
import orjson

from gridbackupd.format import strictjson
from gridbackupd.format.logfields import (
    BLOBS_PER_LINE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_BLOBS,
    MAX_LINE_LENGTH,
    U63,
    LogFormatError,
    check_blob_refs,
    check_entry,
    check_header,
    check_int,
    check_time,
    json_type,
)
from gridbackupd.format.logframe import FrameError, FrameReader
from gridbackupd.format.logpaths import path_key, path_problem, shown
from gridbackupd.model import KINDS, Deletion, Entry, LogHeader

__all__ = ["LogReader", "read_header", "read_log", "read_partial"]

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

_ENTRY_ALLOWED = _ENTRY_REQUIRED | _ENTRY_OPTIONAL
_ENTRY_REQUIRED_COUNT = len(_ENTRY_REQUIRED)
_DELETION_KEYS = frozenset(["t", "path"])
_CONTINUATION_KEYS = frozenset(["t", "blobs"])
# How a continuation line starts, as written (compact): a skip counts them.
_BLOB_LINE = b'{"t":"b","blobs":[['
_TRAILER_KEYS = frozenset(["t", "records"])


_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DECODER = strictjson.decoder()
_SCAN_ONCE = _DECODER.scan_once


def _decode_b64(text, what):
    if type(text) is not str:
        raise ValueError(f"{what} must be a base64 string, not {json_type(text)}")
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
    raise ValueError(f"{what} must be a string or an object, not {json_type(value)}")


def _decode_path(value, what="path"):
    path = _decode_bytes(value, what)
    problem = path_problem(path)
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
    check_blob_refs(refs)
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
        raise ValueError(f"parent must be a string or null, not {json_type(parent)}")
    paths = obj["paths"]
    if type(paths) is not list:
        raise ValueError(f"header paths must be an array, not {json_type(paths)}")
    tags = obj["tags"]
    if type(tags) is not list:
        raise ValueError(f"header tags must be an array, not {json_type(tags)}")
    started = obj["started"]
    finished = obj["finished"]
    for name, value in (("started", started), ("finished", finished)):
        if type(value) is int:
            check_time(value, name)
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
    check_header(header)
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
    blobs: tuple | list = ()
    xattrs: tuple = ()
    flags: tuple = ()
    holes: tuple = ()
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
        check_entry(entry, blobs_checked=True, blobs_continue=len(blobs) == BLOBS_PER_LINE)
    return entry


class _NotAnInt(Exception):
    """orjson gave a float for an integer beyond 64 bits: the line is read again strictly."""


def _decode_trusted_entry(obj):
    """
    ``_decode_entry`` without the value checks, for ``verify=False`` and a
    line orjson parsed: the fields are taken as they are, except a number
    orjson turned into a float (an integer beyond 64 bits), which raises
    ``_NotAnInt``.
    """
    numbers = (obj["mode"], obj["uid"], obj["gid"], obj["size"], obj["mtime_ns"], obj["ctime_ns"],
               obj["ino"], obj["dev"], obj["rdev"])
    if float in map(type, numbers):
        raise _NotAnInt()
    path = obj["path"]
    path = path.encode("utf-8") if type(path) is str else _decode_bytes(path, "path")
    target = inline = sha256 = None
    blobs: tuple | list = ()
    xattrs: tuple = ()
    flags: tuple = ()
    holes: tuple = ()
    if len(obj) > _ENTRY_REQUIRED_COUNT:
        get = obj.get
        value = get("blobs")
        if value is not None:
            blobs = [(h, n) for h, n in value]
            if any(type(n) is float for _, n in blobs):
                raise _NotAnInt()
        value = get("target")
        if value is not None:
            target = value.encode("utf-8") if type(value) is str else _decode_bytes(value, "target")
        value = get("inline")
        if value is not None:
            inline = binascii.a2b_base64(value)
        sha256 = get("sha256")
        value = get("xattrs")
        if value is not None:
            xattrs = tuple((_decode_bytes(n, "an xattr name"), binascii.a2b_base64(v)) for n, v in value)
        value = get("flags")
        if value is not None:
            flags = tuple(value)
        value = get("holes")
        if value is not None:
            holes = tuple((o, n) for o, n in value)
            if float in map(type, sum(holes, ())):
                raise _NotAnInt()
    return Entry(path, obj["kind"], *numbers[:3], obj["user"], obj["group"], *numbers[3:],
                 target, inline, blobs, sha256, xattrs, flags, holes)


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
        self._fast = None  # the line orjson parsed last (verify=False)
        self._skip = None  # skip_below's prefix, while records are skipped
        self._skipped = 0  # records the line reader passed over, for the trailer's count
        self._partial = _partial_length is not None
        self._frame = FrameReader(fileobj, _partial_length)
        self._lines = self._read_lines()
        self._lineno = 0
        self._started = False
        self.header = self._read_header()

    def _fail(self, message, lineno=None):
        return LogFormatError(f"backup log line {lineno or self._lineno}: {message}")

    def _read_chunk(self):
        try:
            return self._frame.read()
        except FrameError as e:
            raise self._fail(str(e), self._lineno + 1) from None

    def _read_lines(self):
        """Yield the lines (without newline), counting them in _lineno."""
        pending = b""
        limit = MAX_LINE_LENGTH - 1
        while True:
            chunk = self._read_chunk()
            if not chunk:
                break
            if self._skip is not None:
                # A chunk whose last line is still below the skipped
                # directory is passed over without splitting it into lines.
                data = pending + chunk
                end = data.rfind(b"\n")
                if end >= 0 and self._line_below(data[data.rfind(b"\n", 0, end) + 1:end]):
                    end += 1
                    lines = data.count(b"\n", 0, end)
                    self._lineno += lines
                    self._skipped += lines - data.count(_BLOB_LINE, 0, end)
                    pending = data[end:]
                    if len(pending) > limit:
                        raise self._fail("line too long", self._lineno + 1)
                    continue
                pending, chunk = b"", data
            parts = chunk.split(b"\n")
            if len(parts) == 1:
                pending += chunk
                if len(pending) > limit:
                    raise self._fail("line too long", self._lineno + 1)
                continue
            parts[0] = pending + parts[0]
            pending = parts.pop()
            at = self._skip_lines(parts, 0) if self._skip is not None else 0
            while at < len(parts):
                line = parts[at]
                at += 1
                self._lineno += 1
                if len(line) > limit:
                    raise self._fail("line too long")
                yield line
                if self._skip is not None:
                    at = self._skip_lines(parts, at)
            if len(pending) > limit:
                raise self._fail("line too long", self._lineno + 1)
        try:
            self._frame.finish()
        except FrameError as e:
            raise self._fail(str(e), self._lineno + 1) from None
        if pending:
            raise self._fail("the last line has no newline", self._lineno + 1)

    # -- skipping a sub-tree unread (verify=False) ----------------------------

    def skip_below(self, prefix):
        """
        Let the records whose ``path_key`` starts with ``prefix`` (the
        ``path_key`` of a directory and a NUL: its sub-tree, one contiguous
        run) go by unread: the iteration goes on with the first record past
        them.  Only for a trusted log (``verify=False``): lines are passed
        over whole chunks at a time, by looking at the last line of each
        and bisecting the chunk where the run ends; they are counted for
        the trailer, and the frame's checksum still covers them.
        """
        if self._verify or self._partial:
            raise ValueError("only a trusted, whole log can be skipped through")
        self._skip = prefix

    def _skip_lines(self, parts, at):
        """
        The index of the first line of ``parts`` from ``at`` on that is
        neither below the skipped prefix nor a continuation of a record
        that is (the skip is then over), or ``len(parts)``.
        """
        end = len(parts)
        if at >= end:
            return end
        if self._below(parts, end - 1, at):
            stop = end
        else:
            lo, stop = at, end
            while lo < stop:
                mid = (lo + stop) // 2
                if self._below(parts, mid, at):
                    lo = mid + 1
                else:
                    stop = mid
            self._skip = None
        if stop > at:
            passed = parts[at:stop]
            self._lineno += stop - at
            self._skipped += stop - at - b"\n".join(passed).count(_BLOB_LINE)
        return stop

    def _below(self, parts, index, first):
        """Whether line ``index`` is (or continues) a record below the skipped prefix."""
        while parts[index].startswith(_BLOB_LINE):
            if index == first:
                # Continues a record before the skip's first line: one being skipped.
                return True
            index -= 1
        return self._line_below(parts[index])

    def _line_below(self, line):
        """Whether ``line``, a record's, is below the skipped prefix (a continuation line: not known, no)."""
        if line.startswith(_BLOB_LINE):
            return False
        try:
            obj = orjson.loads(line)
            path = obj["path"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return False  # the trailer, or a line for the reader to judge
        try:
            path = path.encode("utf-8") if type(path) is str else _decode_bytes(path, "path")
        except (ValueError, AttributeError):
            return False
        return path_key(path).startswith(self._skip)

    def _next_object(self):
        """The next line as a JSON object, or None at the end."""
        line = next(self._lines, None)
        if line is None:
            return None
        if not self._verify:
            # A trusted log: orjson, about three times faster; a line it
            # refuses gets the strict decoder's exact message.
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                pass
            else:
                if type(obj) is dict:
                    self._fast = line
                    return obj
        self._fast = None
        return self._strict_object(line)

    def _strict_object(self, line):
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
            raise self._fail(f"a line must be a JSON object, not {json_type(obj)}")
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
        verify = self._verify
        last_key = None
        count = 0
        pending = None  # an entry whose blob list may continue on the next line
        pending_line = 0
        blobs: list = []
        while True:
            obj = self._next_object()
            if self._skipped:
                count += self._skipped
                self._skipped = 0
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
                    if verify or self._fast is None:
                        record = _decode_entry(obj, verify)
                    else:
                        try:
                            record = _decode_trusted_entry(obj)
                        except (_NotAnInt, KeyError, TypeError, ValueError, AttributeError):
                            # The strict reading, for its exact values or message.
                            record = _decode_entry(self._strict_object(self._fast), verify)
                elif tag == "d":
                    if not incremental:
                        raise ValueError("a deletion in a full log")
                    _check_keys(obj, _DELETION_KEYS, _DELETION_KEYS, "deletion")
                    record = Deletion(path=_decode_path(obj["path"]))
                elif tag == "end":
                    _check_keys(obj, _TRAILER_KEYS, _TRAILER_KEYS, "trailer")
                    check_int(obj["records"], "record count", 0, U63)
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
            if self._skip is not None:
                if key.startswith(self._skip):
                    # Read before the skip was asked: passed over all the
                    # same, with its continuation lines (the line reader's).
                    count += 1
                    continue
                self._skip = None
            if last_key is not None and key <= last_key:
                if key == last_key:
                    raise self._fail(f"path {shown(record.path)} appears twice")
                raise self._fail(f"path {shown(record.path)} is out of order")
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


def read_partial(fileobj, length):
    """
    ``(header, records)`` of a log still being written, from its first
    ``length`` bytes (an offset ``LogWriter.checkpoint`` returned): the
    records are checked as strictly as in a whole log, but there is no
    trailer and no end of frame to check.
    """
    reader = LogReader(fileobj, _partial_length=length)
    return reader.header, iter(reader)


def read_header(path):
    """The header of the log file at ``path``, checked; its records are not read."""
    with open(path, "rb") as f:
        return LogReader(f).header


def read_log(fileobj):
    """Return ``(header, records)``: a log's header and an iterator of its records."""
    reader = LogReader(fileobj)
    return reader.header, iter(reader)

