"""
The upload scheduler against the in-memory fake Tahoe: packs, commits,
dedup, inline blobs, pause and resume, the rate limit, and backing off.
Everything runs synchronously on a task.Clock (packing runs inline).
"""

import base64
import hashlib
import os
import random

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gridbackupd.config import parse_config
from gridbackupd.format.index import parse_index_segment, settings_document
from gridbackupd.format.pack import decode_blob
from gridbackupd.grid.layout import COMMIT_DAYS, SNAPSHOT_DAYS, read_index
from gridbackupd.grid.retry import RetryPolicy
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.scan.values import NewBlob
from gridbackupd.service import from_config
from gridbackupd.state import db as dbmod
from gridbackupd.state import queue
from gridbackupd.state.blobs import locate
from gridbackupd.testing.fake_tahoe import fake_client
from gridbackupd.testing.inline import InlinePool, ThreadlessReactor
from gridbackupd.upload.publisher import Publisher
from gridbackupd.upload.uploader import RETRY_DELAY, Uploader
from tests.support.fakegrid import add_uploading_snapshot, grid_index, run, write_files


class GatedClient:
    """The fake client, with pack uploads that wait until the test lets them go."""

    def __init__(self, client):
        self.client = client
        self.gated = False
        self.waiting = []

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def upload_file(self, path, wrap_body=None):
        if self.gated:
            with open(path, "rb") as f:
                data = f.read()
            d = Deferred()
            self.waiting.append(d)
            await d
            return await self.client.upload_bytes(data)
        if wrap_body is not None:
            return await self.client.upload_file(path, wrap_body=wrap_body)
        return await self.client.upload_file(path)

    def release(self):
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)



def index_data(blob):
    with open(blob.source_path, "rb") as f:
        return f.read()


