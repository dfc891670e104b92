"""
The walk: visit the configured roots, describe every entry, read only
what changed since the previous snapshot, and hand the uploader its blobs.

``Scanner.run`` is synchronous and runs in a worker thread of the daemon's
own pool; it never touches the reactor.  It walks each directory's children
in bytewise name order, depth first, which is exactly the order of backup
logs, so the previous snapshot is compared by a streaming merge
(``compare``) and never loaded whole.  What an entry records is in
``metadata``, reading a changed file in ``reader``, exclusions in
``excludes``; checkpoints and resuming in ``tolog`` and ``checkpoints``.

The walk goes by directory file descriptor, never by path: each root's
parent is opened by its configured path, and every component below it with
``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's descriptor, then
checked against the (device, inode) its listing gave.  A directory swapped
for a symbolic link while the scan runs (to /dev, to the state directory)
is an error for that entry, never followed: the daemon runs as root.

Errors (an unreadable file, one that vanished, a path too long) are
recorded in ``ScanProgress`` and the scan goes on.
"""

import errno
import os
import stat
import time

import attr

from gridbackupd.format.logpaths import path_key
from gridbackupd.model import BLOCKDEV, CHARDEV, DIR, FILE, HARDLINK, RACY, SYMLINK, Entry
from gridbackupd.scan.compare import Previous, unchanged
from gridbackupd.scan.excludes import Excluder, ExcludeRules
from gridbackupd.scan.metadata import KINDS_BY_FMT, Names, read_xattrs, reason
from gridbackupd.scan.reader import FileReader
from gridbackupd.scan.values import NewBlob, ScanStopped

# Paths this long cannot be restored by path nor shown whole: an error, as
# they were when the walk went by path.
PATH_MAX = 4096

# The walk holds one descriptor per directory above the one it lists: a
# deeper directory is recorded without its contents, so that a hostile tree
# cannot use up the daemon's descriptors (a soft limit is often 1024).
MAX_DEPTH = 256

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Where a name relative to an open directory can be given to calls that
# take no dir_fd (extended attributes): the kernel resolves the descriptor,
# then the name, whose last component is not followed.
_PROC_FD = b"/proc/self/fd/%d/%s"

# A test hook: called with a directory's path after its lstat and before
# it is opened for listing (a test swaps or renames it there).
before_opening_dir = None

# A file whose mtime is this close to the time it was read may change again
# within the same timestamp tick: read it again on the next scan.
RACY_WINDOW_NS = 1_000_000_000


# A configured path that is not there, not a file that went away during the scan.
MISSING_ROOT = "does not exist (a path of [backup] paths)"


