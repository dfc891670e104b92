"""
What the scanner records about an entry besides its content: the file
kind, user and group names, extended attributes, the holes of a sparse
file; and the words an error is reported in.
"""

import errno
import grp
import os
import pwd
import stat

from gridbackupd.format.logfields import MAX_HOLES
from gridbackupd.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK


def reason(e, action):
    """Why ``action`` failed, in words a person acts on."""
    if e.errno == errno.ENOENT:
        return "vanished while scanned"
    if e.errno == errno.ELOOP:
        # Only an open with O_NOFOLLOW gives it: the entry became a link.
        return "replaced by a symbolic link while scanned"
    if e.errno == errno.ENOTDIR:
        return "replaced by another file while scanned"
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


class Names:
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


KINDS_BY_FMT = {
    stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFIFO: FIFO,
    stat.S_IFSOCK: SOCKET, stat.S_IFCHR: CHARDEV, stat.S_IFBLK: BLOCKDEV,
}
