"""
``gridbackup mount`` for real: a daemon on the shared grid backs up a tree,
indexes the snapshot, and the mount process (real FUSE, libfuse 3) shows it.
The whole tree is compared with the source; a damaged blob reads as EIO;
SIGINT unmounts; the mount goes on across a daemon restart.

Every test has its own time-out, every wait on the mount process a
deadline, and the cleanup runs ``fusermount3 -uz``, so that a dead mount
cannot hang the run.  Skipped where /dev/fuse is absent.
"""

import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

from twisted.internet.threads import deferToThread

from gridbackupd.state import mountindex
from tests.support.daemoncase import DaemonTestCase
from tests.support.gridshares import corrupt_shares
from tests.support.sharedgrid import shared_grid

READY_WITHIN = 10.0


def fuse_missing():
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent: no FUSE on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing: make install installs the fuse3 package"
    return None


def wait_until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def describe(path, content=True):
    """What the mount must show of one entry (lstat), with its bytes' hash or link target."""
    st = os.lstat(path)
    doc = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
           "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        doc["target"] = os.readlink(path)
        doc["size"] = st.st_size
    elif stat.S_ISREG(st.st_mode):
        doc["size"] = st.st_size
        doc["nlink"] = st.st_nlink
        if content:
            with open(path, "rb") as f:
                doc["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return doc


def tree(root, content=True):
    """{relative raw path: description} of everything under ``root``, ``root`` itself included."""
    broot = os.fsencode(root)
    found = {b".": describe(broot, content)}
    for top, dirs, files in os.walk(broot):
        for name in dirs + files:
            path = os.path.join(top, name)
            found[os.path.relpath(path, broot)] = describe(path, content)
    return found


class MountTest(DaemonTestCase):
    timeout = 300
    files = 40
    # Several packs: the damage of one spares the files of the others.
    extra_config = "[upload]\npack_size = 1MiB\n"

    def make_tree(self):
        super().make_tree()
        root = os.fsencode(self.tree)
        # Content of its own (the shared grid dedupes equal packs: damage stays in this test).
        self.victim = os.path.join(root, b"docs", b"victim.bin")
        with open(self.victim, "wb") as f:
            f.write(os.urandom(3 * 1024 * 1024))
        os.link(os.path.join(root, b"tiny"), os.path.join(root, b"docs", b"tiny-again"))
        os.mkfifo(os.path.join(root, b"pipe"))
        os.symlink(b"\xff-nowhere", os.path.join(root, b"dangling"))
        os.utime(os.path.join(root, b"docs"), ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
        os.utime(root, ns=(1_700_000_001_000_000_001, 1_700_000_001_000_000_001))

    async def setUp(self):
        why = fuse_missing()
        if why:
            self.skipTest(why)
        await super().setUp()
        self.snapshot = await self.backup()
        await self.daemon.mount_indexer.idle()
        self.mountpoint = os.path.join(self.base, "mnt")
        os.mkdir(self.mountpoint)

    def mount(self):
        """Start ``gridbackup mount``; wait until it is mounted."""
        gridbackup = os.path.join(os.path.dirname(sys.executable), "gridbackup")
        self.log_path = os.path.join(self.base, "mount.log")
        log = open(self.log_path, "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([gridbackup, "--config", self.config_path, "mount", self.mountpoint],
                                stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(self._unmount, proc)
        started = time.monotonic()
        wait_until(lambda: os.path.ismount(self.mountpoint) or proc.poll() is not None, READY_WITHIN,
                   "the mount is ready")
        self.assertIsNone(proc.poll(), self.mount_log())
        self.assertLess(time.monotonic() - started, READY_WITHIN)
        return proc

    def _unmount(self, proc):
        subprocess.run(["fusermount3", "-uz", self.mountpoint], capture_output=True, timeout=30)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)

    def mount_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def in_snapshot(self, *parts):
        return os.path.join(os.fsencode(self.mountpoint), b"snapshots", self.snapshot.encode(),
                            os.fsencode(self.tree).lstrip(b"/"), *parts)

    async def test_tree_damage_and_sigint(self):
        proc = self.mount()
        mp = os.fsencode(self.mountpoint)
        # The layout: latest, snapshots/<id>, hosts/<host>/<id>.
        self.assertEqual(sorted(os.listdir(mp)), [b"hosts", b"latest", b"snapshots"])
        self.assertEqual(os.readlink(os.path.join(mp, b"latest")), b"snapshots/" + self.snapshot.encode())
        self.assertEqual(os.listdir(os.path.join(mp, b"snapshots")), [self.snapshot.encode()])
        self.assertEqual(os.readlink(os.path.join(mp, b"hosts", b"testhost", self.snapshot.encode())),
                         b"../../snapshots/" + self.snapshot.encode())
        with open("/proc/self/mountinfo") as f:
            [line] = [line for line in f if f" {self.mountpoint} " in line]
        self.assertIn(" - fuse.gridbackup ", line)
        self.assertIn("ro,", line.split(" - ")[0].split()[5] + ",")

        # Damage, before anything is read: the shares of the pack of one
        # file (Tahoe fails the download), and a blob whose bytes are not
        # its hash's (the index points one byte off: our own check).
        root = os.fsencode(self.tree)
        damaged = set()
        grid = shared_grid()
        if grid is not None:
            [cap] = self.packs_of(self.victim)[:1]
            self.assertTrue(corrupt_shares(grid, cap))
            damaged |= self.files_in_pack(cap)
        shifted = next(path for path in self.files_with_blobs() if path not in damaged)
        self.shift_blobs(shifted)
        damaged.add(shifted)

        # The whole tree as the source has it: types, modes, owners, sizes,
        # times to the nanosecond (directories too), link targets, bytes, links.
        source = tree(self.tree, content=False)
        mounted = await deferToThread(tree, self.in_snapshot(), False)
        self.assertEqual(sorted(mounted), sorted(source))
        for path in source:
            self.assertEqual(mounted[path], source[path], path)
        self.assertIn(b"caf\xe9-latin1.txt", mounted)
        self.assertEqual(mounted[b"tiny"]["nlink"], 2)
        self.assertEqual(mounted[b"docs/tiny-again"]["nlink"], 2)
        self.assertEqual(stat.S_IFMT(os.lstat(self.in_snapshot(b"pipe")).st_mode), stat.S_IFIFO)
        intact = [p for p, doc in source.items()
                  if doc["type"] == stat.S_IFREG and os.path.join(root, p) not in damaged]
        self.assertGreater(len(intact), 20)
        for rel in intact:
            with open(os.path.join(root, rel), "rb") as f:
                want = f.read()
            self.assertEqual(await deferToThread(self.read, self.in_snapshot(rel)), want, rel)
        # Tahoe checks only the segments a ranged read fetches: a file of the
        # damaged pack reads right or fails with EIO (logged with its path),
        # never with wrong bytes; the pack's first blob is in a damaged segment.
        failed = []
        for path in sorted(damaged):
            rel = os.path.relpath(path, root)
            with open(path, "rb") as f:
                want = f.read()
            try:
                got = await deferToThread(self.read, self.in_snapshot(rel))
            except OSError as e:
                self.assertEqual(e.errno, errno.EIO, rel)
                failed.append(rel)
                wait_until(lambda: os.fsdecode(rel) in self.mount_log(), 10, f"{rel!r} in the log")
            else:
                self.assertEqual(got, want, rel)
        self.assertIn(os.path.relpath(shifted, root), failed)
        self.assertIn("does not match its SHA-256", self.mount_log())
        if grid is not None:
            self.assertGreater(len(failed), 1, self.mount_log())

        # Read only.
        with self.assertRaises(OSError) as e:
            open(self.in_snapshot(b"tiny"), "wb")
        self.assertIn(e.exception.errno, (errno.EROFS, errno.EACCES))

        # SIGINT unmounts cleanly.
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(timeout=30), 0, self.mount_log())
        self.assertFalse(os.path.ismount(self.mountpoint))

    async def test_survives_daemon_restart(self):
        # Mounted inside the backed-up tree: the next scan must not enter it.
        self.mountpoint = os.path.join(self.tree, "mnt")
        os.mkdir(self.mountpoint)
        self.mount()
        listed = os.listdir(self.in_snapshot())
        await self.daemon.stopService()
        # Listing needs only the index; content only the grid.
        self.assertEqual(os.listdir(self.in_snapshot()), listed)
        with open(os.path.join(os.fsencode(self.tree), b"photos", b"big.raw"), "rb") as f:
            big = f.read()
        self.assertEqual(await deferToThread(self.read, self.in_snapshot(b"photos", b"big.raw")), big)
        await self.start_daemon(self.config_path)
        second = await self.backup()
        await self.daemon.mount_indexer.idle()
        from gridbackupd.format.chain import snapshot_entries
        from gridbackupd.format.logpaths import is_in_subtree
        from gridbackupd.state.snapshots import log_resolver

        inside = os.fsencode(self.mountpoint)
        below = [e.path for e in snapshot_entries(second, log_resolver(self.daemon.conn))
                 if is_in_subtree(e.path, inside) and e.path != inside]
        self.assertEqual(below, [])
        # A snapshot made after the mount started shows up in it.
        wait_until(lambda: second.encode() in os.listdir(os.path.join(os.fsencode(self.mountpoint),
                                                                      b"snapshots")), 10, "the new snapshot")
        self.assertEqual(os.readlink(os.path.join(self.mountpoint, "latest")), "snapshots/" + second)
        with open(self.victim, "rb") as f:
            self.assertEqual(await deferToThread(self.read, self.in_snapshot(b"docs", b"victim.bin")), f.read())

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def entry_blobs(self, path):
        from gridbackupd.format.chain import snapshot_entries
        from gridbackupd.state.snapshots import log_resolver

        for entry in snapshot_entries(self.snapshot, log_resolver(self.daemon.conn)):
            if entry.path == path:
                return [h for h, _ in entry.blobs]
        raise AssertionError(f"{path!r} is not in the snapshot")

    def packs_of(self, path):
        from gridbackupd.state.blobs import locate

        return sorted({locate(self.daemon.conn, h)[0] for h in self.entry_blobs(path)})

    def files_with_blobs(self):
        """The files whose blobs are all in packs, uncompressed."""
        from gridbackupd.format.chain import snapshot_entries
        from gridbackupd.state.blobs import locate
        from gridbackupd.state.snapshots import log_resolver

        return [entry.path for entry in snapshot_entries(self.snapshot, log_resolver(self.daemon.conn))
                if entry.blobs and all(self.stored_plain(locate(self.daemon.conn, h)) for h, _ in entry.blobs)]

    @staticmethod
    def stored_plain(location):
        """A blob stored in a pack uncompressed (shifted by a byte, it decodes, to the wrong bytes)."""
        return isinstance(location, tuple) and location[3] == "none"

    def files_in_pack(self, cap):
        """The paths of the files of the snapshot with a blob in the pack ``cap``."""
        from gridbackupd.format.chain import snapshot_entries
        from gridbackupd.state.blobs import locate
        from gridbackupd.state.snapshots import log_resolver

        found = set()
        for entry in snapshot_entries(self.snapshot, log_resolver(self.daemon.conn)):
            where = [locate(self.daemon.conn, h) for h, _ in entry.blobs]
            if any(isinstance(w, tuple) and w[0] == cap for w in where):
                found.add(entry.path)
        return found

    def shift_blobs(self, path):
        """Make the index say each blob of ``path`` starts one byte later in its pack."""
        for h in self.entry_blobs(path):
            self.daemon.conn.execute("UPDATE blobs SET offset = offset + 1 WHERE hash = ?", (h,))


class MountIndexMissingTest(DaemonTestCase):
    """Without an index, the mount says what to do, in one line."""

    timeout = 240

    async def test_no_index(self):
        why = fuse_missing()
        if why:
            self.skipTest(why)
        await self.daemon.mount_indexer.idle()
        index = self.daemon.statedir.mount_index
        self.assertEqual(mountindex.snapshots(mountindex.open_index(index, readonly=True)), [])
        os.unlink(index)
        mountpoint = os.path.join(self.base, "mnt")
        os.mkdir(mountpoint)
        gridbackup = os.path.join(os.path.dirname(sys.executable), "gridbackup")
        done = subprocess.run([gridbackup, "--config", self.config_path, "mount", mountpoint],
                              capture_output=True, timeout=60)
        self.assertEqual(done.returncode, 1)
        [line] = done.stderr.decode().splitlines()
        self.assertIn("no mount index", line)
        self.assertIn("start the daemon", line)
        done = subprocess.run([gridbackup, "--config", self.config_path, "mount", os.path.join(self.base, "nope")],
                              capture_output=True, timeout=60)
        self.assertEqual(done.returncode, 2)
        self.assertIn("is not a directory", done.stderr.decode())
