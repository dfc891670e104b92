"""
Forget and prune on a real grid: the kept snapshots stay whole (also for a
new machine holding only the root cap), dead packs leave the root, and a
kept increment on a forgotten full log becomes a full log itself.
"""

import io
import itertools
import os
import shutil

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format import chain
from gridbackupd.format.logreader import LogReader, read_log
from gridbackupd.maintenance import prune
from gridbackupd.model import LogHeader
from gridbackupd.scan import reader
from gridbackupd.scan.tolog import LogScan, scan_to_log
from gridbackupd.scan.values import ScanOptions, ScanProgress
from gridbackupd.state import checkpoints as stored_checkpoints
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots
from gridbackupd.state.blobs import locate
from gridbackupd.state.snapshots import log_resolver
from gridbackupd.upload import writerlock
from tests.support.daemoncase import DaemonTestCase, write_config
from tests.support.trees import tree_listing

RETENTION = "[upload]\npack_size = 64KiB\n[retention]\nkeep_last = 1\ninterval = 0\n"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


class ForgetAndPruneTests(DaemonTestCase):
    def make_tree(self):
        os.makedirs(self.tree)
        for i in range(6):
            write(os.path.join(self.tree, "keep", f"small-{i}"), b"kept %d\n" % i * (i * 40 + 1))
            write(os.path.join(self.tree, "keep", f"medium-{i}"), os.urandom(20_000 + i))
        write(os.path.join(self.tree, "doomed", "big.bin"), os.urandom(1_500_000))
        for i in range(8):
            write(os.path.join(self.tree, "doomed", f"medium-{i}"), os.urandom(30_000 + i))
        write(os.path.join(self.tree, "doomed", "inline-index"), os.urandom(1500))

    async def _start(self):
        await super()._start()
        # The daemon of DaemonTestCase has no retention policy; restart it with one.
        await self.daemon.stopService()
        write_config(self.base, self.node_url, [self.tree], extra=RETENTION)
        await self.start_daemon(self.config_path)

    def blobs_of(self, snapshot_id, prefix):
        hashes = set()
        for entry in chain.snapshot_entries(snapshot_id, log_resolver(self.daemon.conn)):
            if entry.path.startswith(os.fsencode(os.path.join(self.tree, prefix))):
                hashes.update(h for h, _ in entry.blobs)
        return hashes

    async def grid_layout(self):
        client, layout = self.daemon.client, self.daemon.publisher.layout
        logs = await layout.linked_logs(client)
        packs = set()
        for commit in (await layout.linked_commits(client)).values():
            packs.update(n for n in await client.list_dir(commit.cap) if n.startswith("pack-"))
        return logs, packs

    async def test_forget_and_prune(self):
        first = await self.backup()
        doomed = self.blobs_of(first, "doomed")
        kept = self.blobs_of(first, "keep")
        conn = self.daemon.conn
        doomed_packs = {r[0] for r in conn.execute(
            "SELECT DISTINCT p.name FROM blobs b JOIN packs p ON p.id = b.pack_id "
            f"WHERE b.hash IN ({','.join('?' * len(doomed))})", list(doomed))}
        only_doomed = {
            name for name in doomed_packs
            if not conn.execute(
                "SELECT count(*) FROM blobs b JOIN packs p ON p.id = b.pack_id "
                f"WHERE p.name = ? AND b.hash NOT IN ({','.join('?' * len(doomed))})",
                [name, *doomed]).fetchone()[0]
        }
        self.assertGreater(len(only_doomed), 3)
        shutil.rmtree(os.path.join(self.tree, "doomed"))
        write(os.path.join(self.tree, "new", "file"), os.urandom(40_000))
        second = await self.backup()
        self.assertEqual(conn.execute("SELECT kind, parent FROM snapshots WHERE id = ?",
                                      (second,)).fetchone(), ("incremental", first))
        _, packs_before = await self.grid_layout()
        self.assertTrue(only_doomed <= packs_before)

        code, plan = await self.api.call("POST", "/v1/forget", {"dry_run": True})
        self.assertEqual(code, 200, plan)
        self.assertEqual((plan["forget"], plan["rewrite_full"]), ([first], [second]))
        self.assertEqual(plan["keep"][0]["id"], second)
        self.assertGreaterEqual(plan["prune"]["dead_blobs"], len(doomed - kept))
        self.assertGreaterEqual(plan["prune"]["packs_dropped"], len(only_doomed))
        # A dry run changes nothing.
        self.assertEqual(len((await self.api.call("GET", "/v1/snapshots"))[1]["snapshots"]), 2)

        code, answer = await self.api.call("POST", "/v1/forget", {})
        self.assertEqual(code, 202, answer)
        job_id = answer["job"]["id"]
        self.assertEqual(await self.daemon.maintenance.wait(job_id), "done",
                         self.daemon.maintenance.job(job_id))
        code, job = await self.api.call("GET", f"/v1/jobs/{job_id}")
        self.assertEqual(job["result"]["snapshots_forgotten"], 1)
        figures = job["result"]["prune"]
        self.assertGreaterEqual(figures["packs_dropped"], len(only_doomed))
        # Files are packed smallest first: the last pack of kept files also
        # holds forgotten ones, mostly dead, so it is repacked.
        self.assertEqual((figures["packs_repacked"], figures["packs_written"]), (1, 1))
        self.assertLess(figures["bytes_moved"], figures["bytes_repacked"] / 2)

        # The grid: one log, full now; no pack that held only forgotten blobs.
        logs, packs_after = await self.grid_layout()
        self.assertEqual(set(logs), {second})
        data = await self.daemon.client.download(logs[second].cap)
        self.assertEqual(LogReader(io.BytesIO(data)).header.kind, "full")
        self.assertEqual(only_doomed & packs_after, set())
        self.assertLess(len(packs_after), len(packs_before))
        # The index: forgotten blobs gone, every kept one found.
        self.assertTrue(doomed - kept)
        for h in doomed - kept:
            self.assertIsNone(locate(conn, h))
        for h in self.blobs_of(second, ""):
            self.assertIsNotNone(locate(conn, h), h)
        self.assertEqual(conn.execute("SELECT count(*) FROM commits WHERE linked != 1").fetchone()[0], 0)

        # The kept snapshot restores exactly, here...
        target = os.path.join(self.base, "restored")
        state, status = await self.restore({"snapshot": second, "target": target, "verify": True})
        self.assertEqual(state, "done", status["errors"][:5])
        self.assertEqual(tree_listing(os.path.join(target, self.tree.lstrip("/"))),
                         tree_listing(self.tree))
        rootcap = self.daemon.rootcap
        await self.daemon.stopService()

        # ...and on a new machine that has only the root cap.
        self.patch(writerlock, "LOCK_STALE", -1.0)
        from gridbackupd.statedir import write_private

        base = os.path.join(self.base, "new")
        os.makedirs(os.path.join(base, "state", "private"), mode=0o700)
        write_private(os.path.join(base, "state", "private", "rootcap"), rootcap + "\n")
        await self.start_daemon(write_config(base, self.node_url, [self.tree]))
        self.assertEqual((self.daemon.recovery["snapshots"], self.daemon.recovery["errors"]), (1, []))
        target = os.path.join(self.base, "restored-new")
        state, status = await self.restore({"snapshot": second, "target": target, "verify": True})
        self.assertEqual(state, "done", status["errors"][:5])
        self.assertEqual(tree_listing(os.path.join(target, self.tree.lstrip("/"))),
                         tree_listing(self.tree))

    async def test_forget_named_snapshot_and_refusals(self):
        first = await self.backup()
        write(os.path.join(self.tree, "keep", "changed"), b"x" * 5000)
        second = await self.backup()
        code, body = await self.api.call("POST", "/v1/forget", {"snapshots": ["nope"]})
        self.assertEqual((code, body["error"]["code"]), (409, "cannot_forget"))
        code, body = await self.api.call("POST", "/v1/forget", {"snapshots": "x"})
        self.assertEqual(code, 400)
        code, body = await self.api.call("POST", "/v1/forget", {"bogus": 1})
        self.assertEqual(code, 400)
        # Forgetting the newest by name keeps the older one whole.
        code, answer = await self.api.call("POST", "/v1/forget", {"snapshots": [second]})
        self.assertEqual((code, answer["forget"], answer["rewrite_full"]), (202, [second], []))
        self.assertEqual(await self.daemon.maintenance.wait(answer["job"]["id"]), "done")
        code, listing = await self.api.call("GET", "/v1/snapshots")
        self.assertEqual([s["id"] for s in listing["snapshots"]], [first])
        self.assertFalse(os.path.exists(os.path.join(self.daemon.config.state_dir, "logs",
                                                     second + ".log")))
        target = os.path.join(self.base, "restored")
        state, status = await self.restore({"snapshot": first, "target": target, "verify": True})
        self.assertEqual(state, "done", status["errors"][:5])
        self.assertFalse(os.path.exists(os.path.join(target, self.tree.lstrip("/"), "keep", "changed")))
        # The next backup is made against what is left, and is complete.
        third = await self.backup()
        self.assertNotIn(third, (first, second))

    async def test_refused_while_another_daemon_holds_the_writer_lock(self):
        import time

        from gridbackupd.format.index import encode_lock

        first = await self.backup()
        shutil.rmtree(os.path.join(self.tree, "doomed"))
        second = await self.backup()
        # Another machine writes this backup set now: its lock is fresh.
        client, layout = self.daemon.client, self.daemon.publisher.layout
        cap = await client.upload_bytes(encode_lock("w-elsewhere", "elsewhere", int(time.time())))
        await client.set_children(layout.root, {"lock": cap})
        self.daemon.publisher.writer.renewed = None  # as if our heartbeat were due
        packs = self.daemon.conn.execute("SELECT count(*) FROM packs").fetchone()[0]
        code, answer = await self.api.call("POST", "/v1/forget", {})
        self.assertEqual(code, 202, answer)
        self.assertEqual(await self.daemon.maintenance.wait(answer["job"]["id"]), "failed")
        job = self.daemon.maintenance.job(answer["job"]["id"])
        self.assertIn("another gridbackupd", job["error"])
        logs, _ = await self.grid_layout()
        self.assertEqual(set(logs), {first, second})
        self.assertEqual(self.daemon.conn.execute("SELECT count(*) FROM packs").fetchone()[0], packs)
        code, listing = await self.api.call("GET", "/v1/snapshots")
        self.assertEqual([s["id"] for s in listing["snapshots"]], [first, second])
        self.flushLoggedErrors()


