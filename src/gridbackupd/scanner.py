"""
The scanner: walk the configured roots, describe every entry, read only
what changed since the previous snapshot, and hand the uploader its blobs.

``scan_tree`` is synchronous and runs in a worker thread of the daemon's
own pool; it never touches the reactor.  It walks each directory's children
in bytewise name order, depth first, which is exactly the order of backup
logs, so the previous snapshot is compared by a streaming merge and never
loaded whole.
"""

import fnmatch
import grp
import os
import pwd
import stat
import time

import attr

from . import chunker
from .model import (
    BLOCKDEV, CHARDEV, DIR, FIFO, FILE, HARDLINK, POSSIBLY_INCONSISTENT, RACY,
    SOCKET, SYMLINK, Entry,
)
from .snapshotlog import path_key

# A file whose mtime is this close to the time it was read may change again
# within the same timestamp tick: read it again on the next scan.
RACY_WINDOW_NS = 1_000_000_000
REREAD_ATTEMPTS = 3


@attr.frozen
class ScanOptions:
    roots: tuple
    exclude: tuple = ()
    excluded_dirs: tuple = ()  # absolute paths never entered (the state dir)
    tiny_max: int = 128
    chunk_threshold: int = 1024 * 1024
    params: chunker.ChunkParams = chunker.ChunkParams()


@attr.define
class ScanProgress:
    """Counters the API reads while the scan runs in its thread."""

    entries: int = 0
    files: int = 0
    bytes: int = 0
    bytes_hashed: int = 0
    current: str = ""
    errors: list = attr.Factory(list)
    started: float = attr.Factory(time.time)


@attr.frozen
class NewBlob:
    """A blob the scanner read: where to read it again for upload."""

    hash: str
    size: int
    source_path: bytes
    source_offset: int
    mtime_ns: int


class _Names:
    """User and group names, looked up once per id."""

    def __init__(self):
        self.users = {}
        self.groups = {}

    def user(self, uid):
        if uid not in self.users:
            try:
                self.users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self.users[uid] = None
        return self.users[uid]

    def group(self, gid):
        if gid not in self.groups:
            try:
                self.groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self.groups[gid] = None
        return self.groups[gid]


def _kind(st):
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISSOCK(mode):
        return SOCKET
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    return None


class _Previous:
    """The previous snapshot's entries, consumed in step with the walk."""

    def __init__(self, entries):
        self._it = iter(entries or ())
        self._head = None
        self._advance()

    def _advance(self):
        self._head = next(self._it, None)
        self._key = path_key(self._head.path) if self._head is not None else None

    def find(self, path):
        key = path_key(path)
        while self._head is not None and self._key < key:
            self._advance()
        if self._head is not None and self._key == key:
            return self._head
        return None


def _unchanged(prev, st):
    """Whether ``prev`` still describes the file ``st`` without reading it."""
    return (
        prev is not None
        and prev.kind == FILE
        and POSSIBLY_INCONSISTENT not in prev.flags
        and prev.size == st.st_size
        and prev.mtime_ns == st.st_mtime_ns
        and prev.ctime_ns == st.st_ctime_ns
        and prev.ino == st.st_ino
        # Racy clean: the previous scan read it within the same timestamp
        # tick as a write may have happened; read it again.
        and RACY not in prev.flags
    )


