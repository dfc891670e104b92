"""
The live set of a prune against an interrupted scan: a scan stopped at a
checkpoint is requeued and later copies the checkpoint's records as they
are, while the committed blobs they use are listed nowhere else; so those
blobs stay live until its log is written.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.logwriter import LogWriter
from gridbackupd.maintenance.prune import PruneError, _Session
from gridbackupd.model import FILE, Entry, LogHeader
from gridbackupd.state import checkpoints as stored
from gridbackupd.state import db as dbmod

H1 = "1" * 64
H2 = "2" * 64
H3 = "3" * 64


class CheckpointLiveTests(SynchronousTestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        self.logs = os.path.join(self.base, "logs")
        os.makedirs(self.logs)
        self.db_path = os.path.join(self.base, "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        self.addCleanup(self.conn.close)
        # Three committed blobs in one pack of a linked commit; the snapshot
        # that used them is forgotten, so no published log names them.
        with dbmod.transaction(self.conn):
            self.conn.execute("INSERT INTO commits (name, cap, linked) VALUES ('c1', 'URI:DIR2-CHK:c', 1)")
            self.conn.execute("INSERT INTO packs (id, name, cap, size, commit_name) "
                              "VALUES (1, 'pack-a', 'URI:CHK:a', 300, 'c1')")
            for i, h in enumerate((H1, H2, H3)):
                self.conn.execute(
                    "INSERT INTO blobs (hash, size, state, pack_id, offset, length, compression, "
                    "commit_name) VALUES (?, 100, 'committed', 1, ?, 100, 'none', 'c1')",
                    (h, i * 100))

    def snapshot(self, snapshot_id, state):
        with dbmod.transaction(self.conn):
            self.conn.execute("INSERT INTO snapshots (id, state, host, requested) VALUES (?, ?, 'h', 1)",
                              (snapshot_id, state))

    def checkpoint(self, snapshot_id, blobs, offset=None):
        """A scan's checkpoint whose records use ``blobs``, as the scanner leaves it."""
        name = snapshot_id + ".log.tmp0"
        with open(os.path.join(self.logs, name), "wb") as f:
            writer = LogWriter(f, LogHeader(snapshot=snapshot_id, kind="full", host="h"))
            for i, h in enumerate(blobs):
                writer.add(Entry(path=b"/f%d" % i, kind=FILE, mode=0o644, size=100, blobs=[(h, 100)]))
            end = writer.checkpoint()
            # The scan went on after its checkpoint: what follows is not read.
            writer.add(Entry(path=b"/zz", kind=FILE, mode=0o644, size=100, blobs=[(H3, 100)]))
            writer.checkpoint()
        stored.save(self.conn, snapshot_id, {"file": name, "offset": end if offset is None else offset,
                                             "records": len(blobs)})

    def plan(self):
        session = _Session(self.db_path, self.logs)
        self.addCleanup(session.close)
        plan = session.plan(0.5)
        return plan, {h for (h,) in session.conn.execute("SELECT hash FROM live")}

    def test_without_a_checkpoint_all_are_dead(self):
        self.snapshot("2-queued", "queued")
        plan, live = self.plan()
        self.assertEqual((plan.dead_blobs, live), (3, set()))
        self.assertEqual([p.fate for p in plan.commits[0].packs], ["drop"])

    def test_interrupted_scans_checkpoint_keeps_its_blobs_live(self):
        self.snapshot("2-queued", "queued")
        self.checkpoint("2-queued", [H1, H2])
        plan, live = self.plan()
        self.assertEqual(live, {H1, H2})
        self.assertEqual(plan.dead_blobs, 1)
        self.assertEqual([p.fate for p in plan.commits[0].packs], ["keep"])

    def test_a_scan_left_scanning_counts_too(self):
        self.snapshot("2-scanning", "scanning")
        self.checkpoint("2-scanning", [H2])
        _, live = self.plan()
        self.assertEqual(live, {H2})

    def test_a_failed_scans_leftover_checkpoint_does_not(self):
        self.snapshot("2-failed", "failed")
        self.checkpoint("2-failed", [H1])
        plan, live = self.plan()
        self.assertEqual((plan.dead_blobs, live), (3, set()))

    def test_an_unreadable_checkpoint_stops_the_prune(self):
        self.snapshot("2-queued", "queued")
        self.checkpoint("2-queued", [H1])
        os.unlink(os.path.join(self.logs, "2-queued.log.tmp0"))
        e = self.assertRaises(PruneError, self.plan)
        self.assertIn("checkpoint of the interrupted scan of 2-queued", str(e))