class UploaderTests(SynchronousTestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.base, "files"))
        self.conn = dbmod.open_database(os.path.join(self.base, "state.sqlite"))
        self.addCleanup(self.conn.close)
        self.reactor = ThreadlessReactor()
        client, self.fake = fake_client(clock=self.reactor, retry=RetryPolicy(attempts=1))
        self.client = GatedClient(client)
        self.root = self.successResultOf(run(client.mkdir()))
        self.publisher = Publisher(
            self.conn, self.client, settings_document(ChunkParams(), 128, 1 << 20, 2048),
            writer_id="w-test", host="test")
        self.successResultOf(run(self.publisher.ensure_layout(self.root)))
        self.rnd = random.Random(4)
        self.snapshots = 0

    def uploader(self, **kw):
        kw.setdefault("pack_size", 64 * 1024)
        return Uploader(self.reactor, self.conn, self.client, self.publisher, InlinePool(),
                        os.path.join(self.base, "packs"), **kw)

    def files(self, sizes, prefix="f"):
        return write_files(self.rnd, os.path.join(self.base, "files"), sizes, prefix)

    def snapshot(self, blobs):
        self.snapshots += 1
        sid = f"s{self.snapshots}"
        add_uploading_snapshot(self.conn, self.base, sid, blobs)
        return sid

    def grid_index(self):
        """Every blob reachable from the root: hash -> (pack cap or None, entry)."""
        return grid_index(self, self.client, self.publisher.layout)

    def puts(self):
        return sum(1 for r in self.fake.requests if r.method == "PUT")

    def test_upload_commit_and_never_twice(self):
        blobs = self.files([5000] * 40)
        sid = self.snapshot(blobs)
        up = self.uploader()
        self.assertTrue(self.successResultOf(run(up.run_once())))
        packs = self.conn.execute("SELECT count(*) FROM packs WHERE cap IS NOT NULL").fetchone()[0]
        self.assertEqual(packs, 4)  # 200 KB in 64 KiB packs
        self.assertEqual(up.uploaded_packs, 4)
        self.assertEqual(up.uploaded_bytes, self.conn.execute("SELECT sum(size) FROM packs").fetchone()[0])
        # Everything is reachable from the root, and each packed blob reads back.
        index = self.grid_index()
        self.assertEqual(set(index), {b.hash for b in blobs})
        for h, (cap, entry) in index.items():
            stored = self.fake.files[cap][entry.offset:entry.offset + entry.length]
            data = decode_blob(stored, entry.compression, entry.size)
            self.assertEqual(hashlib.sha256(data).hexdigest(), h)
        self.assertEqual(
            self.conn.execute("SELECT state, complete FROM snapshots WHERE id = ?", (sid,)).fetchone(),
            ("complete", 1))
        snapshots = self.successResultOf(run(self.publisher.layout.linked_logs(self.client)))
        self.assertEqual(set(snapshots), {sid})
        # The same content again, from other files and a new snapshot: no pack goes up.
        before = self.puts()
        copies = []
        for b in blobs[:10]:
            path = b.source_path + b".copy"
            with open(b.source_path, "rb") as f, open(path, "wb") as g:
                g.write(f.read())
            copies.append(NewBlob(b.hash, b.size, path, 0, 0))
        sid2 = self.snapshot(copies)
        self.assertTrue(self.successResultOf(run(up.run_once())))
        self.assertEqual(self.puts() - before, 1)  # the log only
        self.assertEqual(up.uploaded_packs, 4)
        self.assertEqual(self.conn.execute("SELECT complete FROM snapshots WHERE id = ?", (sid2,)).fetchone()[0], 1)
        self.assertFalse(self.successResultOf(run(up.run_once())))

    def test_small_blobs_inline(self):
        small = self.files([100, 1500, 2048], prefix="s")
        large = self.files([2049, 9000], prefix="l")
        self.snapshot(small + large)
        up = self.uploader(inline_max=2048)
        self.successResultOf(run(up.run_once()))
        index = self.grid_index()
        for b in small:
            cap, entry = index[b.hash]
            self.assertIsNone(cap)
            with open(b.source_path, "rb") as f:
                self.assertEqual(entry.data, f.read())
        for b in large:
            self.assertIsNotNone(index[b.hash][0])
        self.assertEqual(up.inlined_blobs, 3)
        # The database says the same, for the restorer.
        rows = self.conn.execute(
            "SELECT hash, state, pack_id, length(inline_data) FROM blobs ORDER BY size").fetchall()
        self.assertEqual([r[1] for r in rows], ["committed"] * 5)
        self.assertEqual([(r[2] is None, r[3]) for r in rows[:3]], [(True, 100), (True, 1500), (True, 2048)])
        self.assertTrue(all(r[2] is not None and r[3] is None for r in rows[3:]))
        self.assertEqual(locate(self.conn, small[0].hash), index_data(small[0]))
        cap, offset, length, compression = locate(self.conn, large[0].hash)
        self.assertTrue(cap.startswith("URI:"))
        self.assertEqual((length, compression), (2049, "none"))

    def test_spooled_content_is_removed_once_committed(self):
        spool = os.path.join(self.base, "spool")
        os.makedirs(spool)
        data = b"what the scanner read of a file that never held still" * 100
        h = hashlib.sha256(data).hexdigest()
        path = os.path.join(spool, h).encode()
        with open(path, "wb") as f:
            f.write(data)
        [other] = self.files([5000])
        self.snapshot([NewBlob(h, len(data), path, 0, 0), other])
        up = self.uploader(spool_dir=spool)
        self.successResultOf(run(up.run_once()))
        self.assertFalse(os.path.exists(path))
        self.assertTrue(os.path.exists(other.source_path))
        self.assertIn(h, self.grid_index())
        self.assertEqual(self.conn.execute("SELECT state, source_path FROM blobs WHERE hash = ?", (h,)).fetchone(),
                         ("committed", None))
        self.assertIsInstance(locate(self.conn, h), tuple)  # (cap, offset, length, compression): in a pack
        self.assertIsNone(locate(self.conn, "0" * 64))

    def test_changed_file_goes_stale(self):
        blobs = self.files([3000, 3000])
        sid = self.snapshot(blobs)
        with open(blobs[0].source_path, "wb") as f:
            f.write(b"changed after the scan")
        self.successResultOf(run(self.uploader().run_once()))
        states = dict(self.conn.execute("SELECT hash, state FROM blobs"))
        self.assertEqual(states, {blobs[0].hash: "stale", blobs[1].hash: "committed"})
        self.assertEqual(self.conn.execute("SELECT state, complete FROM snapshots WHERE id = ?", (sid,)).fetchone(),
                         ("incomplete", 0))

    def test_pause_lets_packs_in_flight_finish(self):
        self.snapshot(self.files([30000] * 10))  # 5 packs of 2 blobs
        up = self.uploader(parallel=2)
        self.client.gated = True
        d = run(up.upload_pending())
        self.assertEqual((len(self.client.waiting), up.packs_in_flight), (2, 2))
        up.pause()
        self.assertTrue(up.status()["paused"])
        self.client.release()
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(self.client.waiting, [])
        self.assertEqual(queue.pending_totals(self.conn)[0], 6)
        # Paused, the loop starts nothing...
        up.start()
        self.assertEqual(self.client.waiting, [])
        # ...until resumed.
        up.resume()
        self.assertEqual(len(self.client.waiting), 2)
        self.client.gated = False
        self.client.release()
        self.assertEqual(queue.pending_totals(self.conn)[0], 0)
        self.successResultOf(up.stop())
        self.assertEqual(len(self.grid_index()), 10)

    def test_failures_back_off_and_keep_the_queue(self):
        self.snapshot(self.files([30000] * 8))
        up = self.uploader(parallel=4)
        self.fake.fail_next(500, times=1, method="PUT")
        up.start()
        status = up.status()
        self.assertIsNotNone(status["last_error"])
        self.assertEqual(status["consecutive_failures"], 1)
        self.assertEqual(status["parallel"], 2)
        self.assertGreater(status["pending_blobs"], 0)
        self.fake.fail_next(500, times=1, method="PUT")
        self.reactor.advance(RETRY_DELAY)
        self.assertEqual(up.status()["consecutive_failures"], 2)
        self.assertEqual(up.status()["parallel"], 1)
        # Twice the delay now: nothing at RETRY_DELAY, all done at 2 * RETRY_DELAY.
        self.reactor.advance(RETRY_DELAY)
        self.assertGreater(up.status()["pending_blobs"], 0)
        self.reactor.advance(RETRY_DELAY)
        status = up.status()
        self.assertEqual((status["pending_blobs"], status["last_error"], status["consecutive_failures"]),
                         (0, None, 0))
        self.assertGreater(status["parallel"], 1)
        self.successResultOf(up.stop())
        self.assertEqual(len(self.grid_index()), 8)


