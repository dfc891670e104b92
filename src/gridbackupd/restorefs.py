"""
Writing restored entries under a target directory, safely.

Snapshot data is untrusted: every path is checked, and every directory on
the way is opened relative to its parent with ``O_NOFOLLOW``, so neither a
hostile log nor a symlink already in the target can make a write land
outside the target.  Files are written to a temporary name and renamed
into place.  Metadata goes on in the order that keeps it: lchown (root's
chown clears set-uid bits), chmod, utime; directories last.
"""

import contextlib
import errno
import grp
import os
import pwd
import stat

from .model import BLOCKDEV, CHARDEV, FIFO


class UnsafePath(ValueError):
    """A path from a snapshot that must not be written."""


def components(path):
    """The components of an absolute snapshot path, refusing anything hostile."""
    if not isinstance(path, bytes) or not path.startswith(b"/") or b"\0" in path:
        raise UnsafePath(f"not an absolute path: {path!r}")
    parts = path.split(b"/")[1:]
    if parts == [b""]:
        return []
    for part in parts:
        if part in (b"", b".", b".."):
            raise UnsafePath(f"path has an empty, '.' or '..' component: {path!r}")
    return parts


def _uid(user, uid):
    if user:
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            pass
    return uid


def _gid(group, gid):
    if group:
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    return gid


class TargetWriter:
    """Creates entries under one target directory. Used from worker threads."""

    def __init__(self, target, overwrite=False):
        os.makedirs(target, exist_ok=True)
        self.target = target
        self.overwrite = overwrite
        self.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = os.geteuid() == 0

    def close(self):
        os.close(self.root_fd)

    @contextlib.contextmanager
    def parent(self, path, create=True):
        """An fd of the directory that will hold ``path``, and the last name."""
        parts = components(path)
        if not parts:
            raise UnsafePath("the root itself has no parent")
        fd = os.dup(self.root_fd)
        try:
            for part in parts[:-1]:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath(
                            f"{os.fsdecode(part)!r} in the target is not a directory (a symlink?)"
                        )
                    raise
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _exists(self, fd, name):
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def _set_metadata(self, fd, name, entry, is_link=False):
        if self.as_root:
            os.chown(name, _uid(entry.user, entry.uid), _gid(entry.group, entry.gid),
                     dir_fd=fd, follow_symlinks=False)
        if not is_link:
            os.chmod(name, entry.mode, dir_fd=fd)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def make_dir(self, entry):
        """Create a directory (its metadata comes later, in ``finish_dir``)."""
        if entry.path == b"/":
            return
        with self.parent(entry.path) as (fd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafePath(f"{os.fsdecode(entry.path)!r} exists and is not a directory")

    def finish_dir(self, entry):
        if entry.path == b"/":
            return
        with self.parent(entry.path, create=False) as (fd, name):
            self._set_metadata(fd, name, entry)

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
            tmp = b".gridbackup-restore-" + os.urandom(6).hex().encode() + b"-" + name[:64]
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
            self._set_metadata(fd, name, entry, is_link=True)
            return True

    def make_hardlink(self, entry):
        with self.parent(entry.target, create=False) as (src_fd, src_name):
            with self.parent(entry.path) as (fd, name):
                if self._exists(fd, name):
                    if not self.overwrite:
                        return False
                    os.unlink(name, dir_fd=fd)
                os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
                return True

    def make_special(self, entry):
        with self.parent(entry.path) as (fd, name):
            if self._exists(fd, name):
                if not self.overwrite:
                    return False
                os.unlink(name, dir_fd=fd)
            kinds = {FIFO: stat.S_IFIFO, CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}
            if entry.kind == FIFO:
                os.mkfifo(name, entry.mode, dir_fd=fd)
            else:
                os.mknod(name, kinds[entry.kind] | entry.mode, entry.rdev, dir_fd=fd)
            self._set_metadata(fd, name, entry)
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
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def commit(self):
        try:
            os.ftruncate(self.fd, self.entry.size)
            os.close(self.fd)
            self.fd = None
            self.writer._set_metadata(self.dir_fd, self.tmp, self.entry)
            os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
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
