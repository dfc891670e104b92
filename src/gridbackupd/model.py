"""
Frozen value types shared by the scanner, the uploader and the restorer.

Paths and symlink targets are raw bytes: any byte but ``/`` and NUL must
survive a backup and a restore.  Fields that hold a capability are
``repr=False`` so that a cap never reaches a log line through a repr.
"""

import attr

# Entry kinds, as written in backup logs.
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
FIFO = "fifo"
SOCKET = "socket"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"

KINDS = frozenset([FILE, DIR, SYMLINK, HARDLINK, FIFO, SOCKET, CHARDEV, BLOCKDEV])

# Entry flags.
POSSIBLY_INCONSISTENT = "possibly-inconsistent"  # changed each time it was read
RACY = "racy"  # modified within a second of being read: read it again next scan
FLAGS = frozenset([POSSIBLY_INCONSISTENT, RACY])


def _blob_list(value):
    if not value:
        return ()  # most entries: a directory, a tiny file (scans build millions)
    return tuple((str(h), int(n)) for h, n in value)


@attr.frozen
class Entry:
    """
    One file-system object as a backup log records it.

    ``blobs`` is the file's content as a sequence of ``(sha256 hex, size)``
    pairs in file order; ``inline`` holds the whole content of a tiny file
    instead.  ``target`` is a symlink's target, or for a hard link the path
    of the entry it is a link to.
    """

    path: bytes
    kind: str = attr.field(validator=attr.validators.in_(KINDS))
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    dev: int = 0
    rdev: int = 0
    target: bytes | None = None
    inline: bytes | None = None
    blobs: tuple = attr.field(default=(), converter=_blob_list)
    sha256: str | None = None
    xattrs: tuple = ()
    flags: tuple = ()
    # A sparse file's holes as (offset, length) pairs in file order; the
    # content (blobs, sha256) still covers them, as zero bytes.
    holes: tuple = ()


@attr.frozen
class Deletion:
    """An incremental log's record that ``path`` is gone since the parent."""

    path: bytes


@attr.frozen
class LogHeader:
    """
    What a backup log says about its snapshot.

    ``kind`` is ``full`` or ``incremental``; an incremental log names its
    ``parent`` snapshot id.
    """

    snapshot: str
    kind: str = attr.field(validator=attr.validators.in_(("full", "incremental")))
    parent: str | None = None
    host: str = ""
    paths: tuple = ()
    tags: tuple = ()
    started: float = 0.0
    finished: float = 0.0


@attr.frozen
class BlobLocation:
    """Where a blob lives on the grid: a byte range of a pack."""

    hash: str
    pack_cap: str = attr.field(repr=False)
    offset: int
    length: int
    size: int
    compression: str = "none"


def short_cap(cap):
    """An abbreviation of a capability that is safe to log."""
    if cap is None:
        return "None"
    text = cap if isinstance(cap, str) else cap.decode("ascii", "replace")
    parts = text.split(":")
    if len(parts) >= 3:
        return ":".join(parts[:2]) + ":" + parts[2][:6] + "…"
    return text[:8] + "…"
