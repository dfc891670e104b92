"""
The daemon's own FUSE mounts (``gridbackup mount``), which a scan never
enters: backing up a mounted snapshot would store the backup inside the
backup, and reading it goes through the grid.

They are found in the mount table, ``/proc/self/mountinfo`` (Linux), by
their file system type ``fuse.gridbackup``; each is known by its mount
point and by its device number, which the table gives too (field 3,
``major:minor``), so nothing on the mount is looked at to find it.  Where
there is no such table there are no such mounts to find.
"""

import os

MOUNTINFO = "/proc/self/mountinfo"
FS_TYPE = b"fuse.gridbackup"


def read_mount_table():
    """The mount table's bytes, or b"" where there is none (a test replaces this)."""
    try:
        with open(MOUNTINFO, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _unescape(field):
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and len(field) >= i + 4 and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8) & 0xFF)
            i += 4
        else:
            out += field[i:i + 1]
            i += 1
    return bytes(out)


def gridbackup_mounts(table=None):
    """``[(mount point bytes, st_dev)]`` of the mounts whose type is ``fuse.gridbackup``."""
    if table is None:
        table = read_mount_table()
    found = []
    for line in table.splitlines():
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            if fields[sep + 1] != FS_TYPE:
                continue
            major, minor = fields[2].split(b":")
            found.append((os.path.normpath(_unescape(fields[4])), os.makedev(int(major), int(minor))))
        except (ValueError, IndexError):
            continue  # not a line of the table's format
    return found
