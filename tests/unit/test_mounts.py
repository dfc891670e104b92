"""
Scans never enter the daemon's own FUSE mounts (``fuse.gridbackup`` in
the mount table), found by mount point and by device; the mount table
reader is faked here (the ``mount`` tests mount one for real).
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.scan import mounts
from gridbackupd.scan.values import ScanOptions, ScanProgress
from gridbackupd.scan.walker import Scanner


def line(point, dev, fstype=b"fuse.gridbackup"):
    major, minor = os.major(dev), os.minor(dev)
    return (b"412 30 %d:%d / %s rw,nosuid,nodev,relatime shared:1 - %s gridbackup rw,user_id=0\n"
            % (major, minor, point, fstype))


class MountTableTests(SynchronousTestCase):
    def test_parse(self):
        table = (b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                 + line(b"/mnt/snap\\040shots", os.makedev(0, 57))
                 + line(b"/mnt/other", os.makedev(0, 58), b"fuse.sshfs")
                 + b"garbage\n")
        self.assertEqual(mounts.gridbackup_mounts(table), [(b"/mnt/snap shots", os.makedev(0, 57))])

    def test_no_table(self):
        self.patch(mounts, "MOUNTINFO", "/nonexistent/mountinfo")
        self.assertEqual(mounts.gridbackup_mounts(), [])


class ScanLeavesMountsOutTests(SynchronousTestCase):
    def setUp(self):
        self.tree = os.path.abspath(self.mktemp()).encode()
        for d in (b"keep", b"snapshots/inside"):
            os.makedirs(os.path.join(self.tree, d))
        with open(os.path.join(self.tree, b"snapshots", b"inside", b"f"), "wb") as f:
            f.write(b"x")

    def scan(self, table):
        self.patch(mounts, "read_mount_table", lambda: table)
        paths = []
        progress = ScanProgress()
        Scanner(ScanOptions(roots=(self.tree,)), None, lambda e: paths.append(e.path),
                lambda b: None, progress).run()
        return [p[len(self.tree):] for p in paths], progress

    def test_by_mount_point(self):
        point = os.path.join(self.tree, b"snapshots")
        paths, progress = self.scan(line(point, os.makedev(0, 4242)))
        self.assertEqual(paths, [b"", b"/keep"])
        self.assertEqual(progress.excluded, 1)

    def test_by_device(self):
        # A root on such a mount (its device is the mount's) is left out whole.
        dev = os.stat(self.tree).st_dev
        paths, _ = self.scan(line(b"/somewhere/else", dev))
        self.assertEqual(paths, [])

    def test_other_fuse_mounts_are_scanned(self):
        point = os.path.join(self.tree, b"snapshots")
        paths, _ = self.scan(line(point, os.makedev(0, 4242), b"fuse.sshfs"))
        self.assertEqual(paths, [b"", b"/keep", b"/snapshots", b"/snapshots/inside", b"/snapshots/inside/f"])
