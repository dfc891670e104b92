"""
Writing restored entries under a target directory, safely.

Snapshot data is untrusted: every path is checked, and every directory on
the way is opened relative to its parent with ``O_NOFOLLOW``, so neither a
hostile log nor a symlink already in the target can make a write land
outside the target.  Files are written to a temporary name, synced, and
renamed into place; ``sync`` then syncs every directory the restore
changed, so that what a finished restore reports is on the disk.
Metadata goes on in the order that keeps it: lchown (root's chown clears
set-uid bits), chmod, extended attributes (ACLs are the
``system.posix_acl_*`` ones), utime; directories last.

Metadata never follows a link, since a user who can write in the target
could swap a name for a symlink between its creation and its chmod.
Regular files and directories get theirs through the descriptor they
were written or opened by (``O_NOFOLLOW``).  Everything else (symlinks,
FIFOs, device nodes) is opened again with ``O_PATH | O_NOFOLLOW``,
checked by ``fstat`` to be the kind just made, and changed through
``/proc/self/fd/N``, which names that very inode (``fchmod`` on an
``O_PATH`` descriptor fails); a mismatch is that entry's error.  Without
root the owner is not restored, so set-uid and set-gid bits are dropped
(they would hand the file to the daemon's user) and counted.
"""

import contextlib
import errno
import functools
import grp
import hashlib
import os
import pwd
import stat
import threading

from gridbackupd import crashpoints
from gridbackupd.format.logpaths import shown
from gridbackupd.model import BLOCKDEV, CHARDEV, FIFO, SOCKET

READ_BLOCK = 1024 * 1024


# Files being restored are written under this prefix and renamed into place.
TEMP_PREFIX = b".gridbackup-restore-"
TEMP_PREFIX_TEXT = TEMP_PREFIX.decode("ascii")


class UnsafePath(ValueError):
    """A path from a snapshot that must not be written."""


# Tests only: called as ``hook(dir_fd, name)`` between the creation of a
# symlink or special file and the setting of its metadata, the moment a
# hostile user would swap it.
_before_metadata = None

_SETID = stat.S_ISUID | stat.S_ISGID


def hash_file(fd, pieces=()):
    """
    Read an open file from its start to its end, once: ``(size, SHA-256 of
    the whole, (offset, size) of the first of ``pieces`` whose bytes do not
    match, or None)``.  ``pieces`` are ``(sha256, size)`` in file order (a
    file's blobs); a piece the file ends inside does not match.
    """
    whole = hashlib.sha256()
    pieces = list(pieces)
    bad = None
    index = piece_offset = size = 0
    piece = hashlib.sha256()

    def close_finished():
        nonlocal bad, index, piece_offset, piece
        while index < len(pieces) and size == piece_offset + pieces[index][1]:
            if bad is None and piece.hexdigest() != pieces[index][0]:
                bad = (piece_offset, pieces[index][1])
            piece_offset += pieces[index][1]
            index += 1
            piece = hashlib.sha256()

    close_finished()
    while data := os.pread(fd, READ_BLOCK, size):
        whole.update(data)
        view = memoryview(data)
        while len(view) and index < len(pieces):
            take = min(len(view), piece_offset + pieces[index][1] - size)
            piece.update(view[:take])
            view = view[take:]
            size += take
            close_finished()
        size += len(view)
    if bad is None and index < len(pieces):
        bad = (piece_offset, pieces[index][1])  # the file ends inside it
    return size, whole.hexdigest(), bad


class VerifyFailed(ValueError):
    """What was written does not read back as the snapshot's content."""


