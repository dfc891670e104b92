"""
Forget racing the publisher, on the fake Tahoe with Deferreds the test
fires: whatever the order, the kept child's log on the grid ends full, its
cap is the one recorded, and the chain after it goes on being published.
"""

import io
import os

import attr
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.logreader import LogReader
from gridbackupd.format.logwriter import write_log
from gridbackupd.maintenance import forget as forgetmod
from gridbackupd.maintenance.jobs import JobContext
from gridbackupd.model import FILE, Entry, LogHeader
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots
from gridbackupd.statedir import StateDir
from gridbackupd.testing.fake_tahoe import fake_client
from gridbackupd.upload.publisher import Publisher, settings_document

H1 = "1" * 64
H2 = "2" * 64


def run(coro):
    return Deferred.fromCoroutine(coro)


@attr.define(eq=False)
class HeldContext(JobContext):
    """A job context whose worker-thread calls wait for the test (``release``) when ``hold`` is set."""

    hold: bool = False
    held: list = attr.Factory(list)

    def in_thread(self, fn, *args):
        if not self.hold:
            return Deferred.fromCoroutine(_now(fn, *args))
        d: Deferred = Deferred()
        self.held.append((d, fn, args))
        return d

    def release(self):
        d, fn, args = self.held.pop(0)
        d.callback(fn(*args))


async def _now(fn, *args):
    return fn(*args)


