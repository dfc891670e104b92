"""
Disaster recovery: a fresh database rebuilt from nothing but the root cap.

The first tests build a backup set on a fake grid by hand (the layout
docs/FORMAT.md describes), recover it into an empty database and restore
from what was recovered; the last ones run whole daemons against the shared
real grid: back up with one, start another with only the root cap.
"""

import hashlib
import os
import stat

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gridbackupd.format.index import encode_index_segment, encode_settings, settings_document
from gridbackupd.format.logpaths import path_key
from gridbackupd.format.logwriter import write_log
from gridbackupd.format.pack import PackedBlob, encode_blob, encode_trailer
from gridbackupd.grid.caps import is_read_only
from gridbackupd.model import DIR, FILE, Deletion, Entry, LogHeader
from gridbackupd.restore.recover import RecoveryError, recover_state
from gridbackupd.restore.requests import Restorer
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import changes
from gridbackupd.state import db as dbmod
from gridbackupd.testing.fake_tahoe import fake_client

T0 = 1_700_000_000_000_000_000


def sha(data):
    return hashlib.sha256(data).hexdigest()


async def read_only_cap(client, dircap):
    """The read-only form of a mutable directory's cap, as Tahoe lists it."""
    holder = await client.mkdir()
    await client.set_children(holder, {"d": dircap})
    return (await client.list_dir(holder))["d"].ro_uri


class GridSet:
    """A backup set written on a fake grid the way the publisher lays it out."""

    def __init__(self, client):
        self.client = client

    async def create(self):
        c = self.client
        self.root = await c.mkdir()
        self.snapshots = await c.mkdir()
        self.commits = await c.mkdir()
        settings = await c.upload_bytes(encode_settings(settings_document(ChunkParams(), 128, 1 << 20, version=1)))
        await c.set_children(self.root, {"snapshots": self.snapshots, "commits": self.commits,
                                         "gridbackup.json": settings})

    async def commit(self, blobs, inline=(), index_bytes=None):
        """One commit of one pack holding ``blobs``; returns the pack's cap."""
        body, packed = b"", []
        for data in blobs:
            stored, compression = encode_blob(data)
            packed.append(PackedBlob(sha(data), len(body), len(stored), len(data), compression))
            body += stored
        pack = body + encode_trailer(packed)
        name = "pack-" + sha(pack)
        pack_cap = await self.client.upload_bytes(pack)
        segment = encode_index_segment(
            [(b.hash, name, b.offset, b.length, b.size, b.compression) for b in packed],
            [(sha(d), d) for d in inline])
        index_cap = await self.client.upload_bytes(index_bytes if index_bytes is not None else segment)
        commit = await self.client.mkdir_immutable({name: pack_cap, "index": index_cap})
        await self.client.set_children(self.commits, {"commit-" + sha(segment)[:32]: commit})
        return pack_cap

    async def snapshot(self, snapshot_id, entries, kind="full", parent=None, started=1_750_000_000.0):
        import io
        f = io.BytesIO()
        header = LogHeader(snapshot=snapshot_id, kind=kind, parent=parent, host="oldhost",
                           paths=(b"/data",), tags=("t",), started=started, finished=started + 5)
        write_log(f, header, sorted(entries, key=lambda e: path_key(e.path)))
        cap = await self.client.upload_bytes(f.getvalue())
        await self.client.set_children(self.snapshots, {snapshot_id: cap})


def file_entry(path, data, **kw):
    sizes = kw.pop("sizes", [len(data)])
    blobs, offset = [], 0
    for n in sizes:
        blobs.append((sha(data[offset:offset + n]), n))
        offset += n
    return Entry(path=path, kind=FILE, mode=stat.S_IFREG | 0o640, size=len(data), mtime_ns=T0,
                 blobs=tuple(blobs), sha256=sha(data), **kw)


class ReadOnlyTests(SynchronousTestCase):
    def test_forms(self):
        self.assertTrue(is_read_only("URI:DIR2-RO:abc:def"))
        self.assertFalse(is_read_only("URI:DIR2:abc:def"))


