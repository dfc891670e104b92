"""
The fields of a backup log: its limits, and the checks that the writer and
the reader share, so that whatever the writer accepts reads back.

docs/FORMAT.md ("Backup logs") specifies every byte.  Each check raises
``ValueError`` saying what is wrong; the reader turns that into a
``LogFormatError`` naming the line.
"""

import hashlib
import math
import re

from gridbackupd.errors import FormatError
from gridbackupd.format.logpaths import path_problem, shown, validate_path
from gridbackupd.model import FILE, FLAGS, HARDLINK, KINDS, SYMLINK, LogHeader

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

# The flags version 1 defines.
KNOWN_FLAGS = FLAGS

_MAX_ID_BYTES = 255
_U32 = 1 << 32
U63 = 1 << 63
_U64 = 1 << 64
_I128 = 1 << 127

# Holes of one sparse file, all on its entry line: at most this many
# (2**14 pairs of 19-digit integers take about 690 KB, so they fit the line
# limit with a long path beside them).  A scanner that finds more records
# none: holes are an optimization, the content covers them as zeros.
MAX_HOLES = 1 << 14

HEX64 = re.compile(r"[0-9a-f]{64}")
_ID_CHARS = re.compile(r"[^\x00-\x1f\x7f/]+")


class LogFormatError(FormatError, ValueError):
    """A backup log is not a well-formed version 1 log."""


# ---------------------------------------------------------------------------
# Checks shared by the writer and the reader.  Each raises ValueError.


def check_text(value, what):
    if type(value) is not str:
        raise ValueError(f"{what} must be a string, not {json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None


def check_id(value, what):
    check_text(value, what)
    if (
        len(value.encode("utf-8")) > _MAX_ID_BYTES
        or value in (".", "..")
        or not _ID_CHARS.fullmatch(value)
    ):
        raise ValueError(
            f"{what} {value!r} is not 1 to {_MAX_ID_BYTES} bytes without '/' "
            f"or control characters"
        )


def check_int(value, what, low, high):
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer, not {json_type(value)}")
    if not low <= value < high:
        raise ValueError(f"{what} {value} is out of range [{low}, {high})")


def check_time(value, what):
    if type(value) is int:
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{what} {value} is out of range") from None
    elif type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite")
    else:
        raise ValueError(f"{what} must be a number, not {json_type(value)}")


def check_header(header):
    if not isinstance(header, LogHeader):
        raise ValueError(f"a log header must be a LogHeader, not {type(header).__name__}")
    check_id(header.snapshot, "snapshot")
    if header.kind == "full":
        if header.parent is not None:
            raise ValueError("a full log has no parent")
    elif header.kind == "incremental":
        if header.parent is None:
            raise ValueError("an incremental log needs a parent")
        check_id(header.parent, "parent")
    else:
        raise ValueError(f"log kind {header.kind!r} is neither 'full' nor 'incremental'")
    check_text(header.host, "host")
    if type(header.paths) is not tuple:
        raise ValueError("header paths must be a tuple")
    seen = set()
    for path in header.paths:
        validate_path(path)
        if path in seen:
            raise ValueError(f"header path {shown(path)} is listed twice")
        seen.add(path)
    if type(header.tags) is not tuple:
        raise ValueError("header tags must be a tuple")
    seen = set()
    for tag in header.tags:
        check_text(tag, "a tag")
        if not tag:
            raise ValueError("a tag must not be empty")
        if tag in seen:
            raise ValueError(f"tag {tag!r} is listed twice")
        seen.add(tag)
    check_time(header.started, "started")
    check_time(header.finished, "finished")


def check_blob_refs(blobs):
    """Check a sequence of (hex, size) pairs; return the sum of the sizes."""
    total = 0
    for ref in blobs:
        if type(ref) is not tuple or len(ref) != 2:
            raise ValueError("a blob reference must be a (sha256 hex, size) pair")
        digest, size = ref
        if type(digest) is not str or not HEX64.fullmatch(digest):
            raise ValueError(f"blob hash {digest!r} is not 64 lowercase hex digits")
        if type(size) is not int or not 1 <= size < U63:
            raise ValueError(f"blob size {size!r} is not an integer in [1, 2**63)")
        total += size
    return total


def check_entry(entry, blobs_checked=False, blobs_continue=False):
    """
    All the rules an entry obeys, whether it is written or read.

    A reader passes ``blobs_checked`` (it checked the blob references before
    ``Entry`` converted them) and ``blobs_continue`` for an entry line whose
    blob list may go on over continuation lines: the blob sizes are then not
    yet held against the size; ``LogReader`` does that when it has them all.
    """
    problem = path_problem(entry.path)
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
        and 0 <= size < U63
        and -_I128 <= mtime < _I128
        and -_I128 <= ctime < _I128
        and 0 <= ino < _U64
        and 0 <= dev < _U64
        and 0 <= rdev < _U64
        and (user is None or (type(user) is str and user.isascii()))
        and (group is None or (type(group) is str and group.isascii()))
    ):
        check_int(mode, "mode", 0, _U32)
        check_int(uid, "uid", 0, _U32)
        check_int(gid, "gid", 0, _U32)
        if user is not None:
            check_text(user, "user")
        if group is not None:
            check_text(group, "group")
        check_int(size, "size", 0, U63)
        check_int(mtime, "mtime_ns", -_I128, _I128)
        check_int(ctime, "ctime_ns", -_I128, _I128)
        check_int(ino, "ino", 0, _U64)
        check_int(dev, "dev", 0, _U64)
        check_int(rdev, "rdev", 0, _U64)

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
            problem = path_problem(target)
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
                total = check_blob_refs(blobs)
            if total != entry.size and not blobs_continue:
                raise ValueError(f"blob sizes add up to {total} but size is {entry.size}")
        if entry.sha256 is not None:
            if type(entry.sha256) is not str or not HEX64.fullmatch(entry.sha256):
                raise ValueError(f"sha256 {entry.sha256!r} is not 64 lowercase hex digits")
            if inline is not None and hashlib.sha256(inline).hexdigest() != entry.sha256:
                raise ValueError("sha256 does not match the inline content")
    elif inline is not None or blobs or entry.sha256 is not None:
        raise ValueError(f"a {kind} entry has no content (inline, blobs, sha256)")

    holes = entry.holes
    if holes != ():
        check_holes(holes, kind, entry.size)
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
    previous_flag = None
    for flag in flags:
        if type(flag) is not str or flag not in KNOWN_FLAGS:
            raise ValueError(f"unknown flag {flag!r}")
        if previous_flag is not None and flag <= previous_flag:
            raise ValueError(f"flags are not strictly increasing at {flag!r}")
        previous_flag = flag


def check_holes(holes, kind, size):
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


def json_type(value):
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

