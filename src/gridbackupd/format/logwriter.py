"""
Writing backup logs, streaming: ``LogWriter`` never keeps a record.

A backup log is one zstd frame (with a content checksum) holding UTF-8
JSON lines: a header, the records of one snapshot in ``path_key`` order,
and a trailer.  The writer refuses, with ``ValueError``, any record the
reader would reject, so that whatever it writes reads back.
"""

import base64
import json

import zstandard

from gridbackupd.format.logfields import (
    BLOBS_PER_LINE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_LINE_LENGTH,
    check_entry,
    check_header,
)
from gridbackupd.format.logpaths import path_key, shown, validate_path
from gridbackupd.model import Deletion, Entry

__all__ = ["LogWriter", "write_log"]

_COMPRESSION_LEVEL = 3
_WRITE_BUFFER = 1 << 17


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
        check_header(header)
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
            check_entry(record)
        elif type(record) is Deletion:
            if not self._incremental:
                raise ValueError("a full log has no deletions")
            validate_path(record.path)
        else:
            raise ValueError(f"a log record is an Entry or a Deletion, not {record!r}")
        key = path_key(record.path)
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(
                f"path {shown(record.path)} does not sort after the previous record's path"
            )
        if type(record) is Entry:
            line = _encode_line(_entry_object(record), f"the entry for {shown(record.path)}")
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