class Scanner:
    """
    One scan: walk, compare with ``previous`` entries (the previous
    snapshot's complete entries, in path order), emit records and blobs.

    ``emit_record`` gets every entry (a full log) or, with ``incremental``,
    only the entries that differ from ``previous`` and a ``Deletion`` for
    each previous path that is gone.  ``changes`` counts the differences
    (see ``compare.Previous``).
    """

    def __init__(self, options, previous, emit_record, emit_blob, progress, incremental=False,
                 resume_after=None, links=None, trust_ctime_before=0, changes=None,
                 previous_committed=False, parent_totals=None):
        self.options = options
        # Every blob of ``previous`` is committed (its snapshot is complete):
        # an unchanged file's blobs need not be queued, nor looked up.
        self.previous_committed = previous_committed
        self.previous = Previous(previous, emit_record, incremental, changes, parent_totals)
        self.emit_entry = self.previous.emit
        self.emit_blob = emit_blob
        self.progress = progress
        self.names = Names()
        self.reader = FileReader(options, progress, self.error)
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
        self._base = 0  # bytes of the current root's path opened by path (its parent)
        self._proc = os.path.isdir(b"/proc/self/fd")
        self._depth = 0  # directories open above the one being listed

    def error(self, path, why):
        self.progress.add_error(path, why)

    def run(self):
        if self._resume_key is not None:
            self.previous.skip_done(self._resume_key)
        roots = sorted({os.fsencode(os.path.normpath(r)) for r in self.options.roots}, key=path_key)
        kept: list[bytes] = []
        for root in roots:
            # A root inside another root is already covered by the walk.
            if any(root.startswith(k.rstrip(b"/") + b"/") for k in kept):
                continue
            kept.append(root)
        for root in kept:
            # The root's parent is opened by its path, as configured; the
            # root itself, like every entry below it, is never followed.
            parent, name = os.path.split(root)
            if not name:
                parent, name = root, b"."  # the root is "/"
            parent_fd = None
            try:
                parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                self.error(root, MISSING_ROOT)
            except OSError as e:
                self.error(root, reason(e, "cannot read"))
            else:
                self._root_dev = st.st_dev
                self._base = len(parent)
                self.visit(root, st, parent_fd, name)
            finally:
                if parent_fd is not None:
                    os.close(parent_fd)
        self.previous.finish()

    def _at(self, dir_fd, name, path):
        """A path for ``name`` in the open directory ``dir_fd``, for calls without dir_fd."""
        return _PROC_FD % (dir_fd, name) if self._proc else path

    def _open_dir(self, path, st, dir_fd, name):
        """
        The directory ``name`` in ``dir_fd`` opened for listing; OSError
        if it is no longer the directory ``st`` describes.
        """
        if before_opening_dir is not None:
            before_opening_dir(path)
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        try:
            now = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise OSError(errno.ENOTDIR, "replaced by another file")
        return fd

    def _list(self, fd):
        """The entries of the open directory ``fd``: (name bytes, DirEntry), unsorted."""
        with os.scandir(fd) as it:
            return [(os.fsencode(e.name), e) for e in it]

    def _resumed(self, path, st, dir_fd, name):
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
                fd = self._open_dir(path, st, dir_fd, name)
            except OSError as e:
                self.error(path, reason(e, "cannot list directory"))
                return True
            try:
                try:
                    children = self._list(fd)
                except OSError as e:
                    self.error(path, reason(e, "cannot list directory"))
                    return True
                self.walk_children(path, children, fd)
            finally:
                os.close(fd)
        return True

    def visit(self, path, st, dir_fd, name):
        """Record the entry ``name`` of the open directory ``dir_fd`` (``st`` its lstat)."""
        if self._resume_key is not None and self._resumed(path, st, dir_fd, name):
            return
        self.progress.entries += 1
        self.progress.visited += 1
        kind = KINDS_BY_FMT.get(stat.S_IFMT(st.st_mode))
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
                xattrs = read_xattrs(self._at(dir_fd, name, path))
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
            self.visit_file(path, st, fields, prev, same, dir_fd, name)
        elif kind == DIR:
            self.visit_dir(path, st, fields, same, dir_fd, name)
        elif kind == SYMLINK:
            if same is not None:
                self.emit_entry(same)
                return
            try:
                target = os.readlink(name, dir_fd=dir_fd)
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

    def visit_dir(self, path, st, fields, same, dir_fd, name):
        """List the directory, decide whether it is left out, record it, recurse."""
        self.progress.current = path
        if self._depth >= MAX_DEPTH:
            self.error(path, f"too deep to list (more than {MAX_DEPTH} directories below the root)")
            self.emit_entry(Entry(**fields))  # the directory, without its contents
            return
        try:
            fd = self._open_dir(path, st, dir_fd, name)
        except OSError as e:
            self._unlistable(path, st, fields, e)
            return
        try:
            try:
                children = self._list(fd)
            except OSError as e:
                self._unlistable(path, st, fields, e)
                return
            names = frozenset(n for n, _ in children) if self.excluder.needs_listing else ()
            # The excluder reads a CACHEDIR.TAG by path: give it this very directory's.
            if self.excluder.dir_excluded(self._at(fd, b"", path), st, names) is not None:
                self.progress.excluded += 1
                return
            self.emit_entry(same if same is not None and same.size == 0 else Entry(**fields))
            if self.excluder.one_file_system and st.st_dev != self._root_dev:
                return
            self.walk_children(path, children, fd)
        finally:
            os.close(fd)

    def _unlistable(self, path, st, fields, e):
        if self.excluder.dir_excluded(path, st, ()) is not None:
            return
        self.error(path, reason(e, "cannot list directory"))
        if e.errno != errno.ENOENT:
            self.emit_entry(Entry(**fields))  # the directory, without its contents

    def walk_children(self, path, children, dir_fd):
        """Visit the listed ``children`` of the directory ``path``, open as ``dir_fd``."""
        self._depth += 1
        try:
            self._walk_children(path, children, dir_fd)
        finally:
            self._depth -= 1

    def _walk_children(self, path, children, dir_fd):
        children.sort(key=lambda c: c[0])
        prefix = path if path.endswith(b"/") else path + b"/"
        excluded = self.excluder.path_excluded
        progress = self.progress
        for name, entry in children:
            if progress.stop_requested:
                raise ScanStopped()
            child = prefix + name
            if len(child) >= PATH_MAX:
                self.error(child, "path too long (cannot read)")
                continue
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
            self.visit(child, child_st, dir_fd, name)

    def visit_file(self, path, st, fields, prev, same, dir_fd, name):
        self.progress.files += 1
        self.progress.bytes += st.st_size
        if st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                self.emit_entry(Entry(size=st.st_size, target=first, **{**fields, "kind": HARDLINK}))
                return
        # Blobs go before their entry: a checkpoint taken after the entry
        # must have them queued (a resumed scan starts after the entry).
        if unchanged(prev, st):
            if not self.previous_committed:
                offset = 0
                dev, ino, base = st.st_dev, st.st_ino, self._base
                for h, size in prev.blobs:
                    self.emit_blob(NewBlob(h, size, path, offset, st.st_mtime_ns, dev, ino, base))
                    offset += size
            if st.st_nlink > 1:
                self._link(st, path)
            if same is not None:
                self.emit_entry(prev)  # the very same entry: nothing to build or compare
            else:
                self.emit_entry(attr.evolve(prev, **fields, size=st.st_size))
            return
        self.progress.current = path
        result = self.reader.read(path, st, dir_fd, name)
        if result is None:
            return
        digest, final_st, flags, holes, spooled = result
        if final_st.st_mtime_ns > self.started_ns - RACY_WINDOW_NS:
            flags = flags + (RACY,)
        fields.update(mtime_ns=final_st.st_mtime_ns, ctime_ns=final_st.st_ctime_ns)
        blobs = tuple((c.hash, c.size) for c in digest.chunks)
        mtime_ns, dev, ino = final_st.st_mtime_ns, final_st.st_dev, final_st.st_ino
        for c in digest.chunks:
            if spooled and c.hash in spooled:
                copy, copy_dev, copy_ino, copy_base = spooled[c.hash]
                self.emit_blob(NewBlob(c.hash, c.size, copy, 0, mtime_ns, copy_dev, copy_ino,
                                       copy_base))
            else:
                self.emit_blob(NewBlob(c.hash, c.size, path, c.offset, mtime_ns, dev, ino,
                                       self._base))
        if st.st_nlink > 1:
            self._link(st, path)  # only once its entry is certain: later names link to it
        self.emit_entry(Entry(
            size=digest.size, inline=digest.inline, blobs=blobs,
            sha256=digest.sha256, flags=flags, holes=holes, **fields,
        ))

    def _link(self, st, path):
        self.links[(st.st_dev, st.st_ino)] = path
        self.new_links.append((st.st_dev, st.st_ino, path))