class ForgetPublishRaceTests(SynchronousTestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.db_path = os.path.join(self.base, "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        self.addCleanup(self.conn.close)
        self.client, self.fake = fake_client()
        root = self.successResultOf(run(self.client.mkdir()))
        settings = settings_document(ChunkParams(), 128, 1048576, 2048)
        self.publisher = Publisher(self.conn, self.client, settings, writer_id="w", host="h",
                                   now=lambda: 1e9)
        self.successResultOf(run(self.publisher.ensure_layout(root)))
        self.ctx = HeldContext(
            reactor=self.fake.clock, conn=self.conn, db_path=self.db_path, client=self.client,
            rootcap=root, pool=None, statedir=StateDir(self.base), job_id="forget-1",
            publisher=self.publisher)
        # The parent: a full log, published.  The child: an increment on it,
        # scanned, its blobs all committed, not yet published.
        parent = self.write_log("1-parent", "full", None, [self.entry(b"/a", H1)])
        cap = self.successResultOf(run(self.client.upload_file(parent)))
        self.successResultOf(run(self.publisher.link_snapshot_log("1-parent", cap)))
        child = self.write_log("2-child", "incremental", "1-parent", [self.entry(b"/b", H2)])
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO snapshots (id, state, kind, parent, host, requested, log_path, log_cap, "
                "complete) VALUES ('1-parent', 'complete', 'full', NULL, 'h', 1, ?, ?, 1), "
                "('2-child', 'uploading', 'incremental', '1-parent', 'h', 2, ?, NULL, 0)",
                (parent, cap, child))
        self.plan = forgetmod.plan_forget(self.conn, ids=["1-parent"])
        self.assertEqual((self.plan.forget, self.plan.rewrite_full), (("1-parent",), ("2-child",)))

    @staticmethod
    def entry(path, blob):
        return Entry(path=path, kind=FILE, mode=0o644, size=1, blobs=[(blob, 1)])

    def write_log(self, snapshot_id, kind, parent, records):
        path = os.path.join(self.base, snapshot_id + ".log")
        with open(path, "wb") as f:
            write_log(f, LogHeader(snapshot=snapshot_id, kind=kind, parent=parent, host="h"), records)
        return path

    def grid_logs(self):
        return self.successResultOf(run(self.publisher.layout.linked_logs(self.client)))

    def assert_child_full_on_grid(self):
        logs = self.grid_logs()
        self.assertEqual(set(logs), {"2-child"})
        data = self.successResultOf(run(self.client.download(logs["2-child"].cap)))
        header = LogReader(io.BytesIO(data)).header
        self.assertEqual((header.kind, header.parent), ("full", None))
        kind, _, log_cap = snapshots.log_of(self.conn, "2-child")
        self.assertEqual((kind, log_cap), ("full", logs["2-child"].cap))
        self.assertEqual(snapshots.state_of(self.conn, "2-child"), "complete")
        # The next increment, on the child, is published in its turn.
        grandchild = self.write_log("3-grandchild", "incremental", "2-child", [self.entry(b"/c", H1)])
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO snapshots (id, state, kind, parent, host, requested, log_path) "
                "VALUES ('3-grandchild', 'uploading', 'incremental', '2-child', 'h', 3, ?)",
                (grandchild,))
        self.assertEqual(self.successResultOf(run(self.publisher.publish_snapshots())), ["3-grandchild"])

    def test_child_published_while_its_full_log_is_written(self):
        """The child's log cap is read before the full log is written and set meanwhile."""
        self.ctx.hold = True
        done = run(forgetmod.forget(self.ctx, self.plan))
        self.assertEqual(len(self.ctx.held), 1)  # writing the full log
        self.assertEqual(self.successResultOf(run(self.publisher.publish_snapshots())), ["2-child"])
        self.ctx.hold = False  # the job's later calls (the figures owed) run at once
        self.ctx.release()
        self.assertEqual(self.successResultOf(done), {"snapshots_forgotten": 1, "logs_rewritten": 1})
        self.assert_child_full_on_grid()

    def test_child_published_after_its_log_is_rewritten(self):
        self.assertEqual(self.successResultOf(run(forgetmod.forget(self.ctx, self.plan))),
                         {"snapshots_forgotten": 1, "logs_rewritten": 1})
        self.assertEqual(self.grid_logs(), {})
        self.assertEqual(self.successResultOf(run(self.publisher.publish_snapshots())), ["2-child"])
        self.assert_child_full_on_grid()

    def test_publisher_mid_upload_when_the_rewrite_is_ready(self):
        """The publisher holds its lock while it uploads the increment: the rewrite waits for it."""
        upload = self.client.upload_file
        paused: list = []

        def pausing_upload(path):
            if not paused:
                d: Deferred = Deferred()
                paused.append(d)
                return d.addCallback(lambda _: run(upload(path)))
            return upload(path)

        self.client.upload_file = pausing_upload  # type: ignore[method-assign]
        published = run(self.publisher.publish_snapshots())
        self.assertEqual(len(paused), 1)
        done = run(forgetmod.forget(self.ctx, self.plan))
        self.assertNoResult(done)
        self.assertTrue(os.path.exists(snapshots.log_of(self.conn, "2-child")[1] + ".full"))
        paused[0].callback(None)
        self.assertEqual(self.successResultOf(published), ["2-child"])
        self.assertEqual(self.successResultOf(done), {"snapshots_forgotten": 1, "logs_rewritten": 1})
        self.assert_child_full_on_grid()

    def test_a_crash_after_the_replace_is_settled_at_start(self):
        """
        forget.full_log_replaced: the log on disk is full, the row still
        names the parent.  The start makes the row say full, so the child
        does not wait for the parent even if the parent's row goes first.
        """
        log_path = snapshots.log_of(self.conn, "2-child")[1]
        forgetmod.write_full_log(self.db_path, "2-child", log_path + ".full")
        os.replace(log_path + ".full", log_path)
        self.assertEqual(forgetmod.settle_replaced_logs(self.conn), ["2-child"])
        self.assertEqual(forgetmod.settle_replaced_logs(self.conn), [])
        snapshots.forget(self.conn, "1-parent")
        self.assertEqual(self.successResultOf(run(self.publisher.publish_snapshots())), ["2-child"])

    def test_an_increment_on_disk_is_left_as_it_is(self):
        self.assertEqual(forgetmod.settle_replaced_logs(self.conn), [])
        self.assertEqual(snapshots.log_of(self.conn, "2-child")[0], "incremental")