class UploadAPITests(TestCase):
    """The daemon against the shared real grid: the queue, pause and resume, dedup."""

    timeout = 240

    async def test_queue_pause_resume_and_dedup(self):
        from tests.support.apiclient import APIClient
        from tests.support.daemoncase import write_config
        from tests.support.sharedgrid import shared_node_url
        from tests.support.trees import make_tree

        node_url = await shared_node_url()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        tree = os.path.join(base, "data")
        make_tree(tree, files=80, seed=3)
        daemon = from_config(reactor, parse_config(write_config(base, node_url, [tree])))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        api = APIClient(self, f"http://127.0.0.1:{daemon.port.getHost().port}", daemon.token)

        code, body = await api.call("POST", "/v1/uploads/pause")
        self.assertEqual((code, body["paused"]), (200, True))
        scanned = Deferred()
        daemon.jobs.on_scanned = lambda sid: (daemon._scanned(sid), scanned.called or scanned.callback(sid))
        code, body = await api.call("POST", "/v1/backups")
        snapshot_id = body["id"]
        self.assertEqual(await scanned, snapshot_id)

        code, status = await api.call("GET", "/v1/status")
        self.assertTrue(status["upload"]["paused"])
        self.assertGreater(status["upload"]["pending_blobs"], 20)
        self.assertEqual(status["upload"]["uploaded_bytes"], 0)
        self.assertIsNone(status["upload"]["writer_lock"])
        code, q = await api.call("GET", "/v1/uploads/queue?limit=5")
        self.assertEqual(code, 200, q)
        self.assertEqual(len(q["next"]), 5)
        self.assertEqual(q["pending_blobs"], status["upload"]["pending_blobs"])
        priorities = [n["priority"] for n in q["next"]]
        self.assertEqual(priorities, sorted(priorities, reverse=True))
        for n in q["next"]:
            path = os.fsdecode(base64.b64decode(n["path_b64"])) if "path_b64" in n else n["path"]
            self.assertTrue(path.startswith(tree + "/"), path)
            self.assertEqual(os.path.getsize(path) >= n["size"] > 0, True)
        code, bad = await api.call("GET", "/v1/uploads/queue?limit=0")
        self.assertEqual(code, 400, bad)

        code, body = await api.call("POST", "/v1/uploads/resume")
        self.assertEqual((code, body["paused"]), (200, False))
        self.assertEqual(await daemon.wait_for_snapshot(snapshot_id), "complete")
        code, status = await api.call("GET", "/v1/status")
        up = status["upload"]
        self.assertEqual((up["pending_blobs"], up["pending_bytes"]), (0, 0))
        sent = up["uploaded_bytes"]
        packs = daemon.conn.execute("SELECT coalesce(sum(size), 0), count(*) FROM packs").fetchone()
        self.assertEqual(sent, packs[0])
        self.assertGreater(sent, 0)

        # A second backup of the same tree sends no pack: every blob is indexed.
        code, body = await api.call("POST", "/v1/backups")
        self.assertEqual(await daemon.wait_for_snapshot(body["id"]), "complete")
        code, status = await api.call("GET", "/v1/status")
        self.assertEqual(status["upload"]["uploaded_bytes"], sent)
        self.assertEqual(daemon.conn.execute("SELECT count(*) FROM packs").fetchone()[0], packs[1])


