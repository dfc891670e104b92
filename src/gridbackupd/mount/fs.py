"""
The mounted file system: every indexed snapshot, read only.

    MOUNTPOINT/
      latest -> snapshots/<id>          this host's newest complete snapshot
      snapshots/<id>/<original absolute path...>
      hosts/<host>/<id> -> ../../snapshots/<id>

A directory is listed from the mount index (``state.mountindex``) when it
is first looked at, and kept in a bounded cache; the kernel keeps names and
attributes for an hour (snapshots never change).  Entries show what the
backup recorded: mode, numeric uid and gid, size, times to the nanosecond,
symlink targets, hard-link counts, xattrs, raw-byte names.  A hard link
shows its file's attributes and content.  A file of an incomplete snapshot
whose content never reached the grid shows size 0 and the xattr
``user.gridbackup.pending``.
"""

import collections
import errno
import itertools
import os
import stat
import threading
import time

import mfusepy

from gridbackupd.format import hardlinks
from gridbackupd.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, HARDLINK, SOCKET, SYMLINK
from gridbackupd.mount import listing
from gridbackupd.mount.content import ContentError, FileContent
from gridbackupd.mount.listing import (
    BLOBS,
    CTIME,
    GID,
    INLINE,
    KIND,
    MODE,
    MTIME,
    NAME,
    PENDING,
    RDEV,
    SIZE,
    TARGET,
    UID,
)
from gridbackupd.state import mountindex

# Rows of directory listings kept in memory (a few hundred bytes each).
CACHED_ROWS = 200_000
# How long the list of snapshots is trusted before the index is asked again.
SNAPSHOTS_TTL = 2.0

_TYPE_BITS = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, HARDLINK: stat.S_IFREG,
              FIFO: stat.S_IFIFO, SOCKET: stat.S_IFSOCK, CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}


def _fail(code):
    return mfusepy.FuseOSError(code)


class _Dir:
    """One directory's rows, by name, with its hard-link counts."""

    __slots__ = ("rows", "by_name", "links")

    def __init__(self, rows, links):
        self.rows = rows
        self.by_name = {row[NAME]: row for row in rows}
        self.links = links


class _Inline:
    """The content of a file the log holds inline."""

    def __init__(self, data):
        self.data = data

    def read(self, offset, size):
        return self.data[offset:offset + size]


