"""
Faults of the grid itself, on real Tahoe nodes (issue 18): a storage node
stopped during an upload, the client node killed during an upload, and a
restore asked for while storage servers are gone.

The tests share one private grid of this module (2-of-3, happy 3), never
the shared grid other tests use; each test starts with all its nodes
running.  It is a LocalGrid made as a daemon makes its embedded grid
(``restart_exited``), so a node killed there is started again as the
embedded grid's would be, while the daemon on it, whose ``node_url``
points at the grid, waits for its node as for an external one.  (A
daemon with an embedded grid of its own would create five more nodes:
half a minute on a busy machine.)  Each test prints how long it took.
"""

import atexit
import os
import shutil
import signal
import tempfile
import time

import psutil  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from gridbackupd import service
from gridbackupd.config import parse_config
from gridbackupd.grid.localgrid import LocalGrid
from gridbackupd.grid.retry import Backoff, RetryPolicy
from gridbackupd.service import from_config
from gridbackupd.testing.configfile import write_config
from tests.integration.test_checkrepair import write_files
from tests.support.daemoncase import api_client
from tests.support.trees import tree_listing

STORAGE = ["storage1", "storage2", "storage3"]
# Small packs, two at a time: a backup of a few files is several uploads.
UPLOAD = "[upload]\npack_size = 64KiB\nparallel = 2\n"
# Waits short enough for a test; the daemon's own are seconds to minutes.
QUICK_RETRY = RetryPolicy(attempts=2, base=0.1, cap=0.5)
QUICK_BACKOFF = Backoff(base=0.5, cap=2.0)

_grid: LocalGrid | None = None
_basedir: str | None = None


async def private_grid():
    """This module's grid, started on first use, with all its storage nodes running and connected."""
    global _grid, _basedir
    if _grid is None:
        _basedir = tempfile.mkdtemp(prefix="gridbackup-faultgrid-")
        _grid = LocalGrid(reactor, os.path.join(_basedir, "grid"), storage_nodes=3,
                          needed=2, happy=3, total=3, restart_exited=True)
        atexit.register(_cleanup)
        started = time.monotonic()
        _grid.startService()
        await _grid.when_ready()
        print(f"\n  (this module's grid started in {time.monotonic() - started:.1f} s)", end=" ")
    url = await _grid.when_ready()
    for name in STORAGE:
        if name not in _grid.pids():
            await _grid.start_node(name)
    await until(lambda: servers_connected(_grid, 3), "all 3 storage servers connected")
    return _grid, url


def _cleanup():
    if _grid is not None:
        _grid.kill_all()
    if _basedir is not None:
        shutil.rmtree(_basedir, ignore_errors=True)


async def servers_connected(grid, n):
    return await grid.connected_servers() == n