class CrashTests(TestCase):
    """kill -9 a real twistd daemon in the middle of its uploads, and start it again."""

    timeout = 400

    async def test_kill_9_during_uploads(self):
        import sqlite3

        # The twistd child runs the same gridbackupd as this test process
        # (with PYTHONPATH=src relative, it would find the installed copy).
        import gridbackupd
        from gridbackupd.grid.client import TahoeClient
        from tests.support.process import CONFIG, Daemon, free_port

        here = os.path.dirname(os.path.dirname(os.path.abspath(gridbackupd.__file__)))
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = here + (os.pathsep + old if old else "")
        self.addCleanup(lambda: os.environ.__setitem__("PYTHONPATH", old) if old is not None
                        else os.environ.pop("PYTHONPATH", None))

        base = os.path.abspath(self.mktemp())
        tree = os.path.join(base, "data")
        os.makedirs(tree)
        rnd = random.Random(11)
        for i in range(48):
            with open(os.path.join(tree, f"f{i:03d}"), "wb") as f:
                f.write(rnd.randbytes(rnd.randrange(200_000, 1_200_000)))
        port = free_port()
        with open(os.path.join(base, "gridbackup.ini"), "w") as f:
            # Small packs and a rate limit: the upload takes several seconds.
            f.write(CONFIG.format(tree=tree, port=port)
                    + "[upload]\npack_size = 1MiB\nparallel = 2\nmax_rate = 3MiB\n")
        daemon = Daemon(self, base, port)
        daemon.start()
        self.addCleanup(daemon.stop)
        state = os.path.join(base, "state")
        await daemon.ready()
        code, body = await daemon.call("POST", "/v1/backups")
        snapshot_id = body["id"]

        async def some_packs_up():
            code, status = await daemon.call("GET", "/v1/status")
            up = status["upload"]
            return up["uploaded_packs"] >= 3 and up["pending_blobs"] > 0 and up
        await daemon.eventually(some_packs_up, "a few packs to be uploaded")
        daemon.kill9()

        db = sqlite3.connect(os.path.join(state, "state.sqlite"))
        self.addCleanup(db.close)
        packs_before = dict(db.execute("SELECT name, id FROM packs WHERE cap IS NOT NULL"))
        placed_before = dict(db.execute("SELECT hash, pack_id FROM blobs WHERE pack_id IS NOT NULL"))
        pending_bytes = db.execute("SELECT sum(size) FROM blobs WHERE state = 'pending'").fetchone()[0]
        self.assertGreater(len(packs_before), 2)
        self.assertTrue(placed_before)
        self.assertGreater(pending_bytes, 0)

        daemon.start()
        await daemon.ready()
        await daemon.complete(snapshot_id)
        code, status = await daemon.call("GET", "/v1/status")
        sent_after = status["upload"]["uploaded_bytes"]

        # Nothing recorded before the kill was uploaded again: each blob is still
        # in the pack it was in, and the packs sent since the restart hold only
        # blobs that were pending (at most the packs in flight sent twice).
        packs_after = dict(db.execute("SELECT name, id FROM packs WHERE cap IS NOT NULL"))
        new_packs = set(packs_after) - set(packs_before)
        self.assertTrue(new_packs)
        placed_after = dict(db.execute("SELECT hash, pack_id FROM blobs WHERE pack_id IS NOT NULL"))
        for h, pack_id in placed_before.items():
            self.assertEqual(placed_after[h], pack_id)
        new_ids = {packs_after[n] for n in new_packs}
        new_size = db.execute(
            f"SELECT sum(size) FROM packs WHERE id IN ({','.join(map(str, new_ids))})").fetchone()[0]
        self.assertEqual(sent_after, new_size)
        self.assertLess(sent_after, pending_bytes * 1.05 + 2 * 1024 * 1024)
        self.assertEqual(db.execute("SELECT count(*) FROM blobs WHERE state != 'committed'").fetchone()[0], 0)

        # On the grid: exactly the recorded packs, each in one linked commit.
        with open(os.path.join(state, "grid", "client", "node.url")) as f:
            client = TahoeClient(f.read().strip())
        self.addCleanup(client.close)
        with open(os.path.join(state, "private", "rootcap")) as f:
            root = f.read().strip()
        children = await client.list_dir(root)
        on_grid = []
        hashes = set()
        for name, child in (await read_index(client, children[COMMIT_DAYS].cap)).items():
            listing = await client.list_dir(child.cap)
            packs = {n for n in listing if n.startswith("pack-")}
            on_grid.extend(packs)
            segment = parse_index_segment(await client.download(listing["index"].cap), packs)
            hashes.update(b.hash for b in segment.blobs)
        self.assertEqual(sorted(on_grid), sorted(packs_after))
        self.assertEqual(hashes, {r[0] for r in db.execute("SELECT hash FROM blobs")})
        snapshots = await read_index(client, children[SNAPSHOT_DAYS].cap)
        self.assertIn(snapshot_id, snapshots)
