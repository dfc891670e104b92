"""
The set-up walk: a watch on every directory a scan would enter.

It runs in a worker thread (100,000 directories take seconds) and counts
as it goes, so status can show the progress.  Each directory is watched
before it is listed, so an entry made after the listing raises an event.
The scan's exclusion rules (``scan.excludes``) decide which directories are
left out, so excluded paths and the state directory raise no events.
"""

import errno
import os
import re
import stat

from gridbackupd.scan.excludes import Excluder, ExcludeRules

#: File systems whose changes made elsewhere (another client, the server)
#: raise no inotify event here.
EVENTLESS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "davfs", "ncpfs",
    "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.gridbackup",
})


class WatchLimit(Exception):
    """The kernel refused a watch for want of watches (ENOSPC)."""


def excluder_for(backup, state_root):
    """The scan's exclusion rules for ``[backup]``, with the state directory left out."""
    return Excluder(ExcludeRules(
        patterns=tuple(backup.exclude),
        if_present=tuple(backup.exclude_if_present),
        exclude_caches=backup.exclude_caches,
        one_file_system=backup.one_file_system,
        excluded_dirs=(state_root,),
    ), backup.paths)


def excluded(excluder, path):
    """Whether an event at ``path`` (bytes) is in an excluded place (by pattern or the state directory)."""
    probe = path
    while True:
        if excluder.path_excluded(probe, True):
            return True
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent


class Progress:
    """Directories watched so far by a walk (read from the reactor thread while it runs)."""

    def __init__(self):
        self.directories = 0
        self.stop = False  # set when the daemon stops: the walk ends early


def watch_tree(backend, top, excluder, progress, root_dev=None):
    """
    Watch ``top`` (bytes) and every directory below it that a scan would
    enter, through ``backend.add(path)``; return the list of directories watched.
    Raises WatchLimit when the kernel has no watch left.  Directories that
    vanish or cannot be read are skipped (the scan reports them).
    """
    watched: list[bytes] = []
    stack = [top]
    while stack and not progress.stop:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or excluder.path_excluded(path, True):
            continue
        if root_dev is None:
            root_dev = st.st_dev
        elif excluder.one_file_system and st.st_dev != root_dev:
            continue  # recorded by the scan, not entered
        try:
            backend.add(path)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise WatchLimit(len(watched)) from None
            continue
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            watched.append(path)
            progress.directories += 1
            continue
        names = [e.name for e in entries]
        if excluder.dir_excluded(path, st, names) is not None:
            backend.remove_tree(path)
            continue
        watched.append(path)
        progress.directories += 1
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            stack.append(entry.path)
    return watched


def _unescape(field):
    """A mountinfo field: spaces, tabs, newlines and backslashes are written as octal escapes."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def mounts(data):
    """``[(mount point bytes, fs type)]`` of /proc/self/mountinfo's ``data`` (bytes)."""
    found = []
    for line in data.splitlines():
        fields = line.split(b" ")
        if b" - " not in line or len(fields) < 5:
            continue
        fstype = line.split(b" - ", 1)[1].split(b" ")[0].decode("ascii", "replace")
        found.append((_unescape(fields[4]), fstype))
    return found


def eventless(roots, mount_list, one_file_system=False):
    """The ``(mount point, type)`` of event-less file systems holding or under a root."""
    bad = []
    for root in roots:
        holder = None
        for point, fstype in mount_list:
            if root == point or root.startswith(point.rstrip(b"/") + b"/"):
                if holder is None or len(point) >= len(holder[0]):
                    holder = (point, fstype)
            elif not one_file_system and point.startswith(root.rstrip(b"/") + b"/"):
                if fstype in EVENTLESS:
                    bad.append((point, fstype))
        if holder is not None and holder[1] in EVENTLESS:
            bad.append(holder)
    return sorted(set(bad))


def read_mounts():
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return mounts(f.read())
    except OSError:
        return []
