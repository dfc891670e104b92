"""
The state transitions of scanning and uploading (state/snapshots, blobs,
packs, commits): each keeps the invariant its docstring states.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.scan.values import NewBlob
from gridbackupd.state import blobs, commits, packs, queue, snapshots
from gridbackupd.state import db as dbmod


def h(n):
    return f"{n:064x}"


class Base(SynchronousTestCase):
    def setUp(self):
        d = self.mktemp()
        os.makedirs(d)
        self.conn = dbmod.open_database(os.path.join(d, "state.sqlite"))
        self.addCleanup(self.conn.close)

    def queue(self, snapshot_id, *numbers):
        queue.add_uncommitted(self.conn, snapshot_id,
                              [NewBlob(h(n), 10 + n, b"/f%d" % n, 0, 0) for n in numbers])

    def state(self, n):
        return self.conn.execute("SELECT state FROM blobs WHERE hash = ?", (h(n),)).fetchone()[0]

    def snapshot(self, snapshot_id):
        return self.conn.execute(
            "SELECT state, log_cap, complete FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()

    def listed(self, snapshot_id):
        return self.conn.execute(
            "SELECT count(*) FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,)).fetchone()[0]

    def upload(self, name, *numbers):
        return packs.record(self.conn, name, "URI:CHK:" + name, 100,
                            [(h(n), 10 * i, 10, "none") for i, n in enumerate(numbers)])


class BlobTests(Base):
    def test_pack_then_commit_then_link(self):
        self.queue("s1", 1, 2, 3)
        pack_id = self.upload("p1", 1, 2)
        blobs.mark_inlined(self.conn, {h(3): b"three"})
        self.assertEqual([self.state(n) for n in (1, 2, 3)], ["uploaded"] * 3)
        self.assertEqual(packs.uncommitted(self.conn), [(pack_id, "p1", "URI:CHK:p1")])
        self.assertEqual(blobs.uncommitted_inline(self.conn), [(h(3), b"three")])
        self.assertEqual([r[:2] for r in blobs.placed_in_packs(self.conn, [pack_id])],
                         [(h(1), "p1"), (h(2), "p1")])
        self.assertTrue(packs.anything_uncommitted(self.conn))

        commits.record(self.conn, "c1", "URI:DIR2-CHK:c1", [pack_id], [h(3)])
        # Recorded is not linked: nothing is committed yet, nothing waits for a commit.
        self.assertEqual(commits.unlinked(self.conn), [("c1", "URI:DIR2-CHK:c1")])
        self.assertEqual([self.state(n) for n in (1, 2, 3)], ["uploaded"] * 3)
        self.assertFalse(packs.anything_uncommitted(self.conn))

        commits.mark_linked(self.conn, ["c1"])
        self.assertEqual(commits.unlinked(self.conn), [])
        self.assertEqual([self.state(n) for n in (1, 2, 3)], ["committed"] * 3)

    def test_moves_only_pending_blobs(self):
        self.queue("s1", 1, 2)
        pack_id = self.upload("p1", 1)
        commits.record(self.conn, "c1", "cap", [pack_id], [])
        commits.mark_linked(self.conn, ["c1"])
        blobs.mark_stale(self.conn, [h(1), h(2)])
        self.assertEqual((self.state(1), self.state(2)), ("committed", "stale"))
        self.upload("p2", 1)
        self.assertEqual(self.state(1), "committed")
        self.assertEqual(blobs.committed_among(self.conn, [h(1), h(2), h(9)]), {h(1)})

    def test_committed_blobs_are_not_queued_again(self):
        self.queue("s1", 1)
        commits.record(self.conn, "c1", "cap", [self.upload("p1", 1)], [])
        commits.mark_linked(self.conn, ["c1"])
        self.queue("s2", 1, 2)
        self.assertEqual(self.listed("s2"), 1)
        self.assertEqual(queue.pending_totals(self.conn), (1, 12))

    def test_only_retired_commits_are_dropped(self):
        commits.record(self.conn, "live", "cap", [], [])
        commits.drop_retired(self.conn, "live")
        self.conn.execute("UPDATE commits SET linked = -1 WHERE name = 'live'")
        self.assertEqual(commits.retired(self.conn), ["live"])
        commits.drop_retired(self.conn, "live")
        self.assertEqual(commits.retired(self.conn), [])
        self.assertEqual(commits.unlinked(self.conn), [])

    def test_spool_sources_are_forgotten(self):
        queue.add_uncommitted(self.conn, "s1", [NewBlob(h(1), 5, b"/spool/x", 0, 0),
                                                NewBlob(h(2), 5, b"/home/x", 0, 0)])
        commits.record(self.conn, "c1", "cap", [self.upload("p1", 1, 2)], [])
        commits.mark_linked(self.conn, ["c1"])
        self.assertEqual(blobs.committed_sources_under(self.conn, b"/spool/"), [(h(1), b"/spool/x")])
        self.assertEqual(blobs.committed_sources_under(self.conn, b"/spool/", [h(2)]), [])
        blobs.forget_sources(self.conn, [h(1)])
        self.assertEqual(blobs.committed_sources_under(self.conn, b"/spool/"), [])
        self.assertEqual(self.state(1), "committed")


class SnapshotTests(Base):
    def test_lifecycle(self):
        snapshots.create_queued(self.conn, "s1", "h", ["/home"], ["t"], 1.0)
        self.assertEqual(snapshots.next_queued(self.conn), "s1")
        self.assertEqual(snapshots.tags(self.conn, "s1"), ["t"])
        snapshots.mark_scanning(self.conn, "s1", 2.0)
        self.assertIsNone(snapshots.next_queued(self.conn))
        self.assertEqual(snapshots.scanning_ids(self.conn), ["s1"])
        snapshots.set_kind(self.conn, "s1", "full", "s0")
        self.queue("s1", 1)
        snapshots.mark_uploading(self.conn, "s1", kind="full", parent="s0", started=2.0, finished=3.0,
                                 files=1, bytes=11, errors=[], log_path="/logs/s1.log")
        self.assertEqual(snapshots.newest_scanned(self.conn, "h"), [("s1", "/logs/s1.log")])
        self.assertEqual(snapshots.newest_scanned(self.conn, "other"), [])
        # Its blob is pending: not ready.
        self.assertEqual(snapshots.ready_to_publish(self.conn), [])
        blobs.mark_stale(self.conn, [h(1)])
        self.assertEqual(snapshots.ready_to_publish(self.conn), [("s1", "/logs/s1.log")])
        self.assertEqual(snapshots.stale_blob_count(self.conn, "s1"), 1)
        snapshots.mark_complete(self.conn, "s1", "URI:log", complete=False)
        self.assertEqual(self.snapshot("s1"), ("incomplete", "URI:log", 0))
        self.assertEqual(self.listed("s1"), 0)

    def test_an_incremental_waits_for_its_parents_log(self):
        for sid, parent in (("s1", None), ("s2", "s1")):
            snapshots.create_queued(self.conn, sid, "h", [], [], 1.0)
            snapshots.mark_uploading(self.conn, sid, kind="incremental" if parent else "full",
                                     parent=parent, started=1.0, finished=2.0, files=0, bytes=0,
                                     errors=[], log_path=f"/{sid}")
        self.assertEqual(snapshots.ready_to_publish(self.conn), [("s1", "/s1")])
        snapshots.mark_complete(self.conn, "s1", "URI:1", complete=True)
        self.assertEqual(self.snapshot("s1"), ("complete", "URI:1", 1))
        self.assertEqual(snapshots.ready_to_publish(self.conn), [("s2", "/s2")])

    def test_requeue_keeps_blobs_only_with_a_checkpoint(self):
        for sid in ("s1", "s2"):
            snapshots.create_queued(self.conn, sid, "h", [], [], 1.0)
            snapshots.mark_scanning(self.conn, sid, 2.0)
            self.queue(sid, 1)
            snapshots.add_error(self.conn, sid, {"path": None, "reason": "x"})
        snapshots.requeue(self.conn, "s1", keep_blobs=True)
        snapshots.requeue(self.conn, "s2", keep_blobs=False)
        self.assertEqual((self.listed("s1"), self.listed("s2")), (1, 0))
        rows = self.conn.execute("SELECT state, started, errors FROM snapshots ORDER BY id").fetchall()
        self.assertEqual(rows, [("queued", None, "[]")] * 2)

    def test_failed(self):
        snapshots.create_queued(self.conn, "s1", "h", [], [], 1.0)
        snapshots.mark_failed(self.conn, "s1", 5.0, [{"path": None, "reason": "no"}])
        snapshots.add_error(self.conn, "s1", {"path": None, "reason": "post"})
        self.assertEqual(self.conn.execute("SELECT state, finished, errors FROM snapshots").fetchone(),
                         ("failed", 5.0, '[{"path": null, "reason": "no"}, {"path": null, "reason": "post"}]'))
