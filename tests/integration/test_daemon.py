"""
The whole daemon in this process, against the shared real grid, driven
through its HTTP API: back up a tree, restore it, compare.
"""

import os
import stat

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from gridbackupd.config import parse_config
from gridbackupd.service import from_config
from tests.support.daemoncase import DaemonTestCase, api_client, write_config
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import make_tree, tree_listing


class DaemonTests(DaemonTestCase):
    async def test_backup_and_restore_round_trip(self):
        snapshot_id = await self.backup()
        code, listing = await self.api.call("GET", "/v1/snapshots")
        self.assertEqual(code, 200)
        [snap] = listing["snapshots"]
        self.assertEqual(snap["id"], snapshot_id)
        self.assertTrue(snap["complete"])
        self.assertEqual(snap["kind"], "full")
        self.assertGreater(snap["files"], 50)

        code, detail = await self.api.call("GET", f"/v1/snapshots/{snapshot_id}")
        self.assertEqual((code, detail["state"], detail["complete"]), (200, "complete", True))

        # The snapshot is on the grid: its log is linked under the root.
        snapshots = await self.daemon.publisher.layout.linked_logs(self.daemon.client)
        self.assertIn(snapshot_id, snapshots)

        target = os.path.join(self.base, "restored")
        state, status = await self.restore({"snapshot": "latest", "target": target})
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(status["files_done"], status["files_total"])
        restored = os.path.join(target, self.tree.lstrip("/"))
        self.assertEqual(tree_listing(restored), tree_listing(self.tree))

    async def test_few_thousand_files(self):
        big = os.path.join(self.base, "many")
        make_tree(big, files=3000, seed=9, large=3_000_000)
        # The configured root is self.tree: back up a second root by a new daemon config.
        await self.daemon.stopService()
        await self.start_daemon(write_config(self.base, self.node_url, [self.tree, big]))
        await self.backup()
        target = os.path.join(self.base, "restored-many")
        state, status = await self.restore({"snapshot": "latest", "paths": [big], "target": target})
        self.assertEqual(state, "done", status["errors"][:5])
        self.assertGreater(status["files_done"], 3000)
        self.assertEqual(tree_listing(os.path.join(target, big.lstrip("/"))), tree_listing(big))

    async def test_incremental_change_and_old_snapshot(self):
        first = await self.backup()
        changed = os.path.join(self.tree, "docs", "letter.txt")
        with open(changed, "rb") as f:
            old = f.read()
        with open(changed, "wb") as f:
            f.write(b"a new letter\n" * 50)
        uploaded_before = self.daemon.uploader.uploaded_bytes
        second = await self.backup()
        self.assertNotEqual(first, second)
        # Only the changed file's content went up again (plus a pack trailer).
        self.assertLess(self.daemon.uploader.uploaded_bytes - uploaded_before, 20_000)

        code, listing = await self.api.call("GET", "/v1/snapshots")
        self.assertEqual([s["id"] for s in listing["snapshots"]], [first, second])

        target = os.path.join(self.base, "old")
        state, status = await self.restore(
            {"snapshot": first, "paths": [changed], "target": target})
        self.assertEqual(state, "done", status["errors"])
        with open(os.path.join(target, changed.lstrip("/")), "rb") as f:
            self.assertEqual(f.read(), old)
        self.assertEqual(status["files_total"], 1)

    async def test_status(self):
        code, body = await self.api.call("GET", "/v1/status")
        self.assertEqual(code, 200)
        self.assertEqual(body["state"], "ready")
        self.assertGreaterEqual(body["grid"]["servers_connected"], 3)
        self.assertIn("pending_blobs", body["upload"])
        self.assertIsNone(body["last_snapshot"])
        await self.backup()
        code, body = await self.api.call("GET", "/v1/status")
        self.assertEqual(body["upload"]["pending_blobs"], 0)
        self.assertTrue(body["last_snapshot"]["complete"])

    async def test_bad_requests(self):
        cases = [
            (api_client(self, self.daemon, token="wrong"), "GET", "/v1/status", None, None, 401),
            (self.api, "GET", "/v1/nothing", None, None, 404),
            (self.api, "DELETE", "/v1/status", None, None, 405),
            (self.api, "GET", "/v1/snapshots/nope", None, None, 404),
            (self.api, "GET", "/v1/restores/nope", None, None, 404),
            (self.api, "POST", "/v1/restores", None, b"{not json", 400),
            (self.api, "POST", "/v1/restores", None, b"[1]", 400),
            (self.api, "POST", "/v1/restores", {"target": "relative"}, None, 400),
            (self.api, "POST", "/v1/restores", {"target": "/tmp/x", "paths": ["/a/../b"]}, None, 400),
            (self.api, "POST", "/v1/restores", {"target": "/tmp/x", "bogus": 1}, None, 400),
            (self.api, "POST", "/v1/restores", {"snapshot": "nope", "target": "/tmp/x"}, None, 404),
            (self.api, "POST", "/v1/restores", None, b"x" * 100_000, 413),
        ]
        for client, method, path, body, raw, expected in cases:
            code, doc = await client.call(method, path, body=body, raw=raw)
            self.assertEqual(code, expected, (method, path, doc))
            self.assertEqual(set(doc), {"error"})
            self.assertEqual(set(doc["error"]), {"code", "message"})

    async def test_requests_join_the_waiting_scan(self):
        # Within one turn of the reactor no scan can finish: the first
        # request's scan may start at once; every later one while a scan
        # waits joins the waiting one.
        ids = [self.daemon.jobs.request() for _ in range(3)]
        self.assertEqual(ids[1], ids[2])
        code, body = await self.api.call("POST", "/v1/backups")
        self.assertEqual(code, 202)
        ids.append(body["id"])
        for snapshot_id in set(ids):
            self.assertEqual(await self.daemon.wait_for_snapshot(snapshot_id), "complete")


class SecretsTests(TestCase):
    timeout = 240

    async def test_private_files(self):
        node_url = await shared_node_url()
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "data"))
        config = parse_config(write_config(base, node_url, [os.path.join(base, "data")]))
        daemon = from_config(reactor, config)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        self.assertEqual(await daemon.when_ready(), "ready")
        private = os.path.join(base, "state", "private")
        self.assertEqual(stat.S_IMODE(os.stat(private).st_mode), 0o700)
        # The database holds pack and log caps; the state dir holds content waiting to go up.
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(base, "state")).st_mode), 0o700)
        for name in ("state.sqlite", "state.sqlite-wal"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(base, "state", name)).st_mode), 0o600, name)
        for name in ("rootcap", "api_token"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(private, name)).st_mode), 0o600)
        with open(os.path.join(private, "rootcap")) as f:
            rootcap = f.read().strip()
        self.assertTrue(rootcap.startswith("URI:DIR2:"))
        # The root holds the layout that a new machine needs.
        children = await daemon.client.list_dir(rootcap)
        self.assertEqual(set(children), {"snapshot-days", "commit-days", "gridbackup.json", "lock"})
        # The cap never reaches the daemon's own files other than private/.
        read = []
        for dirpath, _, files in os.walk(os.path.join(base, "state")):
            if dirpath.startswith(private):
                continue
            for name in files:
                if name.endswith(("sqlite", "sqlite-wal", "sqlite-shm")):
                    continue
                if not stat.S_ISREG(os.lstat(os.path.join(dirpath, name)).st_mode):
                    continue  # api.sock: a socket holds no bytes
                with open(os.path.join(dirpath, name), "rb") as f:
                    self.assertNotIn(rootcap.encode(), f.read(), name)
                read.append(name)
        self.assertTrue(read, "the state directory holds files besides the database")
