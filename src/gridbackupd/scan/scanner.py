"""
The scanner: walk the configured roots, describe every entry, read only
what changed since the previous snapshot, and hand the uploader its blobs.

``Scanner.run`` is synchronous and runs in a worker thread of the daemon's
own pool; it never touches the reactor.  It walks each directory's children
in bytewise name order, depth first, which is exactly the order of backup
logs, so the previous snapshot (its chain of logs merged) is compared by a
streaming merge and never loaded whole; the same merge writes an
incremental log's differences and deletions.  Exclusions are in
``excludes.py``; checkpoints and resuming in ``backup.scan_to_log``.

Errors (an unreadable file, one that vanished, a path too long) are
recorded in ``ScanProgress`` and the scan goes on.
"""

import errno
import grp
import os
import pwd
import stat
import time

import attr

from gridbackupd.format.log import MAX_HOLES, path_key
from gridbackupd.model import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    POSSIBLY_INCONSISTENT,
    RACY,
    SOCKET,
    SYMLINK,
    Deletion,
    Entry,
)
from gridbackupd.scan import chunker
from gridbackupd.scan.excludes import Excluder, ExcludeRules

# A file whose mtime is this close to the time it was read may change again
# within the same timestamp tick: read it again on the next scan.
RACY_WINDOW_NS = 1_000_000_000
REREAD_ATTEMPTS = 3
MAX_ERRORS = 1000


def reason(e, action):
    """Why ``action`` failed, in words a person acts on."""
    if e.errno == errno.ENOENT:
        return "vanished while scanned"
    if e.errno == errno.ENAMETOOLONG:
        return f"path too long ({action})"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{action}: permission denied"
    return f"{action}: {e.strerror or e}"


def display_path(path):
    """A path for people and JSON: bytes that are not UTF-8 as \\xNN escapes."""
    if path is None:
        return None
    return path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path


@attr.frozen
class ScanOptions:
    roots: tuple
    exclude: tuple = ()
    excluded_dirs: tuple = ()  # absolute paths never entered (the state dir)
    exclude_if_present: tuple = ()  # marker names: a directory holding one is left out
    exclude_caches: bool = True  # directories with a valid CACHEDIR.TAG are left out
    one_file_system: bool = False  # do not enter directories on another file system
    # Where the content of a file that never held still is kept as read
    # (the uploader reads its blobs from there); None: not kept.
    spool_dir: str | None = None
    tiny_max: int = 128
    chunk_threshold: int = 1024 * 1024
    params: chunker.ChunkParams = chunker.ChunkParams()


@attr.define
class ScanProgress:
    """
    Counters the API reads while the scan runs in its thread (plain
    attribute writes: a reader sees each value whole).  ``errors`` keeps
    the first MAX_ERRORS errors in full, ``error_count`` counts them all,
    so a tree of a million unreadable files costs no memory.
    """

    entries: int = 0
    files: int = 0
    bytes: int = 0
    bytes_hashed: int = 0
    excluded: int = 0
    current: bytes = b""  # the directory or file being scanned
    errors: list = attr.Factory(list)
    error_count: int = 0
    started: float = attr.Factory(time.time)
    stop_requested: bool = False  # set from another thread: the scan stops at the next entry

    def add_error(self, path, why):
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"path": display_path(path), "reason": why})

    def error_list(self):
        """The errors as a snapshot records them: a note says how many were left out."""
        if self.error_count <= len(self.errors):
            return list(self.errors)
        more = self.error_count - len(self.errors)
        return self.errors + [{"path": None, "reason": f"and {more} more errors"}]

    def restart(self):
        """The scan starts over (its previous logs were damaged)."""
        self.entries = self.files = self.bytes = self.bytes_hashed = self.excluded = 0
        self.current = b""
        self.errors = []
        self.error_count = 0


class ScanStopped(Exception):
    """The scan was asked to stop (the daemon is stopping); it resumes later."""