class PruneAgainstInterruptedScanTests(SynchronousTestCase):
    """
    A scan stopped at a checkpoint copies its records as they are when it
    resumes, and the committed blobs they use are in no ``snapshot_blobs``:
    a prune in between must keep them, or the resumed snapshot names blobs
    that are gone.
    """

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        self.tree = os.path.join(self.base, "tree")
        self.logs = os.path.join(self.base, "logs")
        os.makedirs(self.logs)
        for d in range(4):
            for i in range(200):
                write(os.path.join(self.tree, f"d{d}", f"f{i:03d}"), b"%d-%d;" % (d, i) * 80)
        self.db_path = os.path.join(self.base, "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        self.addCleanup(self.conn.close)

    def scan(self, snapshot_id, **kw):
        header = LogHeader(snapshot=snapshot_id, kind="full", paths=(os.fsencode(self.tree),), started=1.0)
        return scan_to_log(LogScan(db_path=self.db_path, snapshot_id=snapshot_id, header=header,
                                   options=ScanOptions(roots=(self.tree,)),
                                   log_path=os.path.join(self.logs, snapshot_id + ".log"), **kw),
                           ScanProgress())

    def test_checkpointed_blobs_stay_live(self):
        # An old snapshot's blobs, all committed in one linked commit; the
        # snapshot itself is forgotten since, so no log names them.
        self.scan("0-old")
        with dbmod.transaction(self.conn):
            self.conn.execute("INSERT INTO commits (name, cap, linked) VALUES ('c1', 'URI:DIR2-CHK:c', 1)")
            self.conn.execute("INSERT INTO packs (id, name, cap, size, commit_name) "
                              "VALUES (1, 'pack-a', 'URI:CHK:a', 1000000, 'c1')")
            self.conn.execute("UPDATE blobs SET state = 'committed', pack_id = 1, offset = 0, "
                              "length = size, commit_name = 'c1'")
            self.conn.execute("DELETE FROM snapshot_blobs")
            self.conn.execute("INSERT INTO snapshots (id, state, host, requested) "
                              "VALUES ('1-new', 'scanning', 'h', 1)")
        os.unlink(os.path.join(self.logs, "0-old.log"))
        committed = {h for (h,) in self.conn.execute("SELECT hash FROM blobs")}
        # A new scan of the same files, killed after a checkpoint half-way;
        # the start requeues it.
        def crash(path):
            if path.endswith(b"/d2/f100"):
                raise KeyboardInterrupt("killed")

        self.patch(reader, "before_open", crash)
        self.assertRaises(KeyboardInterrupt, self.scan, "1-new", checkpoint_every=0)
        self.patch(reader, "before_open", None)
        snapshots.requeue(self.conn, "1-new", keep_blobs=True)
        self.assertEqual(self.conn.execute("SELECT count(*) FROM snapshot_blobs").fetchone()[0], 0)

        # A forget and prune run before the scan resumes.
        session = prune._Session(self.db_path, self.logs)
        self.addCleanup(session.close)
        plan = session.plan(0.5)
        live = {h for (h,) in session.conn.execute("SELECT hash FROM live")}

        # What the resumed snapshot copies from its checkpoint (its first
        # records) was kept.
        copied = stored_checkpoints.load(self.conn, "1-new")["records"]
        self.scan("1-new")
        with open(os.path.join(self.logs, "1-new.log"), "rb") as f:
            _, records = read_log(f)
            named = {h for r in itertools.islice(records, copied) for h, _ in r.blobs}
        self.assertGreater(len(named), 200)
        self.assertTrue(named <= committed)
        self.assertEqual(named - live, set())
        self.assertLessEqual(plan.dead_blobs, len(committed) - len(named))