class SnapshotFS(mfusepy.Operations):
    use_ns = True

    def __init__(self, index_conn, reader, hostname, log):
        self.index = index_conn
        self.reader = reader
        self.hostname = hostname
        self.log = log
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.started_ns = time.time_ns()
        self._lock = threading.Lock()
        self._dirs: collections.OrderedDict[tuple, _Dir] = collections.OrderedDict()
        self._cached_rows = 0
        self._snaps: dict = {}
        self._snaps_at = -SNAPSHOTS_TTL
        self._handles: dict[int, _Inline | FileContent] = {}
        self._next_handle = itertools.count(1)

    # -- the index -------------------------------------------------------------

    def _snapshots(self):
        """{id: (host, time, complete)}, asked of the index again after SNAPSHOTS_TTL."""
        now = time.monotonic()
        with self._lock:
            if now - self._snaps_at > SNAPSHOTS_TTL:
                self._snaps = {row[0]: tuple(row[1:]) for row in mountindex.snapshots(self.index)}
                self._snaps_at = now
            return self._snaps

    def _latest(self):
        snaps = self._snapshots()
        complete = [(sid, host) for sid, (host, _, done) in snaps.items() if done]
        own = [sid for sid, host in complete if host == self.hostname]
        found = own or [sid for sid, _ in complete]
        return max(found) if found else None

    def _dir(self, snapshot_id, path):
        """The _Dir of a directory of a snapshot, or None if it is not one."""
        key = (snapshot_id, path)
        with self._lock:
            found = self._dirs.get(key)
            if found is not None:
                self._dirs.move_to_end(key)
                return found
            data = mountindex.listing(self.index, snapshot_id, path)
            if data is None:
                return None
            links = mountindex.links(self.index, snapshot_id, path)
        try:
            found = _Dir(listing.decode(data), links)
        except listing.ListingError as e:
            self.log(f"snapshot {snapshot_id}: {os.fsdecode(path)}: {e}")
            raise _fail(errno.EIO) from None
        with self._lock:
            if key not in self._dirs:
                self._dirs[key] = found
                self._cached_rows += len(found.rows)
            while self._cached_rows > CACHED_ROWS and len(self._dirs) > 1:
                _, old = self._dirs.popitem(last=False)
                self._cached_rows -= len(old.rows)
        return found

    def _row(self, snapshot_id, path):
        """(row, nlink) of the entry at ``path`` (raw bytes) in a snapshot, hard links followed."""
        parent, _, name = path.rpartition(b"/")
        directory = self._dir(snapshot_id, parent or b"/")
        row = directory.by_name.get(name) if directory is not None else None
        if row is None or row[PENDING]:
            raise _fail(errno.ENOENT)
        nlink = directory.links.get(name, 1)
        if row[KIND] == HARDLINK:
            row = self._follow(snapshot_id, path, row)
        return row, nlink

    def _follow(self, snapshot_id, path, row):
        def lookup(target):
            parent, _, name = target.rpartition(b"/")
            found = self._dir(snapshot_id, parent or b"/")
            got = found.by_name.get(name) if found is not None else None
            return None if got is None else _AsEntry(target, got)

        try:
            return hardlinks.follow(_AsEntry(path, row), lookup).row
        except hardlinks.LinkError as e:
            self.log(f"snapshot {snapshot_id}: {os.fsdecode(path)}: {e}")
            raise _fail(errno.EIO) from None

    # -- paths -------------------------------------------------------------------

    def _where(self, path):
        """
        What a mount path names: ("root"|"snapshots"|"hosts"|"latest", ...),
        ("host", host), ("hostlink", host, id), ("entry", id, raw path).
        """
        raw = os.fsencode(path)
        parts = raw.strip(b"/").split(b"/") if raw != b"/" else []
        if not parts:
            return ("root",)
        top = parts[0]
        if top == b"latest" and len(parts) == 1:
            return ("latest",)
        if top == b"snapshots":
            if len(parts) == 1:
                return ("snapshots",)
            snapshot_id = parts[1].decode("utf-8", "replace")
            if snapshot_id not in self._snapshots():
                raise _fail(errno.ENOENT)
            return ("entry", snapshot_id, b"/" + b"/".join(parts[2:]))
        if top == b"hosts":
            if len(parts) == 1:
                return ("hosts",)
            host = parts[1].decode("utf-8", "replace")
            snaps = self._snapshots()
            if host not in {h for h, _, _ in snaps.values()}:
                raise _fail(errno.ENOENT)
            if len(parts) == 2:
                return ("host", host)
            snapshot_id = parts[2].decode("utf-8", "replace")
            if len(parts) == 3 and snaps.get(snapshot_id, ("",))[0] == host:
                return ("hostlink", host, snapshot_id)
        raise _fail(errno.ENOENT)

    def _top_dir(self, nlink=2):
        t = self.started_ns
        return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": nlink, "st_uid": self.uid, "st_gid": self.gid,
                "st_size": 0, "st_atime": t, "st_mtime": t, "st_ctime": t}

    def _symlink(self, target):
        t = self.started_ns
        return {"st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_uid": self.uid, "st_gid": self.gid,
                "st_size": len(target), "st_atime": t, "st_mtime": t, "st_ctime": t}

    # -- operations ------------------------------------------------------------------

    def getattr(self, path, fh=None):
        where = self._where(path)
        kind = where[0]
        if kind in ("root", "snapshots", "hosts", "host"):
            return self._top_dir()
        if kind == "latest":
            latest = self._latest()
            if latest is None:
                raise _fail(errno.ENOENT)
            return self._symlink(b"snapshots/" + latest.encode())
        if kind == "hostlink":
            return self._symlink(b"../../snapshots/" + where[2].encode())
        _, snapshot_id, raw = where
        if raw == b"/":
            attrs = self._top_dir()
            t = int(self._snapshots()[snapshot_id][1] * 1e9)
            attrs.update(st_atime=t, st_mtime=t, st_ctime=t, st_mode=stat.S_IFDIR | 0o755, st_uid=0, st_gid=0)
            return attrs
        row, nlink = self._row(snapshot_id, raw)
        return _attrs(row, nlink)

    def readlink(self, path):
        where = self._where(path)
        if where[0] == "latest":
            latest = self._latest()
            if latest is None:
                raise _fail(errno.ENOENT)
            return "snapshots/" + latest
        if where[0] == "hostlink":
            return "../../snapshots/" + where[2]
        if where[0] != "entry" or where[2] == b"/":
            raise _fail(errno.EINVAL)
        row, _ = self._row(where[1], where[2])
        if row[KIND] != SYMLINK or row[TARGET] is None:
            raise _fail(errno.EINVAL)
        return os.fsdecode(row[TARGET])

    def readdir(self, path, fh):
        where = self._where(path)
        kind = where[0]
        yield "."
        yield ".."
        if kind == "root":
            if self._latest() is not None:
                yield "latest"
            yield "snapshots"
            yield "hosts"
        elif kind == "snapshots":
            yield from self._snapshots()
        elif kind == "hosts":
            yield from sorted({host for host, _, _ in self._snapshots().values()})
        elif kind == "host":
            yield from sorted(sid for sid, (host, _, _) in self._snapshots().items() if host == where[1])
        elif kind == "entry":
            directory = self._dir(where[1], where[2])
            if directory is None:
                raise _fail(errno.ENOTDIR)
            for row in directory.rows:
                if not row[PENDING]:
                    yield os.fsdecode(row[NAME]), {"st_mode": _mode(row)}, 0
        else:
            raise _fail(errno.ENOTDIR)

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise _fail(errno.EROFS)
        where = self._where(path)
        if where[0] != "entry" or where[2] == b"/":
            raise _fail(errno.EISDIR if where[0] != "latest" else errno.EINVAL)
        row, _ = self._row(where[1], where[2])
        if row[KIND] == DIR:
            raise _fail(errno.EISDIR)
        if row[KIND] != FILE:
            raise _fail(errno.EACCES)
        handle: _Inline | FileContent
        if row[INLINE] is not None:
            handle = _Inline(row[INLINE])
        else:
            handle = FileContent(self.reader, path, [(h.hex(), n) for h, n in row[BLOBS] or ()])
        fh = next(self._next_handle)
        with self._lock:
            self._handles[fh] = handle
        return fh

    def read(self, path, size, offset, fh):
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise _fail(errno.EBADF)
        try:
            return handle.read(offset, size)
        except ContentError:
            # Logged with the path where it happened (ContentReader).
            raise _fail(errno.EIO) from None

    def release(self, path, fh):
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_namemax": 255}


class _AsEntry:
    """A row seen as the little of an Entry that ``hardlinks.follow`` looks at."""

    __slots__ = ("path", "row")

    def __init__(self, path, row):
        self.path = path
        self.row = row

    @property
    def kind(self):
        return self.row[KIND]

    @property
    def target(self):
        return self.row[TARGET]


def _mode(row):
    mode = row[MODE]
    if stat.S_IFMT(mode) == 0 or row[KIND] == HARDLINK:
        mode = _TYPE_BITS[row[KIND]] | stat.S_IMODE(mode)
    return mode


def _attrs(row, nlink):
    kind = row[KIND]
    size = row[SIZE]
    if kind == SYMLINK:
        size = len(row[TARGET] or b"")
    return {"st_mode": _mode(row), "st_nlink": 2 if kind == DIR else nlink, "st_uid": row[UID],
            "st_gid": row[GID], "st_size": size, "st_blocks": (size + 511) // 512,
            "st_atime": row[MTIME], "st_mtime": row[MTIME], "st_ctime": row[CTIME] or row[MTIME],
            "st_rdev": row[RDEV]}