def _check_content(fd, entry):
    """Raise VerifyFailed unless the open file ``fd`` holds the entry's content, checked by its SHA-256s."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise VerifyFailed("is not a regular file")
    if entry.inline is not None:
        pieces = [(hashlib.sha256(entry.inline).hexdigest(), len(entry.inline))]
    else:
        pieces = entry.blobs
    size, whole, bad = hash_file(fd, pieces)
    expected = sum(n for _, n in pieces)
    if bad is not None and bad[0] + bad[1] <= size:
        raise VerifyFailed(f"bytes {bad[0]}-{bad[0] + bad[1]} do not match their SHA-256")
    if size < expected:
        raise VerifyFailed(f"is shorter than {entry.size} bytes")
    if size > expected:
        raise VerifyFailed(f"is longer than {entry.size} bytes")
    if entry.sha256 and whole != entry.sha256:
        raise VerifyFailed("does not match the SHA-256 of the whole file")


def components(path):
    """The components of an absolute snapshot path, refusing anything hostile."""
    if not isinstance(path, bytes) or not path.startswith(b"/") or b"\0" in path:
        raise UnsafePath(f"not an absolute path: {shown(path)}")
    parts = path.split(b"/")[1:]
    if parts == [b""]:
        return []
    for part in parts:
        if part in (b"", b".", b".."):
            raise UnsafePath(f"path has an empty, '.' or '..' component: {shown(path)}")
    return parts


@functools.lru_cache(maxsize=4096)
def _uid(user, uid):
    if user:
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            pass
    return uid


@functools.lru_cache(maxsize=4096)
def _gid(group, gid):
    if group:
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    return gid


_KIND_NAMES = {
    stat.S_IFLNK: "a symlink", stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class TargetWriter:
    """Creates entries under one target directory. Used from worker threads."""

    def __init__(self, target, overwrite=False):
        self._created_target = not os.path.isdir(target)
        os.makedirs(target, exist_ok=True)
        self.target = target
        self.overwrite = overwrite
        self.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = os.geteuid() == 0
        # (path, reason) of metadata that could not be set; the file stays.
        self.warnings = []
        self._warn_lock = threading.Lock()
        # Set-uid/set-gid bits not restored because the owner is not (``_mode``).
        self.setid_dropped = 0
        self._dir_fds = {}
        self._dir_lock = threading.Lock()
        self._swept = set()
        self._sweep_lock = threading.Lock()
        # The directories (component tuples) whose entries or metadata this
        # writer changed: ``sync`` makes them durable.
        self._touched = set()
        self._touched_lock = threading.Lock()

    def _touch(self, dirs):
        with self._touched_lock:
            self._touched.add(tuple(dirs))

    def _touch_parent(self, path):
        self._touch(components(path)[:-1])

    def sync(self):
        """
        fsync every directory this writer made or changed, deepest first, the
        target last (and the directory above it, if the target was made
        here): the renames and new entries in them survive a crash.
        """
        with self._touched_lock:
            touched = sorted(self._touched, key=len, reverse=True)
        for dirs in touched:
            if not dirs:
                continue
            with self.parent(b"/" + b"/".join(dirs), create=False) as (fd, name):
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        os.fsync(self.root_fd)
        if self._created_target:
            above = os.open(os.path.dirname(os.path.abspath(self.target)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(above)
            finally:
                os.close(above)

    def _warn(self, entry, reason):
        with self._warn_lock:
            self.warnings.append((entry.path, reason))

    def close(self):
        with self._dir_lock:
            for fd in self._dir_fds.values():
                os.close(fd)
            self._dir_fds.clear()
        os.close(self.root_fd)

    @contextlib.contextmanager
    def parent(self, path, create=True):
        """An fd of the directory that will hold ``path``, and the last name."""
        parts = components(path)
        if not parts:
            raise UnsafePath("the root itself has no parent")
        dirs = tuple(parts[:-1])
        fd, done = self._cached(dirs)
        try:
            for n in range(done, len(dirs)):
                part = dirs[n]
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        self._touch(dirs[:n])
                    except FileExistsError:
                        pass
                try:
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(
                            f"{shown(part)} in the target is not a directory (a symlink?)"
                        )
                    raise
                os.close(fd)
                fd = child
                self._remember(dirs[:n + 1], fd)
            if create:
                self._sweep(dirs, fd)
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _sweep(self, dirs, fd):
        """
        Once per directory: remove the temporary files a restore killed
        mid-way left there.  Under a lock, so that no thread of this restore
        creates its own temporary file in a directory being swept.
        """
        with self._sweep_lock:
            if dirs in self._swept:
                return
            for name in os.listdir(fd):
                if name.startswith(TEMP_PREFIX_TEXT):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=fd)
            self._swept.add(dirs)

    # Directories already opened (each checked on the way, O_NOFOLLOW from
    # the target down), so that a file deep in a tree costs one open, not
    # one per component.  Callers get a dup; the cache keeps its own fd.
    MAX_CACHED_DIRS = 256

    def _cached(self, dirs):
        """(a dup of the fd of the longest cached prefix of ``dirs``, its length)."""
        with self._dir_lock:
            for n in range(len(dirs), 0, -1):
                fd = self._dir_fds.get(dirs[:n])
                if fd is not None:
                    return os.dup(fd), n
            return os.dup(self.root_fd), 0

    def _remember(self, dirs, fd):
        with self._dir_lock:
            if dirs in self._dir_fds:
                return
            if len(self._dir_fds) >= self.MAX_CACHED_DIRS:
                for cached in self._dir_fds.values():
                    os.close(cached)
                self._dir_fds.clear()
            self._dir_fds[dirs] = os.dup(fd)

    def matches(self, entry):
        """
        Whether the target already holds this regular file as the snapshot
        has it: same size and mtime, and content that matches its SHA-256s.
        Size and time alone would take a file a crash left torn (or one
        changed since, its time put back) for restored.
        """
        try:
            with self.parent(entry.path, create=False) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not (stat.S_ISREG(st.st_mode) and st.st_size == entry.size
                        and st.st_mtime_ns == entry.mtime_ns):
                    return False
                ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                try:
                    _check_content(ffd, entry)
                finally:
                    os.close(ffd)
        except (OSError, UnsafePath, VerifyFailed):
            return False
        return True

    def _exists(self, fd, name):
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def _set_xattrs(self, target, entry, follow):
        for name, value in entry.xattrs:
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as e:
                # Without root, trusted.* and security.* cannot be set; a
                # file system without xattrs refuses them all.  The file
                # itself is still restored: say what is missing.
                self._warn(entry, f"extended attribute {shown(name)} not set: {e.strerror}")

    def _mode(self, entry):
        """
        The permission bits to set.  Without the owner restored, set-uid and
        set-gid bits of anything but a directory are dropped (and counted):
        they would make the file run as the daemon's user.  A directory's
        set-gid bit only passes its group on to new entries.
        """
        mode = stat.S_IMODE(entry.mode)
        if mode & _SETID and not self.as_root and not stat.S_ISDIR(entry.mode):
            mode &= ~_SETID
            with self._warn_lock:
                self.setid_dropped += 1
        return mode

    def _set_metadata_fd(self, fd, entry):
        """Metadata of an open regular file or directory."""
        if self.as_root:
            os.chown(fd, _uid(entry.user, entry.uid), _gid(entry.group, entry.gid))
        os.chmod(fd, self._mode(entry))
        if entry.xattrs:
            self._set_xattrs(fd, entry, True)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _set_metadata(self, fd, name, entry, file_type):
        """
        Metadata of the symlink or special file just made as ``name`` under
        ``fd``: opened ``O_PATH | O_NOFOLLOW`` and checked to be of
        ``file_type`` (an ``S_IFMT`` value), then changed through
        ``/proc/self/fd/N``, which never leads past that inode.  A symlink
        gets no chmod (Linux has no modes for them).  Raises when the
        name no longer holds what was made (UnsafePath): nothing is followed.
        """
        if _before_metadata is not None:
            _before_metadata(fd, name)
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            found = stat.S_IFMT(os.fstat(pfd).st_mode)
            if found != file_type:
                raise UnsafePath("changed while being restored (now "
                                 f"{_KIND_NAMES.get(found, 'another kind')}): its metadata was not set")
            proc = "/proc/self/fd/%d" % pfd
            if self.as_root:
                os.chown(proc, _uid(entry.user, entry.uid), _gid(entry.group, entry.gid))
            if file_type != stat.S_IFLNK:
                os.chmod(proc, self._mode(entry))
            if entry.xattrs:
                self._set_xattrs(proc, entry, True)
            os.utime(proc, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(pfd)

    def make_dir(self, entry):
        """Create a directory (its metadata comes later, in ``finish_dir``)."""
        if entry.path == b"/":
            return
        with self.parent(entry.path) as (fd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
                self._touch_parent(entry.path)
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafePath(f"{shown(entry.path)} exists and is not a directory")

    def finish_dir(self, entry):
        if entry.path == b"/":
            return
        with self.parent(entry.path, create=False) as (fd, name):
            dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            try:
                self._set_metadata_fd(dfd, entry)
                self._touch(components(entry.path))
            finally:
                os.close(dfd)

    def verify_file(self, entry):
        """
        Read a restored regular file back and check it against the entry:
        each blob's SHA-256 at its offset, the whole file's SHA-256 when the
        log has it, the inline content.  Raises VerifyFailed.
        """
        with self.parent(entry.path, create=False) as (fd, name):
            ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=fd)
            try:
                _check_content(ffd, entry)
            finally:
                os.close(ffd)

    def open_file(self, entry):
        """
        Start writing a regular file: returns (parent fd, name, tmp name, file
        fd), or None when it exists and overwrite is off.
        """
        ctx = self.parent(entry.path)
        fd, name = ctx.__enter__()
        try:
            if not self.overwrite and self._exists(fd, name):
                ctx.__exit__(None, None, None)
                return None
            tmp = TEMP_PREFIX + os.urandom(6).hex().encode() + b"-" + name[:64]
            file_fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600, dir_fd=fd,
            )
            return _OpenFile(self, ctx, fd, name, tmp, file_fd, entry)
        except BaseException:
            ctx.__exit__(None, None, None)
            raise

    def make_symlink(self, entry):
        with self.parent(entry.path) as (fd, name):
            if self._exists(fd, name):
                if not self.overwrite:
                    return False
                os.unlink(name, dir_fd=fd)
            os.symlink(entry.target, name, dir_fd=fd)
            self._touch_parent(entry.path)
            self._set_metadata(fd, name, entry, stat.S_IFLNK)
            return True

    def make_hardlink(self, entry):
        with self.parent(entry.target, create=False) as (src_fd, src_name):
            with self.parent(entry.path) as (fd, name):
                if self._exists(fd, name):
                    if not self.overwrite:
                        return False
                    os.unlink(name, dir_fd=fd)
                os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
                self._touch_parent(entry.path)
                return True

    def make_special(self, entry):
        """A FIFO or device node (devices need root).  Sockets are not
        restored: the program that serves one makes it again."""
        if entry.kind == SOCKET:
            return False
        if entry.kind in (CHARDEV, BLOCKDEV) and not self.as_root:
            raise OSError(errno.EPERM, "device nodes are restored only when running as root")
        with self.parent(entry.path) as (fd, name):
            if self._exists(fd, name):
                if not self.overwrite:
                    return False
                os.unlink(name, dir_fd=fd)
            kinds = {FIFO: stat.S_IFIFO, CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}
            # Made owner-only; its mode comes with the rest of its metadata.
            if entry.kind == FIFO:
                os.mkfifo(name, 0o600, dir_fd=fd)
            else:
                os.mknod(name, kinds[entry.kind] | 0o600, entry.rdev, dir_fd=fd)
            self._touch_parent(entry.path)
            self._set_metadata(fd, name, entry, kinds[entry.kind])
            return True


class _OpenFile:
    """A regular file being restored: write at offsets, then commit or abort."""

    def __init__(self, writer, ctx, dir_fd, name, tmp, fd, entry):
        self.writer = writer
        self.ctx = ctx
        self.dir_fd = dir_fd
        self.name = name
        self.tmp = tmp
        self.fd = fd
        self.entry = entry

    def write(self, offset, data):
        """Write ``data`` at ``offset``; the entry's holes are left unwritten (where
        the data is zeros there, as it must be), so they stay holes."""
        holes = getattr(self.entry, "holes", ())
        if not holes:
            return self._pwrite(offset, data)
        view = memoryview(data)
        end = offset + len(view)
        start = offset
        for hole_start, hole_length in holes:
            hole_end = hole_start + hole_length
            if hole_end <= start or hole_start >= end:
                continue
            a, b = max(hole_start, start), min(hole_end, end)
            gap = view[a - offset:b - offset]
            if gap.tobytes().count(0) != len(gap):
                continue  # not zeros: write it as data
            self._pwrite(start, view[start - offset:a - offset])
            start = b
        self._pwrite(start, view[start - offset:])

    def _pwrite(self, offset, data):
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
        crashpoints.reached("restore.mid_file")

    def commit(self):
        try:
            os.ftruncate(self.fd, self.entry.size)
            self.writer._set_metadata_fd(self.fd, self.entry)
            # Its content and metadata on the disk before its name points
            # at it; the directory is synced with the others (``sync``).
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            crashpoints.reached("restore.before_rename")
            os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self.writer._touch_parent(self.entry.path)
            crashpoints.reached("restore.after_rename")
        finally:
            self._close()

    def abort(self):
        try:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp, dir_fd=self.dir_fd)
        finally:
            self._close()

    def _close(self):
        if self.ctx is not None:
            ctx, self.ctx = self.ctx, None
            ctx.__exit__(None, None, None)