@attr.frozen
class NewBlob:
    """A blob the scanner read: where to read it again for upload."""

    hash: str
    size: int
    source_path: bytes
    source_offset: int
    mtime_ns: int


# The extended attributes a backup records: user data, security labels and
# capabilities, and the POSIX ACLs.  (trusted.* is root-only kernel
# business, and other system.* names are not attributes of the file.)
XATTR_PREFIXES = (
    b"user.", b"security.", b"system.posix_acl_access", b"system.posix_acl_default",
)
_NO_XATTRS = frozenset([errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA])


def read_xattrs(path):
    """
    ``(name bytes, value bytes)`` pairs of ``path`` (never followed), sorted
    by name; () if the file system has none.  Raises OSError for other
    failures.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return ()
        raise
    if not names:
        return ()
    pairs = []
    for name in names:
        raw = os.fsencode(name)
        if not raw.startswith(XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, raw, follow_symlinks=False)
        except OSError as e:
            if e.errno in _NO_XATTRS:
                continue  # removed since it was listed
            raise
        pairs.append((raw, value))
    pairs.sort()
    return tuple(pairs)


def find_holes(fd, size):
    """
    The holes of the open regular file ``fd`` of ``size`` bytes, as
    ``(offset, length)`` pairs; () if it has none, if the file system cannot
    tell, or if there are more than MAX_HOLES.  Leaves the offset at 0.
    """
    holes = []
    offset = 0
    try:
        while offset < size:
            hole = os.lseek(fd, offset, os.SEEK_HOLE)
            if hole >= size:
                break
            try:
                data = min(os.lseek(fd, hole, os.SEEK_DATA), size)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = size  # a hole up to the end
            if data <= hole:
                break
            holes.append((hole, data - hole))
            if len(holes) > MAX_HOLES:
                holes = []
                break
            offset = data
    except OSError:
        holes = []  # SEEK_HOLE not supported, or the file shrank: no holes recorded
    os.lseek(fd, 0, os.SEEK_SET)
    return tuple(holes)


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


_KINDS_BY_FMT = {
    stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFIFO: FIFO,
    stat.S_IFSOCK: SOCKET, stat.S_IFCHR: CHARDEV, stat.S_IFBLK: BLOCKDEV,
}


class _Previous:
    """
    The previous snapshot's entries, consumed in step with the walk.

    Every record the scan emits goes through ``emit``, in path order; the
    previous entries are merged with them.  For an incremental log
    (``incremental`` true) only what differs from the previous snapshot is
    passed on to ``out``: new and changed entries, and a ``Deletion`` for
    each previous entry the scan no longer has.  For a full log every entry
    is passed on.  ``find`` gives the previous entry at a path (the next
    one emitted) for change detection.
    """

    def __init__(self, entries, out, incremental=False):
        self._it = iter(entries or ())
        self._out = out
        self._incremental = incremental
        self._head = None
        self._key = None
        self._found = None
        self.unchanged = 0
        self.changed = 0
        self.deleted = 0
        self._advance()

    def _advance(self):
        self._head = head = next(self._it, None)
        self._key = path_key(head.path) if head is not None else None

    def _skip_to(self, key):
        """Pass the previous entries before ``key``: they are gone."""
        while self._head is not None and self._key < key:
            self.deleted += 1
            if self._incremental:
                self._out(Deletion(self._head.path))
            self._advance()

    def find(self, path):
        key = path_key(path)
        self._found = (path, key)
        self._skip_to(key)
        if self._head is not None and self._key == key:
            return self._head
        return None

    def emit(self, entry):
        path = entry.path
        found = self._found
        key = found[1] if found is not None and found[0] == path else path_key(path)
        self._found = None
        if self._key is not None and self._key < key:
            self._skip_to(key)
        if self._key == key:
            head = self._head
            same = head is entry or head == entry
            self._advance()
            if same:
                self.unchanged += 1
                if self._incremental:
                    return
            else:
                self.changed += 1
        else:
            self.changed += 1
        self._out(entry)

    def skip_done(self, key):
        """A resumed scan: the previous entries up to ``key`` were merged before."""
        while self._head is not None and self._key <= key:
            self._advance()

    def finish(self):
        """The scan is over: every previous entry left is gone."""
        while self._head is not None:
            self.deleted += 1
            if self._incremental:
                self._out(Deletion(self._head.path))
            self._advance()


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
    """
    One scan: walk, compare with ``previous`` entries (the previous
    snapshot's complete entries, in path order), emit records and blobs.

    ``emit_record`` gets every entry (a full log) or, with ``incremental``,
    only the entries that differ from ``previous`` and a ``Deletion`` for
    each previous path that is gone.
    """

    def __init__(self, options, previous, emit_record, emit_blob, progress, incremental=False,
                 resume_after=None, links=None, trust_ctime_before=0):
        self.options = options
        self.previous = _Previous(previous, emit_record, incremental)
        self.emit_entry = self.previous.emit
        self.emit_blob = emit_blob
        self.progress = progress
        self.names = _Names()
        # Entries of the previous snapshot whose ctime is older than this
        # (ns) were recorded by a scan that ran after they settled.
        self.trust_ctime_before = trust_ctime_before
        self.links = dict(links or {})  # (dev, ino) -> first path, for files with nlink > 1
        self.new_links = []  # links added since the caller last took them (checkpoints)
        # A resumed scan: every path up to this one was recorded before.
        self._resume = resume_after
        self._resume_key = path_key(resume_after) if resume_after is not None else None
        self.started_ns = time.time_ns()
        self.excluder = Excluder(ExcludeRules(
            patterns=tuple(options.exclude),
            if_present=tuple(options.exclude_if_present),
            exclude_caches=options.exclude_caches,
            one_file_system=options.one_file_system,
            excluded_dirs=tuple(options.excluded_dirs),
        ), options.roots)
        self._root_dev = None

    def error(self, path, why):
        self.progress.add_error(path, why)

    def run(self):
        if self._resume_key is not None:
            self.previous.skip_done(self._resume_key)
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
                self.error(root, reason(e, "cannot read"))
                continue
            self._root_dev = st.st_dev
            self.visit(root, st)
        self.previous.finish()

    def _resumed(self, path, st):
        """
        In a resumed scan, whether ``path`` was recorded before the
        checkpoint; a directory on the way to the checkpoint's path is
        entered (its entry is recorded, part of what is below it is not).
        """
        key = path_key(path)
        if key > self._resume_key:
            self._resume_key = None  # past the checkpoint: an ordinary scan from here
            return False
        prefix = path if path.endswith(b"/") else path + b"/"
        if stat.S_ISDIR(st.st_mode) and (
            self._resume == path or self._resume.startswith(prefix)
        ):
            try:
                with os.scandir(path) as it:
                    children = [(e.name, e) for e in it]
            except OSError as e:
                self.error(path, reason(e, "cannot list directory"))
                return True
            self.walk_children(path, children)
        return True

    def visit(self, path, st):
        if self._resume_key is not None and self._resumed(path, st):
            return
        self.progress.entries += 1
        kind = _KINDS_BY_FMT.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            self.error(path, "unknown file type")
            return
        prev = self.previous.find(path)
        same_inode = (
            prev is not None
            and prev.ino == st.st_ino
            and prev.ctime_ns == st.st_ctime_ns
            and prev.ctime_ns < self.trust_ctime_before
        )
        if same_inode:
            # Its status has not changed since a scan that saw it settled:
            # the extended attributes (and a symlink's target) are the same.
            xattrs = prev.xattrs
        else:
            try:
                xattrs = read_xattrs(path)
            except OSError as e:
                self.error(path, reason(e, "cannot read extended attributes"))
                xattrs = ()
        uid, gid = st.st_uid, st.st_gid
        user, group = self.names.user(uid), self.names.group(gid)
        mode = st.st_mode  # file type bits included, as docs/FORMAT.md says
        if (
            same_inode
            and prev.kind == kind
            and prev.mode == mode
            and prev.mtime_ns == st.st_mtime_ns
            and prev.uid == uid
            and prev.gid == gid
            and prev.user == user
            and prev.group == group
            and prev.dev == st.st_dev
        ):
            same = prev  # the very same entry, if the kind's own fields agree too
        else:
            same = None
        fields = dict(
            path=path, kind=kind, mode=mode, uid=uid, gid=gid, user=user, group=group,
            mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino, dev=st.st_dev,
        )
        if xattrs:
            fields["xattrs"] = xattrs
        if kind == FILE:
            self.visit_file(path, st, fields, prev, same)
        elif kind == DIR:
            self.visit_dir(path, st, fields, same)
        elif kind == SYMLINK:
            if same is not None:
                self.emit_entry(same)
                return
            try:
                target = os.readlink(path)
            except OSError as e:
                self.error(path, reason(e, "cannot read link"))
                return
            self.emit_entry(Entry(target=target, size=len(target), **fields))
        elif same is not None and same.rdev == st.st_rdev:
            self.emit_entry(same)
        elif kind in (CHARDEV, BLOCKDEV):
            self.emit_entry(Entry(rdev=st.st_rdev, **fields))
        else:
            self.emit_entry(Entry(**fields))

    def visit_dir(self, path, st, fields, same=None):
        """List the directory, decide whether it is left out, record it, recurse."""
        self.progress.current = path
        try:
            with os.scandir(path) as it:
                children = [(e.name, e) for e in it]
        except OSError as e:
            if self.excluder.dir_excluded(path, st, ()) is not None:
                return
            self.error(path, reason(e, "cannot list directory"))
            if e.errno != errno.ENOENT:
                self.emit_entry(Entry(**fields))  # the directory, without its contents
            return
        names = frozenset(name for name, _ in children) if self.excluder.needs_listing else ()
        if self.excluder.dir_excluded(path, st, names) is not None:
            self.progress.excluded += 1
            return
        self.emit_entry(same if same is not None and same.size == 0 else Entry(**fields))
        if self.excluder.one_file_system and st.st_dev != self._root_dev:
            return
        self.walk_children(path, children)

    def walk_children(self, path, children):
        children.sort(key=lambda c: c[0])
        prefix = path if path.endswith(b"/") else path + b"/"
        excluded = self.excluder.path_excluded
        progress = self.progress
        for name, entry in children:
            if progress.stop_requested:
                raise ScanStopped()
            child = prefix + name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if excluded(child, is_dir):
                self.progress.excluded += 1
                continue
            try:
                child_st = entry.stat(follow_symlinks=False)
            except OSError as e:
                self.error(child, reason(e, "cannot read"))
                continue
            self.visit(child, child_st)

    def visit_file(self, path, st, fields, prev, same):
        self.progress.files += 1
        self.progress.bytes += st.st_size
        if st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                self.emit_entry(Entry(size=st.st_size, target=first, **{**fields, "kind": HARDLINK}))
                return
        # Blobs go before their entry: a checkpoint taken after the entry
        # must have them queued (a resumed scan starts after the entry).
        if _unchanged(prev, st):
            offset = 0
            for h, size in prev.blobs:
                self.emit_blob(NewBlob(h, size, path, offset, st.st_mtime_ns))
                offset += size
            if st.st_nlink > 1:
                self._link(st, path)
            if same is not None:
                self.emit_entry(prev)  # the very same entry: nothing to build or compare
            else:
                self.emit_entry(attr.evolve(prev, **fields, size=st.st_size))
            return
        self.progress.current = path
        result = self.read_file(path, st)
        if result is None:
            return
        digest, final_st, flags, holes, spooled = result
        if final_st.st_mtime_ns > self.started_ns - RACY_WINDOW_NS:
            flags = flags + (RACY,)
        fields.update(mtime_ns=final_st.st_mtime_ns, ctime_ns=final_st.st_ctime_ns)
        blobs = tuple((c.hash, c.size) for c in digest.chunks)
        for c in digest.chunks:
            if spooled and c.hash in spooled:
                self.emit_blob(NewBlob(c.hash, c.size, spooled[c.hash], 0, final_st.st_mtime_ns))
            else:
                self.emit_blob(NewBlob(c.hash, c.size, path, c.offset, final_st.st_mtime_ns))
        if st.st_nlink > 1:
            self._link(st, path)  # only once its entry is certain: later names link to it
        self.emit_entry(Entry(
            size=digest.size, inline=digest.inline, blobs=blobs,
            sha256=digest.sha256, flags=flags, holes=holes, **fields,
        ))

    def _link(self, st, path):
        self.links[(st.st_dev, st.st_ino)] = path
        self.new_links.append((st.st_dev, st.st_ino, path))

    def _spooler(self, size):
        """
        A chunk sink that keeps the chunks of this read in the spool, and
        the map hash -> spool path it fills; (None, None) when there is no
        spool or not room enough for a copy of the file.
        """
        spool = self.options.spool_dir
        if not spool:
            return None, None
        try:
            os.makedirs(spool, exist_ok=True)
            fs = os.statvfs(spool)
        except OSError:
            return None, None
        if size > fs.f_bavail * fs.f_frsize // 2:
            return None, None
        kept = {}
        broken = []

        def sink(chunk_hash, data):
            if broken or chunk_hash in kept:
                return
            target = os.path.join(spool, chunk_hash)
            if not os.path.exists(target):
                tmp = f"{target}.{os.getpid()}.tmp"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, target)
                except OSError:
                    broken.append(True)
                    return
            kept[chunk_hash] = os.fsencode(target)

        def result():
            if broken:
                self._unspool(kept)  # a partial copy is no use
                return None
            return kept

        return sink, result

    def _unspool(self, kept):
        for target in (kept or {}).values():
            try:
                os.unlink(target)
            except OSError:
                pass

    def read_file(self, path, st):
        """
        Read a regular file, again if it changed meanwhile; None on error.
        Returns ``(digest, final stat, flags, holes, spooled)``: ``spooled``
        maps the chunk hashes of a file that never held still to copies of
        what was read (see ``ScanOptions.spool_dir``), else None.
        """
        for attempt in range(REREAD_ATTEMPTS):
            sink = kept = None
            if attempt == REREAD_ATTEMPTS - 1:
                # The last try of a file that changed under every read so
                # far: keep what is read, the file may never match it again.
                sink, kept = self._spooler(st.st_size)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                self.error(path, reason(e, "cannot open"))
                return None
            try:
                before = os.fstat(fd)
                if (
                    not stat.S_ISREG(before.st_mode)
                    or before.st_ino != st.st_ino
                    or before.st_dev != st.st_dev
                ):
                    self.error(path, "replaced by another file while scanned")
                    if kept is not None:
                        self._unspool(kept())
                    return None
                holes = ()
                if before.st_blocks * 512 < before.st_size:
                    holes = find_holes(fd, before.st_size)
                digest = chunker.digest_fd(
                    fd, self.options.tiny_max, self.options.chunk_threshold, self.options.params,
                    sink=sink,
                )
                after = os.fstat(fd)
            except OSError as e:
                self.error(path, reason(e, "cannot read"))
                if kept is not None:
                    self._unspool(kept())
                return None
            finally:
                os.close(fd)
            self.progress.bytes_hashed += digest.size
            if (
                before.st_size == after.st_size == digest.size
                and before.st_mtime_ns == after.st_mtime_ns
            ):
                if kept is not None:
                    self._unspool(kept())  # it held still after all
                return digest, after, (), holes, None
            st = after
        # Holes of a file that never held still are not worth recording.
        return digest, after, (POSSIBLY_INCONSISTENT,), (), kept() if kept is not None else None
