"""
The state_dir's file system full (issue 18): a scan whose log cannot be
written and an upload round whose pack cannot be built fail with one line
that says so, harm no published snapshot, and the next try completes once
there is space again.  The daemon runs in this process on the shared grid.

Two ways to fill the disk: the fault points of ``gridbackupd.faultpoints``
(ENOSPC at exactly the scanner's log write, or the packer's pack write), and
a real tmpfs of a few MiB mounted as the state_dir and filled up.
"""

import errno
import os
import sqlite3
import subprocess

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase

from gridbackupd import faultpoints
from gridbackupd.errors import one_line
from gridbackupd.state import db as dbmod
from tests.support.daemoncase import TCP_ANY_PORT, DaemonTestCase, write_config
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import tree_listing

MiB = 1024 * 1024


def logged(testcase, start):
    """A Deferred firing with the first log event whose format starts with ``start``."""
    d = Deferred()

    def observe(event):
        if not d.called and (event.get("log_format") or "").startswith(start):
            d.callback(event)

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return d


def mount_tmpfs(testcase, path, size):
    """A tmpfs of ``size`` bytes mounted at ``path`` until the test's cleanup (root only)."""
    os.makedirs(path)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        raise SkipTest(f"cannot mount a tmpfs here (root is needed): {mount.stderr.strip()}")
    testcase.addCleanup(subprocess.run, ["umount", "-l", path], check=True)


def fill(testcase, directory, leave=0):
    """Fill the file system of ``directory`` until ``leave`` bytes (or fewer) are free."""
    filler = os.path.join(directory, "filler")
    with open(filler, "ab", buffering=0) as f:
        chunk = MiB
        while chunk >= 512:
            st = os.statvfs(directory)
            if st.f_bavail * st.f_frsize - chunk < leave:
                chunk //= 2
                continue
            try:
                f.write(bytes(chunk))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    testcase.addCleanup(lambda: os.path.exists(filler) and os.unlink(filler))
    return filler


class DiskFullCase(DaemonTestCase):
    files = 40

    @property
    def state(self):
        return os.path.join(self.base, "state")

    def add_file(self, name, size):
        with open(os.path.join(self.tree, name), "wb") as f:
            f.write(os.urandom(size))

    async def request_backup(self):
        code, body = await self.api.call("POST", "/v1/backups")
        self.assertEqual(code, 202, body)
        return body["id"]

    async def snapshot(self, snapshot_id):
        code, body = await self.api.call("GET", f"/v1/snapshots/{snapshot_id}")
        self.assertEqual(code, 200, body)
        return body

    async def status(self):
        code, body = await self.api.call("GET", "/v1/status")
        self.assertEqual(code, 200, body)
        return body

    async def assert_restores(self, snapshot_id, listing):
        target = os.path.join(self.base, f"restored-{snapshot_id}")
        state, status = await self.restore({"snapshot": snapshot_id, "target": target})
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(tree_listing(os.path.join(target, self.tree.lstrip("/"))), listing)

    def assert_no_partial_files(self):
        logs = os.listdir(os.path.join(self.state, "logs"))
        self.assertEqual([n for n in logs if ".tmp" in n], [])
        packs = os.path.join(self.state, "packs")
        building = os.listdir(packs) if os.path.isdir(packs) else []
        self.assertEqual([n for n in building if n.startswith("building-")], [])

    def assert_database_intact(self):
        conn = sqlite3.connect(os.path.join(self.state, "state.sqlite"))
        try:
            self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        finally:
            conn.close()


class InjectedTests(DiskFullCase):
    """ENOSPC raised by a fault point, once, at exactly the named write."""

    def arm(self, spec):
        faultpoints.configure({faultpoints.TESTING: "1", faultpoints.FAULT_AT: spec})
        self.addCleanup(faultpoints.configure, {})

    async def test_scan_log_write(self):
        first = await self.backup()
        listing = tree_listing(self.tree)
        self.add_file("new.dat", 300_000)
        self.arm("scan.log_write:ENOSPC")
        failed = await self.request_backup()
        self.assertEqual(await self.daemon.wait_for_snapshot(failed), "failed")
        snapshot = await self.snapshot(failed)
        logs = os.path.join(self.state, "logs")
        self.assertEqual(snapshot["errors"], [
            {"path": None, "reason": f"no space left on device while writing the scan log in {logs}"}])
        self.assertEqual((await self.status())["state"], "ready")
        self.assert_no_partial_files()

        # The fault was once: the next request scans again and completes.
        again = await self.backup()
        self.assertNotEqual(again, failed)
        await self.assert_restores(first, listing)
        await self.assert_restores(again, tree_listing(self.tree))

    async def test_pack_write(self):
        first = await self.backup()
        listing = tree_listing(self.tree)
        self.add_file("new.dat", 1 * MiB)
        self.arm("packer.pack_write:ENOSPC")
        round_failed = logged(self, "upload round failed")
        snapshot_id = await self.request_backup()
        await round_failed
        status = await self.status()
        packs = os.path.join(self.state, "packs")
        self.assertEqual(status["upload"]["last_error"],
                         f"no space left on device while writing a pack in {packs}")
        self.assertEqual((await self.snapshot(snapshot_id))["state"], "uploading")
        self.assert_no_partial_files()

        # The uploader tries again by itself after its back-off.
        self.assertEqual(await self.daemon.wait_for_snapshot(snapshot_id), "complete")
        self.assertIsNone((await self.status())["upload"]["last_error"])
        await self.assert_restores(first, listing)
        await self.assert_restores(snapshot_id, tree_listing(self.tree))