class Scanner:
    """One scan: walk, compare with ``previous`` entries, emit entries and blobs."""

    def __init__(self, options, previous, emit_entry, emit_blob, progress):
        self.options = options
        self.previous = _Previous(previous)
        self.emit_entry = emit_entry
        self.emit_blob = emit_blob
        self.progress = progress
        self.names = _Names()
        self.links = {}  # (dev, ino) -> first path, for files with nlink > 1
        self.started_ns = time.time_ns()
        self._exclude = [os.fsencode(p) for p in options.exclude]
        self._excluded_dirs = {os.fsencode(p) for p in options.excluded_dirs}

    def error(self, path, reason):
        self.progress.errors.append(
            {"path": os.fsdecode(path), "reason": reason}
        )

    def is_excluded(self, path):
        if path in self._excluded_dirs:
            return True
        name = path.rsplit(b"/", 1)[-1]
        return any(
            fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(name, pat)
            for pat in self._exclude
        )

    def run(self):
        roots = sorted({os.fsencode(os.path.normpath(r)) for r in self.options.roots}, key=path_key)
        kept = []
        for root in roots:
            # A root inside another root is already covered by the walk.
            if any(root.startswith(k.rstrip(b"/") + b"/") for k in kept):
                continue
            kept.append(root)
        for root in kept:
            try:
                st = os.lstat(root)
            except OSError as e:
                self.error(root, f"cannot read: {e.strerror}")
                continue
            self.visit(root, st)

    def visit(self, path, st):
        self.progress.entries += 1
        kind = _kind(st)
        if kind is None:
            self.error(path, "unknown file type")
            return
        fields = dict(
            path=path,
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            user=self.names.user(st.st_uid),
            group=self.names.group(st.st_gid),
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            ino=st.st_ino,
            dev=st.st_dev,
        )
        if kind == DIR:
            self.emit_entry(Entry(**fields))
            self.walk_dir(path, st)
        elif kind == SYMLINK:
            try:
                target = os.readlink(path)
            except OSError as e:
                self.error(path, f"cannot read link: {e.strerror}")
                return
            self.emit_entry(Entry(target=target, size=len(target), **fields))
        elif kind == FILE:
            self.visit_file(path, st, fields)
        elif kind in (CHARDEV, BLOCKDEV):
            self.emit_entry(Entry(rdev=st.st_rdev, **fields))
        else:
            self.emit_entry(Entry(**fields))

    def walk_dir(self, path, st):
        try:
            with os.scandir(path) as it:
                children = [(e.name, e) for e in it]
        except OSError as e:
            self.error(path, f"cannot list directory: {e.strerror}")
            return
        children.sort(key=lambda c: c[0])
        prefix = path if path.endswith(b"/") else path + b"/"
        for name, entry in children:
            child = prefix + name
            if self.is_excluded(child):
                continue
            try:
                child_st = entry.stat(follow_symlinks=False)
            except OSError as e:
                self.error(child, f"vanished or unreadable: {e.strerror}")
                continue
            self.visit(child, child_st)

    def visit_file(self, path, st, fields):
        self.progress.files += 1
        self.progress.bytes += st.st_size
        if st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                self.emit_entry(Entry(size=st.st_size, target=first, **{**fields, "kind": HARDLINK}))
                return
            self.links[(st.st_dev, st.st_ino)] = path
        prev = self.previous.find(path)
        if _unchanged(prev, st):
            self.emit_entry(attr.evolve(prev, **fields, size=st.st_size))
            offset = 0
            for h, size in prev.blobs:
                self.emit_blob(NewBlob(h, size, path, offset, st.st_mtime_ns))
                offset += size
            return
        self.progress.current = os.fsdecode(path)
        result = self.read_file(path, st)
        if result is None:
            return
        digest, final_st, flags = result
        if final_st.st_mtime_ns > self.started_ns - RACY_WINDOW_NS:
            flags = flags + (RACY,)
        fields.update(mtime_ns=final_st.st_mtime_ns, ctime_ns=final_st.st_ctime_ns)
        blobs = tuple((c.hash, c.size) for c in digest.chunks)
        self.emit_entry(Entry(
            size=digest.size, inline=digest.inline, blobs=blobs,
            sha256=digest.sha256, flags=flags, **fields,
        ))
        for c in digest.chunks:
            self.emit_blob(NewBlob(c.hash, c.size, path, c.offset, final_st.st_mtime_ns))

    def read_file(self, path, st):
        """Read a regular file, again if it changed meanwhile; None on error."""
        for attempt in range(REREAD_ATTEMPTS):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                self.error(path, f"cannot open: {e.strerror}")
                return None
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode) or before.st_ino != st.st_ino:
                    self.error(path, "replaced by another file while scanned")
                    return None
                digest = chunker.digest_fd(
                    fd, self.options.tiny_max, self.options.chunk_threshold, self.options.params
                )
                after = os.fstat(fd)
            except OSError as e:
                self.error(path, f"cannot read: {e.strerror}")
                return None
            finally:
                os.close(fd)
            self.progress.bytes_hashed += digest.size
            if (
                before.st_size == after.st_size == digest.size
                and before.st_mtime_ns == after.st_mtime_ns
            ):
                return digest, after, ()
            st = after
        return digest, after, (POSSIBLY_INCONSISTENT,)