class RecoverFakeGridTests(TestCase):
    timeout = 60

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.db_path = os.path.join(self.base, "state", "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        self.addCleanup(self.conn.close)
        self.client, self.fake = fake_client()
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-recover")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.grid = GridSet(self.client)

    def recover(self, rootcap):
        return recover_state(reactor, self.conn, self.db_path, self.client, rootcap,
                             os.path.join(self.base, "state", "logs"), self.pool)

    async def restore(self, snapshot, target):
        restorer = Restorer(reactor, self.conn, lambda: self.client, self.pool, os.path.join(self.base, "tmp"))
        self.addCleanup(restorer.stop)
        restore_id = restorer.request(snapshot, [], target, verify=True)
        state = await restorer.wait(restore_id)
        return state, restorer.status(restore_id)

    async def build(self, corrupt_index=False):
        await self.grid.create()
        one, two, three = os.urandom(70_000), os.urandom(90_000), os.urandom(500)
        self.data = {"one": one, "two": two, "three": three}
        await self.grid.commit([one, two], inline=[three],
                               index_bytes=b"{not an index" if corrupt_index else None)
        four = os.urandom(40_000)
        self.data["four"] = four
        await self.grid.commit([four])
        await self.grid.snapshot("20260101T000000.000000Z-aaaaaaaa", [
            Entry(path=b"/data", kind=DIR, mode=stat.S_IFDIR | 0o755, mtime_ns=T0),
            file_entry(b"/data/one", one),
            file_entry(b"/data/small", three),
        ], started=1_767_225_600.0)
        await self.grid.snapshot("20260102T000000.000000Z-bbbbbbbb", [
            file_entry(b"/data/two+four", two + four, sizes=[len(two), len(four)]),
            Deletion(b"/data/small"),
        ], kind="incremental", parent="20260101T000000.000000Z-aaaaaaaa", started=1_767_312_000.0)

    async def test_recover_and_restore(self):
        await self.build()
        report = await self.recover(self.grid.root)
        self.assertEqual((report.commits, report.packs, report.blobs, report.inline_blobs,
                          report.snapshots), (2, 2, 3, 1, 2))
        self.assertEqual(report.errors, [])
        rows = self.conn.execute(
            "SELECT id, state, kind, parent, host, paths, tags, started, files, bytes, complete, log_cap "
            "FROM snapshots ORDER BY id").fetchall()
        first, second = rows
        self.assertEqual(first[:10], ("20260101T000000.000000Z-aaaaaaaa", "complete", "full", None,
                                      "oldhost", '["/data"]', '["t"]', 1_767_225_600.0, 2, 70_500))
        # The incremental snapshot is counted through its chain.
        self.assertEqual(second[1:4], ("complete", "incremental", "20260101T000000.000000Z-aaaaaaaa"))
        self.assertEqual((second[8], second[9], second[10]), (2, 70_000 + 130_000, 1))
        self.assertTrue(second[11].startswith("URI:"))
        self.assertEqual(self.conn.execute(
            "SELECT count(*) FROM blobs WHERE state = 'committed'").fetchone()[0], 4)
        self.assertEqual(self.conn.execute("SELECT count(*) FROM commits WHERE linked = 1").fetchone()[0], 2)
        for snapshot_id in ("20260101T000000.000000Z-aaaaaaaa", "20260102T000000.000000Z-bbbbbbbb"):
            self.assertTrue(os.path.exists(os.path.join(self.base, "state", "logs", snapshot_id + ".log")))
        # Figures and the change index, computed once at recovery.
        figures = changes.figures(self.conn, "20260102T000000.000000Z-bbbbbbbb")
        self.assertEqual((figures["parent"], figures["files_added"], figures["files_deleted"],
                          figures["bytes_added"], figures["bytes_deleted"]),
                         ("20260101T000000.000000Z-aaaaaaaa", 1, 1, 130_000, 500))
        self.assertEqual(changes.figures(self.conn, "20260101T000000.000000Z-aaaaaaaa")["files_added"], 2)
        self.assertEqual([(r[0], r[4], r[6]) for r in changes.history(self.conn, b"/data/small")],
                         [("20260101T000000.000000Z-aaaaaaaa", "added", 500),
                          ("20260102T000000.000000Z-bbbbbbbb", "deleted", 500)])

        target = os.path.join(self.base, "restored")
        state, status = await self.restore("latest", target)
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(status["files_verified"], 2)
        with open(os.path.join(target, "data", "two+four"), "rb") as f:
            self.assertEqual(f.read(), self.data["two"] + self.data["four"])
        self.assertEqual(sorted(os.listdir(os.path.join(target, "data"))), ["one", "two+four"])
        target = os.path.join(self.base, "restored-first")
        state, status = await self.restore("20260101T000000.000000Z-aaaaaaaa", target)
        self.assertEqual(state, "done", status["errors"])
        with open(os.path.join(target, "data", "small"), "rb") as f:
            self.assertEqual(f.read(), self.data["three"])  # an inline blob of the index

        # Again (an interrupted recovery runs again): the same rows.
        before = self.conn.execute("SELECT hash, state, pack_id FROM blobs ORDER BY hash").fetchall()
        await self.recover(self.grid.root)
        self.assertEqual(self.conn.execute("SELECT hash, state, pack_id FROM blobs ORDER BY hash").fetchall(),
                         before)

    async def test_unreadable_index_uses_pack_trailers(self):
        await self.build(corrupt_index=True)
        report = await self.recover(self.grid.root)
        self.assertEqual(len(report.from_trailers), 1)
        self.assertEqual((report.blobs, report.inline_blobs), (3, 0))
        # The inline blob lived only in the lost segment: its snapshot is
        # incomplete, and a restore says which file is missing.
        rows = dict(self.conn.execute("SELECT id, complete FROM snapshots").fetchall())
        self.assertEqual(rows, {"20260101T000000.000000Z-aaaaaaaa": 0, "20260102T000000.000000Z-bbbbbbbb": 1})
        state, status = await self.restore("20260101T000000.000000Z-aaaaaaaa",
                                           os.path.join(self.base, "r"))
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual([p["path"] for p in status["pending"]], ["/data/small"])
        with open(os.path.join(self.base, "r", "data", "one"), "rb") as f:
            self.assertEqual(f.read(), self.data["one"])

    async def test_hostile_pack_trailer_is_reported_and_the_rest_recovered(self):
        """A trailer with a size of 2**70 (and no readable segment) is one damaged pack, not a stopped recovery."""
        import json

        from gridbackupd.format.pack import FOOTER, MAGIC

        await self.build()
        body = json.dumps({"format": "gridbackup-pack", "version": 1,
                           "blobs": [[sha(b"x"), 0, 10, 2**70, "zstd"]]}, separators=(",", ":")).encode()
        pack = b"y" * 10 + body + FOOTER.pack(len(body), MAGIC)
        name = "pack-" + sha(pack)
        pack_cap = await self.client.upload_bytes(pack)
        index_cap = await self.client.upload_bytes(b"{not an index")
        commit = await self.client.mkdir_immutable({name: pack_cap, "index": index_cap})
        await self.client.set_children(self.grid.commits, {"commit-" + "e" * 32: commit})

        report = await self.recover(self.grid.root)
        self.assertEqual([e["what"] for e in report.errors], ["commit-" + "e" * 32 + "/" + name[:17]])
        self.assertIn("bad trailer record", report.errors[0]["reason"])
        self.assertEqual((report.commits, report.blobs, report.snapshots), (3, 3, 2))
        rows = dict(self.conn.execute("SELECT id, state FROM snapshots").fetchall())
        self.assertEqual(set(rows.values()), {"complete"})
        self.assertEqual(self.conn.execute("SELECT value FROM meta WHERE key = 'recovery'").fetchone()[0], "done")

    async def test_hostile_index_segment_falls_back_to_the_trailers(self):
        """A segment that gives a blob 2**70 bytes is refused like any unreadable one."""
        from gridbackupd.format.index import encode_index_segment

        await self.grid.create()
        data = os.urandom(5000)
        stored, compression = encode_blob(data)
        pack = stored + encode_trailer([PackedBlob(sha(data), 0, len(stored), len(data), compression)])
        name = "pack-" + sha(pack)
        pack_cap = await self.client.upload_bytes(pack)
        hostile = encode_index_segment([(sha(data), name, 0, len(stored), 2**70, "zstd")])
        index_cap = await self.client.upload_bytes(hostile)
        commit = await self.client.mkdir_immutable({name: pack_cap, "index": index_cap})
        await self.client.set_children(self.grid.commits, {"commit-" + sha(hostile)[:32]: commit})
        report = await self.recover(self.grid.root)
        self.assertEqual((report.commits, report.blobs, report.errors), (1, 1, []))
        self.assertEqual(len(report.from_trailers), 1)
        self.assertEqual(self.conn.execute("SELECT size FROM blobs").fetchall(), [(5000,)])

    async def test_read_only_cap(self):
        await self.build()
        ro = await read_only_cap(self.client, self.grid.root)
        self.assertTrue(is_read_only(ro))
        writes_before = len([r for r in self.fake.requests if r.method in ("PUT", "POST")])
        report = await self.recover(ro)
        self.assertEqual(report.snapshots, 2)
        self.assertEqual(len([r for r in self.fake.requests if r.method in ("PUT", "POST")]), writes_before)

    async def test_not_a_backup_set(self):
        other = await self.client.mkdir()
        await self.client.set_children(other, {"x": await self.client.upload_bytes(b"hello" * 20)})
        with self.assertRaises(RecoveryError):
            await self.recover(other)
        empty = await self.client.mkdir()
        report = await self.recover(empty)
        self.assertEqual(report.snapshots, 0)

    async def test_hostile_snapshot_name_skipped(self):
        await self.build()
        cap = await self.client.upload_bytes(b"x" * 100)
        await self.client.set_children(self.grid.snapshots, {"..": cap})
        report = await self.recover(self.grid.root)
        self.assertEqual(report.snapshots, 2)
        self.assertEqual(len(report.errors), 1)
        self.assertFalse(os.path.exists(os.path.join(self.base, "state", "...log")))
        self.assertFalse(os.path.exists(os.path.join(self.base, "state", "logs", "...log")))


class RecoverDaemonTests(TestCase):
    """Whole daemons on the shared real grid: the old machine, then a new one with only the root cap."""

    timeout = 300

    async def start_daemon(self, base, paths, rootcap=None):
        from gridbackupd.config import parse_config
        from gridbackupd.service import from_config
        from gridbackupd.statedir import write_private
        from tests.support.daemoncase import api_client, write_config

        os.makedirs(base, exist_ok=True)
        if rootcap is not None:
            private = os.path.join(base, "state", "private")
            os.makedirs(private, mode=0o700)
            write_private(os.path.join(private, "rootcap"), rootcap + "\n")
        daemon = from_config(reactor, parse_config(write_config(base, self.node_url, paths)))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        return daemon, api_client(self, daemon)

    async def backup(self, daemon, api):
        code, body = await api.call("POST", "/v1/backups")
        self.assertEqual(code, 202, body)
        self.assertEqual(await daemon.wait_for_snapshot(body["id"]), "complete")
        return body["id"]

    async def restore(self, daemon, api, request):
        code, body = await api.call("POST", "/v1/restores", request)
        self.assertEqual(code, 202, body)
        state = await daemon.wait_for_restore(body["id"])
        code, status = await api.call("GET", f"/v1/restores/{body['id']}")
        return state, status

    async def test_new_machine_with_only_the_root_cap(self):
        from gridbackupd.upload import writerlock
        from tests.support.sharedgrid import shared_node_url
        from tests.support.trees import make_tree, tree_listing

        # The old machine is gone without a word: its writer lock is not stale
        # yet, and the new one takes it over at once in this test.
        self.patch(writerlock, "LOCK_STALE", -1.0)
        self.node_url = await shared_node_url()
        base = os.path.abspath(self.mktemp())
        tree = os.path.join(base, "data")
        make_tree(tree, files=60)
        old, old_api = await self.start_daemon(os.path.join(base, "old"), [tree])
        first = await self.backup(old, old_api)
        with open(os.path.join(tree, "docs", "letter.txt"), "ab") as f:
            f.write(b"a second page\n" * 100)
        second = await self.backup(old, old_api)
        code, old_list = await old_api.call("GET", "/v1/snapshots")
        with open(os.path.join(base, "old", "state", "private", "rootcap")) as f:
            rootcap = f.read().strip()
        await old.stopService()

        new, new_api = await self.start_daemon(os.path.join(base, "new"), [tree], rootcap=rootcap)
        self.assertEqual((new.recovery["snapshots"], new.recovery["errors"]), (2, []))
        self.assertGreater(new.recovery["blobs"] + new.recovery["inline_blobs"], 30)
        code, new_list = await new_api.call("GET", "/v1/snapshots")
        self.assertEqual(code, 200)
        self.assertEqual([s["id"] for s in new_list["snapshots"]], [first, second])
        self.assertEqual(len(old_list["snapshots"]), len(new_list["snapshots"]))
        for a, b in zip(old_list["snapshots"], new_list["snapshots"]):
            self.assertEqual((b["files"], b["bytes"], b["complete"], b["kind"], b["host"]),
                             (a["files"], a["bytes"], True, a["kind"], a["host"]))
        state, status = await self.restore(new, new_api, {"snapshot": "latest", "target": base + "/r1",
                                                          "verify": True})
        self.assertEqual(state, "done", status["errors"][:5])
        self.assertEqual(tree_listing(os.path.join(base + "/r1", tree.lstrip("/"))), tree_listing(tree))
        state, status = await self.restore(new, new_api, {"snapshot": first, "target": base + "/r0"})
        self.assertEqual(state, "done", status["errors"][:5])
        with open(os.path.join(base + "/r0", tree.lstrip("/"), "docs", "letter.txt"), "rb") as f:
            self.assertNotIn(b"a second page", f.read())

        # A new backup on the new machine deduplicates against the old data:
        # one new file goes up, nothing that was uploaded before.
        with open(os.path.join(tree, "new-file"), "wb") as f:
            f.write(os.urandom(5000))
        third = await self.backup(new, new_api)
        self.assertLess(new.uploader.uploaded_bytes, 20_000)
        self.assertNotIn(third, (first, second))
        await new.stopService()

        # With the read-only cap: lists and restores, never backs up.
        ro = await self._read_only_form(rootcap)
        viewer, viewer_api = await self.start_daemon(os.path.join(base, "viewer"), [tree], rootcap=ro)
        self.assertTrue(viewer.read_only)
        self.assertIsNone(viewer.uploader)
        code, listing = await viewer_api.call("GET", "/v1/snapshots")
        self.assertEqual([s["id"] for s in listing["snapshots"]], [first, second, third])
        for path in ("/v1/backups", "/v1/uploads/pause", "/v1/uploads/take-over"):
            code, body = await viewer_api.call("POST", path)
            self.assertEqual((code, body["error"]["code"]), (403, "read_only"), path)
        state, status = await self.restore(viewer, viewer_api, {"snapshot": "latest", "target": base + "/r3"})
        self.assertEqual(state, "done", status["errors"][:5])
        self.assertEqual(tree_listing(os.path.join(base + "/r3", tree.lstrip("/"))), tree_listing(tree))
        code, status = await viewer_api.call("GET", "/v1/status")
        self.assertEqual(status["state"], "ready")

    async def _read_only_form(self, rootcap):
        from gridbackupd.grid.client import TahoeClient

        client = TahoeClient(self.node_url)
        try:
            return await read_only_cap(client, rootcap)
        finally:
            await client.close()


class WritableTests(SynchronousTestCase):
    def test_backups_refused_while_recovering_or_read_only(self):
        from gridbackupd.api.errors import answer
        from gridbackupd.config import parse_config
        from gridbackupd.errors import ReadOnly, Unavailable
        from gridbackupd.service import from_config
        from tests.support.daemoncase import write_config

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        daemon = from_config(reactor, parse_config(write_config(base, "http://127.0.0.1:1/", [base])))
        daemon.jobs = object()
        daemon.require_writable()
        daemon.recovering = True
        e = answer(self.assertRaises(Unavailable, daemon.require_writable))
        self.assertEqual((e.status, e.code), (503, "recovering"))
        daemon.read_only = True
        e = answer(self.assertRaises(ReadOnly, daemon.require_writable))
        self.assertEqual((e.status, e.code), (403, "read_only"))
