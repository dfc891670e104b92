"""
The recovery pass (``Publisher.recover``): a backup killed at any durable
step of the upload side is finished by the next start alone, with no new
request.  Against the in-memory fake Tahoe; a kill is a crash point whose
exit raises instead of ending the process, and the "restart" is a new
publisher and uploader on the same database and grid.
"""

import os
import random

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import crashpoints
from gridbackupd.format.index import settings_document
from gridbackupd.grid.retry import RetryPolicy
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import commits
from gridbackupd.state import db as dbmod
from gridbackupd.testing.fake_tahoe import fake_client
from gridbackupd.testing.inline import InlinePool, ThreadlessReactor
from gridbackupd.upload.publisher import Publisher
from gridbackupd.upload.uploader import Uploader
from tests.support.fakegrid import add_uploading_snapshot, grid_index, run, write_files


class Killed(BaseException):
    """What a crash point raises here instead of ending the process."""


def kill(status):
    raise Killed(status)



# The points an upload round passes (the scan's and the start's are elsewhere).
UPLOAD_POINTS = sorted(
    name for name, point in crashpoints.POINTS.items()
    if point.scenario == "backup" and name.split(".")[0] in ("packer", "uploader", "publisher"))


class RecoveryCase(SynchronousTestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.base, "files"))
        self.conn = dbmod.open_database(os.path.join(self.base, "state.sqlite"))
        self.addCleanup(self.conn.close)
        self.reactor = ThreadlessReactor()
        self.client, self.fake = fake_client(clock=self.reactor, retry=RetryPolicy(attempts=1))
        self.root = self.successResultOf(run(self.client.mkdir()))
        self.rnd = random.Random(18)
        self.addCleanup(crashpoints.configure, {})
        self.restart()

    def restart(self, crash_at=None):
        """A new publisher and uploader on the same state, as a new process would have."""
        env = {crashpoints.TESTING: "1", crashpoints.CRASH_AT: crash_at} if crash_at else {}
        crashpoints.configure(env, exit=kill)
        self.publisher = Publisher(
            self.conn, self.client, settings_document(ChunkParams(), 128, 1 << 20, 2048),
            writer_id="w-test", host="test", now=self.reactor.seconds)
        self.successResultOf(run(self.publisher.ensure_layout(self.root)))
        self.uploader = Uploader(self.reactor, self.conn, self.client, self.publisher, InlinePool(),
                                 os.path.join(self.base, "packs"), pack_size=16 * 1024, inline_max=100)

    def snapshot(self, sid, sizes):
        blobs = write_files(self.rnd, os.path.join(self.base, "files"), sizes, f"{sid}-")
        add_uploading_snapshot(self.conn, self.base, sid, blobs)
        return {b.hash for b in blobs}

    def grid_blobs(self):
        """The hashes reachable from the root through the linked commits."""
        return set(grid_index(self, self.client, self.publisher.layout))

    def state_of(self, sid):
        return self.conn.execute("SELECT state FROM snapshots WHERE id = ?", (sid,)).fetchone()[0]

    def assertFinished(self, sid, hashes):
        self.assertEqual(self.state_of(sid), "complete")
        self.assertEqual(set(self.conn.execute("SELECT DISTINCT state FROM blobs")), {("committed",)})
        self.assertEqual(commits.unlinked(self.conn), [])
        self.assertTrue(hashes <= self.grid_blobs())
        published = self.successResultOf(run(self.publisher.layout.linked_logs(self.client)))
        self.assertIn(sid, published)


class CrashInUploadTests(RecoveryCase):
    """Killed at each durable step of an upload round, then restarted with nothing new asked."""

    def test_the_points_are_there(self):
        self.assertIn("publisher.commit_recorded", UPLOAD_POINTS)
        self.assertEqual(len(UPLOAD_POINTS), 11)

    def crash_and_restart(self, point):
        hashes = self.snapshot("s1", [6000] * 8 + [50, 80])
        self.restart(crash_at=point)
        self.failureResultOf(run(self.uploader.run_once()), Killed)
        self.restart()
        self.uploader.start()  # the loop runs at once on the fake grid, then idles
        self.assertFinished("s1", hashes)
        self.successResultOf(self.uploader.stop())

    def test_the_issue_repro_a_recorded_commit_never_linked(self):
        """Every blob uploaded, one commit row with linked = 0, no pack without a commit."""
        hashes = self.snapshot("s1", [6000] * 4)
        self.restart(crash_at="publisher.commit_recorded")
        self.failureResultOf(run(self.uploader.run_once()), Killed)
        self.assertEqual(len(commits.unlinked(self.conn)), 1)
        self.assertEqual(self.conn.execute("SELECT count(*) FROM packs WHERE commit_name IS NULL").fetchone()[0], 0)
        self.assertEqual(set(self.conn.execute("SELECT DISTINCT state FROM blobs")), {("uploaded",)})
        self.restart()
        self.assertTrue(self.successResultOf(run(self.uploader.run_once())))
        self.assertFinished("s1", hashes)
        # And a later backup is not held up either.
        more = self.snapshot("s2", [7000])
        self.successResultOf(run(self.uploader.run_once()))
        self.assertFinished("s2", more)


def _crash_test(point):
    def test(self):
        self.crash_and_restart(point)
    test.__doc__ = f"Killed at {point}: the restart finishes the backup by itself."
    return test


# One test per registered point: a point added to the registry is covered here.
for _point in UPLOAD_POINTS:
    setattr(CrashInUploadTests, "test_" + _point.replace(".", "_"), _crash_test(_point))


class RecoveryPassTests(RecoveryCase):
    """Each half-done step the pass finishes, whatever left it so."""

    def test_nothing_to_do_is_false(self):
        self.assertFalse(self.successResultOf(run(self.publisher.recover(at_start=True))))

    def test_blobs_of_a_linked_commit_are_marked_committed(self):
        hashes = self.snapshot("s1", [6000] * 3)
        self.successResultOf(run(self.uploader.run_once()))
        # A second snapshot of the same content, whose blobs the index says
        # are uploaded although their commit is linked.
        self.snapshot("s2", [])
        with dbmod.transaction(self.conn):
            self.conn.executemany("INSERT INTO snapshot_blobs (snapshot, hash) VALUES ('s2', ?)",
                                  [(h,) for h in hashes])
            self.conn.execute("UPDATE blobs SET state = 'uploaded'")
        self.restart()
        self.assertTrue(self.successResultOf(run(self.uploader.run_once())))
        self.assertFinished("s2", hashes)

    def test_retired_commits_are_unlinked_with_no_new_work(self):
        hashes = self.snapshot("s1", [6000] * 2)
        self.successResultOf(run(self.uploader.run_once()))
        [(name, cap)] = self.conn.execute("SELECT name, cap FROM commits").fetchall()
        # A prune replaced a commit (linked = -1) and was killed before unlinking it.
        old = "commit-" + "0" * 32
        self.successResultOf(run(self.publisher.layout.link_commits(self.client, {old: cap})))
        with dbmod.transaction(self.conn):
            self.conn.execute("INSERT INTO commits (name, cap, linked) VALUES (?, ?, -1)", (old, cap))
        self.restart()
        self.assertTrue(self.successResultOf(run(self.uploader.run_once())))
        linked = self.successResultOf(run(self.publisher.layout.linked_commits(self.client)))
        self.assertEqual(set(linked), {name})
        self.assertEqual(commits.retired(self.conn), [])
        self.assertFinished("s1", hashes)