async def until(check, what, timeout=60.0):
    """Poll real processes (nothing to wait on but their answers) until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, 0.1, lambda: None)


class GatedUploads:
    """
    The daemon's Tahoe client as its uploader sees it: pack uploads are
    counted, and after ``open_for`` of them succeeded the next ones wait
    at a gate until the test opens it (``reached`` fires when one does).
    """

    def __init__(self, client, open_for):
        self.client = client
        self.open_for = open_for
        self.reached = Deferred()
        self._gate = Deferred()
        self.calls = self.succeeded = self.failed = 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def upload_file(self, path):
        self.calls += 1
        if self.succeeded >= self.open_for and not self._gate.called:
            if not self.reached.called:
                self.reached.callback(None)
            gate = Deferred()
            self._gate.addBoth(lambda r: gate.callback(None) or r)
            await gate
        try:
            cap = await self.client.upload_file(path)
        except Exception:
            self.failed += 1
            raise
        self.succeeded += 1
        return cap

    def open(self):
        self._gate.callback(None)


def one_line_for_a_person(testcase, text):
    testcase.assertTrue(text)
    testcase.assertNotIn("\n", text)
    for bad in ("Traceback", "Failure", "site-packages", os.path.dirname(os.path.dirname(__file__))):
        testcase.assertNotIn(bad, text)


class GridFaultTests(TestCase):
    timeout = 180

    def setUp(self):
        self.started = time.monotonic()
        self.addCleanup(lambda: print(f"\n  {self.id().rsplit('.', 1)[-1]}: "
                                      f"{time.monotonic() - self.started:.1f} s", end=" "))

    async def daemon(self, node_url, files=12, size=40_000, extra=""):
        """A daemon backing up ``files`` files of ``size`` bytes; ``extra``: lines for its [tahoe]."""
        self.base = os.path.abspath(self.mktemp())
        self.tree = os.path.join(self.base, "data")
        os.makedirs(self.tree)
        self.digests = write_files(self.tree, count=files, size=size)
        config = write_config(self.base, node_url, [self.tree], extra=UPLOAD)
        if extra:
            with open(config) as f:
                text = f.read()
            with open(config, "w") as f:
                f.write(text.replace("[tahoe]\n", "[tahoe]\n" + extra))
        daemon = from_config(reactor, parse_config(config))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        self.api = api_client(self, daemon)
        return daemon

    async def status(self):
        code, body = await self.api.call("GET", "/v1/status")
        self.assertEqual(code, 200, body)
        return body

    async def start_backup(self):
        code, body = await self.api.call("POST", "/v1/backups")
        self.assertEqual(code, 202, body)
        return body["id"]

    async def status_grid_error(self):
        status = await self.status()
        return status["grid"]["error"] and status

    def pack_counts(self, daemon):
        """(packs recorded, packs none of whose blobs points at them): a pack sent twice leaves one of the latter."""
        conn = daemon.conn
        recorded = conn.execute("SELECT count(*) FROM packs WHERE cap IS NOT NULL").fetchone()[0]
        orphans = conn.execute("SELECT count(*) FROM packs p WHERE NOT EXISTS "
                               "(SELECT 1 FROM blobs b WHERE b.pack_id = p.id)").fetchone()[0]
        return recorded, orphans

    async def test_a_storage_node_stopped_during_an_upload(self):
        """
        With one of 3 storage servers gone (happy 3) pack uploads fail and
        are tried again with backoff; the queue stays, the status says why;
        once the node is back (the daemon's grid poll sees it) the round
        backing off tries at once, the backup completes, and the only packs
        sent again are the ones that failed.
        """
        grid, url = await private_grid()
        self.patch(service, "GRID_POLL", 0.5)
        daemon = await self.daemon(url)
        daemon.client.retry = QUICK_RETRY
        # Half a second before the first retry, half a minute before the next.
        daemon.uploader.backoff = Backoff(base=0.5, factor=60.0, cap=30.0)
        uploads = daemon.uploader.client = GatedUploads(daemon.uploader.client, open_for=2)
        snapshot = await self.start_backup()

        await uploads.reached
        self.addCleanup(lambda: "storage3" not in grid.pids() and grid.start_node("storage3"))
        await grid.stop_node("storage3")
        await until(lambda: servers_connected(grid, 2), "the client node to see storage3 go")
        uploads.open()

        async def failing_again():
            upload = (await self.status())["upload"]
            return (upload["failed_packs"] >= 2 and upload["retry_at"] is not None
                    and upload["retry_at"] > time.time() + 15 and upload)

        upload = await until(failing_again, "pack uploads failing twice, and the next retry far off")
        one_line_for_a_person(self, upload["last_error"])
        self.assertIn("2 server(s)", upload["last_error"])
        print(f"\n  status said: {upload['last_error']}", end=" ")
        self.assertGreater(upload["pending_blobs"], 0)
        code, body = await self.api.call("GET", f"/v1/snapshots/{snapshot}")
        self.assertEqual(body["state"], "uploading")
        self.assertIsNone(upload["stalled"])
        status = await until(self.status_grid_error, "the grid's status to say what is missing")
        self.assertEqual(status["grid"]["error"], "2 storage servers connected, 3 needed")

        await grid.start_node("storage3")
        self.assertEqual(await daemon.wait_for_snapshot(snapshot), "complete")
        # Woken when the grid came back, not at the retry it was waiting for.
        self.assertLess(time.time(), upload["retry_at"])
        self.assertIsNone((await self.status())["grid"]["error"])

        upload = (await self.status())["upload"]
        self.assertIsNone(upload["last_error"])
        self.assertIsNone(upload["retry_at"])
        self.assertEqual(upload["pending_blobs"], 0)
        recorded, orphans = self.pack_counts(daemon)
        self.assertGreaterEqual(recorded, 4)
        self.assertEqual(orphans, 0)
        # Every pack went up once; every other upload was a failed one.
        self.assertEqual(uploads.succeeded, recorded)
        self.assertEqual(daemon.uploader.uploaded_packs, recorded)
        self.assertEqual(uploads.failed, upload["failed_packs"])
        self.assertEqual(uploads.calls, uploads.succeeded + uploads.failed)
        print(f"\n  {recorded} packs, {uploads.failed} failed uploads", end=" ")

    async def test_the_client_node_killed_during_an_upload(self):
        """
        The client node killed (SIGKILL) while packs go up: the grid starts
        it again, the daemon waits for it and goes on, and the backup
        completes; the only tahoe processes left are the grid's own.
        """
        embedded = write_config(os.path.abspath(self.mktemp()), "embedded", ["/nowhere"])
        self.assertTrue(from_config(reactor, parse_config(embedded)).grid.restart_exited)

        grid, url = await private_grid()
        restarts = grid.restarts
        daemon = await self.daemon(url)
        daemon.uploader.backoff = QUICK_BACKOFF
        uploads = daemon.uploader.client = GatedUploads(daemon.uploader.client, open_for=2)
        snapshot = await self.start_backup()

        await uploads.reached
        killed = grid.pids()["client"]
        os.kill(killed, signal.SIGKILL)

        async def restarted():
            pid = grid.pids().get("client")
            return pid is not None and pid != killed

        await until(restarted, "the client node to be started again", timeout=30)
        # The round's next packs waited at the gate while the node died. (A
        # pack cut while its shares were being placed is refused as unhappy
        # by the storage servers until they drop its unfinished shares, 30
        # minutes in Tahoe: the daemon retries it with backoff meanwhile.)
        uploads.open()
        self.assertEqual(grid.restarts, restarts + 1)
        one_line_for_a_person(self, grid.last_exit)
        self.assertIn("tahoe node client killed by signal 9", grid.last_exit)
        self.assertEqual(await daemon.wait_for_snapshot(snapshot), "complete")
        recorded, orphans = self.pack_counts(daemon)
        self.assertEqual(orphans, 0)
        self.assertEqual(uploads.succeeded, recorded)
        self.assertEqual(uploads.calls, uploads.succeeded + uploads.failed)
        print(f"\n  {recorded} packs, {uploads.failed} failed uploads", end=" ")

        # No tahoe process but the grid's five (which its stop ends): the
        # killed one is gone and no second client runs.
        grid_dir = os.path.realpath(grid.basedir)
        running = {p.pid for p in psutil.process_iter(["pid", "cmdline"])
                   if any(grid_dir in arg for arg in (p.info["cmdline"] or []))}
        self.assertEqual(running, set(grid.pids().values()))
        self.assertEqual(len(running), 5)
        self.assertFalse(psutil.pid_exists(killed))

    async def test_a_restore_waits_for_storage_servers(self):
        """
        A restore asked for while 2 of 3 storage servers are gone (the
        shares cannot be found) waits for them, says so, and completes
        once they are back; with them gone for longer than ``[tahoe]
        grid_wait`` it fails with one line, having written no file.
        """
        grid, url = await private_grid()
        daemon = await self.daemon(url, files=6, extra="grid_wait = 60s\n")
        daemon.client.retry = QUICK_RETRY
        self.assertEqual(await daemon.wait_for_snapshot(await self.start_backup()), "complete")

        async def stop_two():
            for name in ("storage2", "storage3"):
                await grid.stop_node(name)
            await until(lambda: servers_connected(grid, 1), "the client node to see 2 servers go")

        async def start_again():
            for name in ("storage2", "storage3"):
                if name not in grid.pids():
                    await grid.start_node(name)

        self.addCleanup(start_again)
        await stop_two()
        target = os.path.join(self.base, "restored")
        code, body = await self.api.call("POST", "/v1/restores", {"snapshot": "latest", "target": target})
        self.assertEqual(code, 202, body)
        restore = body["id"]

        async def waiting():
            code, body = await self.api.call("GET", f"/v1/restores/{restore}")
            return body["waiting_for"] == "grid" and body

        body = await until(waiting, "the restore to wait for the grid", timeout=20)
        self.assertEqual(body["state"], "running")
        self.assertEqual(body["errors"], [])
        await start_again()
        self.assertEqual(await daemon.wait_for_restore(restore), "done")
        code, body = await self.api.call("GET", f"/v1/restores/{restore}")
        self.assertEqual((body["errors"], body["waiting_for"]), ([], None))
        self.assertEqual(tree_listing(os.path.join(target, self.tree.lstrip("/"))), tree_listing(self.tree))

        # Gone for longer than grid_wait: one clear line, and no file half-restored.
        # (As [tahoe] grid_wait = 4s would: the wait above must outlast a node's start.)
        daemon.restorer.engine.grid_wait = 4.0
        await stop_two()
        target = os.path.join(self.base, "never")
        code, body = await self.api.call("POST", "/v1/restores", {"snapshot": "latest", "target": target})
        self.assertEqual(code, 202, body)
        self.assertEqual(await daemon.wait_for_restore(body["id"]), "failed")
        code, body = await self.api.call("GET", f"/v1/restores/{body['id']}")
        [error] = body["errors"]
        self.assertIsNone(error["path"])
        one_line_for_a_person(self, error["reason"])
        self.assertIn("gave up after waiting 4 s for the grid ([tahoe] grid_wait)", error["reason"])
        self.assertIn("only 1 of 3 storage servers connected, too few to find the shares", error["reason"])
        self.assertEqual((body["files_done"], body["waiting_for"]), (0, None))
        print(f"\n  gave up with: {error['reason']}", end=" ")