class FullFileSystemTests(DiskFullCase):
    """The state_dir on a tmpfs of its own, really filled up."""

    size = 24 * MiB

    async def setUp(self):
        # The mount comes before the daemon starts, and goes after it stopped.
        self.base = os.path.abspath(self.mktemp())
        mount_tmpfs(self, os.path.join(self.base, "state"), self.size)
        await super().setUp()

    async def _start(self):
        # DaemonTestCase's, in the base that holds the mount.
        self.node_url = await shared_node_url()
        self.tree = os.path.join(self.base, "data")
        self.make_tree()
        self.config_path = write_config(self.base, self.node_url, [self.tree], listen=TCP_ANY_PORT)
        await self.start_daemon(self.config_path)

    async def assert_refused_for_lack_of_space(self):
        """
        A backup asked for on a full state_dir: refused at once if its row
        cannot be written, else its scan fails (or is put back in the queue)
        with the reason in the status, as one line.
        """
        state = self.state
        scan_ended = logged(self, "scan of")
        code, body = await self.api.call("POST", "/v1/backups")
        if code == 503:
            self.assertEqual(body["error"], {
                "code": "disk_full",
                "message": f"no space left on device while writing the database in {state}"})
            return
        self.assertEqual(code, 202, body)
        await scan_ended
        reason = (await self.status())["scan"]["last_error"]
        self.assertIn(reason, (f"no space left on device while writing the scan log in {state}/logs",
                               f"no space left on device while writing the database in {state}"))
        snapshot = await self.snapshot(body["id"])
        self.assertIn(snapshot["state"], ("failed", "queued", "scanning"))
        if snapshot["state"] == "failed":
            self.assertEqual(snapshot["errors"], [{"path": None, "reason": reason}])

    async def test_full_then_space_again(self):
        first = await self.backup()
        listing = tree_listing(self.tree)
        self.add_file("new.dat", 2 * MiB)

        # Full: nothing can be written, not even a row.
        filler = fill(self, self.state)
        await self.assert_refused_for_lack_of_space()
        self.assertEqual((await self.status())["state"], "ready")
        self.assert_database_intact()
        os.unlink(filler)

        # Space for the scan, not for its 2 MiB pack: the upload round fails.
        filler = fill(self, self.state, leave=512 * 1024)
        round_failed = logged(self, "upload round failed")
        snapshot_id = await self.request_backup()
        await round_failed
        status = await self.status()
        self.assertEqual(status["upload"]["last_error"],
                         f"no space left on device while writing a pack in {self.state}/packs")
        self.assertIsNone(status["scan"]["last_error"])
        self.assertEqual((await self.snapshot(snapshot_id))["state"], "uploading")
        self.assert_no_partial_files()

        # Space again: the uploader tries again by itself after its back-off.
        os.unlink(filler)
        self.assertEqual(await self.daemon.wait_for_snapshot(snapshot_id), "complete")
        self.assert_database_intact()
        self.assert_no_partial_files()
        await self.assert_restores(first, listing)
        await self.assert_restores(snapshot_id, tree_listing(self.tree))


class DatabaseFullTests(TestCase):
    """SQLite on a full file system: the transaction is rolled back and said to be a full disk."""

    def test_a_full_disk_at_a_commit(self):
        directory = os.path.abspath(self.mktemp())
        mount_tmpfs(self, directory, MiB)
        path = os.path.join(directory, "state.sqlite")
        conn = dbmod.open_database(path)
        self.addCleanup(conn.close)
        dbmod.set_meta(conn, "before", "kept")
        filler = fill(self, directory)
        for size in (100, 300_000):
            with self.assertRaises(Exception) as caught:
                with dbmod.transaction(conn):
                    dbmod.set_meta(conn, "big", "x" * size)
            self.assertEqual(one_line(caught.exception),
                             f"no space left on device while writing the database in {directory}")
            self.assertFalse(conn.in_transaction)
        os.unlink(filler)
        dbmod.set_meta(conn, "after", "written")
        self.assertEqual([dbmod.get_meta(conn, k) for k in ("before", "big", "after")], ["kept", None, "written"])
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
