"""
Tests of gridbackupd.leases (and the walk of gridbackupd.reachable) on the
shared real grid: leases are read from the storage servers' share files.
"""

import os
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from gridbackupd.errors import TahoeServerError
from gridbackupd.grid.layout import commit_path, log_path
from gridbackupd.grid.retry import RetryPolicy
from gridbackupd.maintenance import reachable
from gridbackupd.maintenance.jobs import JobContext, JobStopped
from gridbackupd.maintenance.leases import renew_leases
from gridbackupd.maintenance.reachable import ROOT, walk
from gridbackupd.state.db import open_database
from gridbackupd.testing.fake_tahoe import fake_client
from tests.support.daemoncase import DaemonTestCase
from tests.support.gridshares import backdate_leases, lease_expirations, share_files
from tests.support.maintenance import make_context, reachable_objects
from tests.support.sharedgrid import shared_grid

DAY = 24 * 60 * 60


class RenewLeasesTests(DaemonTestCase):
    files = 12

    async def _start(self):
        await super()._start()
        self.grid = shared_grid()
        if self.grid is None:
            self.skipTest("the grid comes from outside: its share files are not at hand")
        await self.backup()
        self.objects = await reachable_objects(self.daemon)
        self.with_shares = [o for o in self.objects if not o.literal]
        self.assertTrue(self.with_shares, "the backup has objects with shares")
        self.backdated = int(time.time()) + DAY
        for obj in self.with_shares:
            self.backdate(obj.cap)

    def backdate(self, cap):
        paths = share_files(self.grid, cap)
        self.assertTrue(paths, "an object with shares has share files")
        for path in paths:
            self.assertGreater(backdate_leases(path, self.backdated), 0)
            self.assertEqual(set(lease_expirations(path)), {self.backdated})

    def assert_renewed(self, cap):
        paths = share_files(self.grid, cap)
        self.assertTrue(paths)
        soon = time.time() + 30 * DAY
        for path in paths:
            self.assertGreaterEqual(max(lease_expirations(path)), soon)

    def assert_backdated(self, cap):
        paths = share_files(self.grid, cap)
        self.assertTrue(paths)
        for path in paths:
            self.assertEqual(set(lease_expirations(path)), {self.backdated})

    def test_walk_names_the_layout(self):
        names = {o.name for o in self.objects}
        self.assertIn(ROOT, names)
        for name in ("gridbackup.json", "lock", "snapshot-days", "commit-days"):
            self.assertIn(name, names)
        self.assertTrue(any(log_path(n) for n in names))
        self.assertTrue(any((commit_path(n) or (None, None))[1] == "index" for n in names))
        self.assertTrue(any("/pack-" in n for n in names))
        self.assertEqual(len(names), len(self.objects), "each object once")

    async def test_renews_every_reachable_object_and_nothing_else(self):
        unrelated = await self.daemon.client.upload_bytes(os.urandom(4000))
        self.backdate(unrelated)

        ctx = make_context(self.daemon, {"parallel": 3})
        result = await renew_leases(ctx)

        self.assertEqual(result["objects"], len(self.objects))
        self.assertEqual(result["renewed"], len(self.with_shares))
        self.assertEqual(result["skipped"], len(self.objects) - len(self.with_shares))
        self.assertEqual((result["failed"], result["failures"], result["resumed"]), (0, [], 0))
        self.assertEqual(result["unhealthy"], 0)
        self.assertEqual(ctx.progress["done"], len(self.objects))
        self.assertEqual(ctx.progress["total"], len(self.objects))
        self.assertEqual(ctx.progress["errors"], 0)
        for obj in self.with_shares:
            self.assert_renewed(obj.cap)
        self.assert_backdated(unrelated)
        # Every object is marked done, for a resume.
        self.assertEqual(ctx.done_items(), {o.name for o in self.objects})

    async def test_resume_skips_objects_already_done(self):
        done = self.with_shares[::2]
        rest = self.with_shares[1::2]
        self.assertTrue(done and rest)
        ctx = make_context(self.daemon)
        ctx.mark_done([o.name for o in done])

        result = await renew_leases(ctx)

        self.assertEqual(result["resumed"], len(done))
        self.assertEqual(result["renewed"], len(rest))
        self.assertEqual(result["failed"], 0)
        self.assertEqual(ctx.progress["done"], len(self.objects))
        for obj in done:
            self.assert_backdated(obj.cap)
        for obj in rest:
            self.assert_renewed(obj.cap)
        # Another job id starts from nothing.
        again = await renew_leases(make_context(self.daemon))
        self.assertEqual((again["resumed"], again["renewed"]), (0, len(self.with_shares)))
        for obj in done:
            self.assert_renewed(obj.cap)

    async def test_a_failure_is_recorded_and_the_walk_goes_on(self):
        ctx = make_context(self.daemon)
        real = ctx.client
        victim = next(o for o in self.with_shares if "/pack-" in o.name)

        class Refusing:
            """The real client, but its check of one object fails."""

            def __getattr__(self, name):
                return getattr(real, name)

            async def check(self, cap, **kwargs):
                if cap == victim.cap:
                    raise TahoeServerError("check", 500, "boom", cap=cap)
                return await real.check(cap, **kwargs)

        ctx.client = Refusing()
        result = await renew_leases(ctx)

        self.assertEqual(result["failed"], 1)
        self.assertEqual(result["renewed"], len(self.with_shares) - 1)
        [failure] = result["failures"]
        self.assertEqual(failure["name"], victim.name)
        self.assertIn("boom", failure["reason"])
        self.assertNotIn(victim.cap, repr(result))
        self.assertNotIn(victim.name, ctx.done_items())
        self.assertEqual(ctx.progress["errors"], 1)
        self.assert_backdated(victim.cap)


class FakeGridRunTests(TestCase):
    """The walk and the resumable run, on the in-memory fake Tahoe (fast, exact)."""

    async def setUp(self):
        self.client, self.fake = fake_client(retry=RetryPolicy(attempts=1))
        self.conn = open_database(os.path.join(os.path.abspath(self.mktemp()), "state.db"))
        self.addCleanup(self.conn.close)
        client = self.client
        self.root = await client.mkdir()
        commits = await client.mkdir()
        files = {f"pack-{i:02d}": await client.upload_bytes(os.urandom(100) + bytes([i]))
                 for i in range(30)}
        files["tiny"] = await client.upload_bytes(b"literal")
        files["loop"] = self.root  # a link back to the root: walked once
        await client.set_children(commits, files)
        extra = await client.mkdir_immutable({"inner": await client.upload_bytes(os.urandom(80))})
        await client.set_children(self.root, {"commits": commits, "extra-thing": extra})

    def context(self, client=None, **options):
        return JobContext(reactor=reactor, conn=self.conn, db_path=None,
                          client=client or self.client, rootcap=self.root, pool=None,
                          statedir=None, job_id="job-1", options=options)

    async def test_walk_finds_everything_once(self):
        found = []
        await walk(self.client, self.root, found.append, parallel=2)
        names = [o.name for o in found]
        self.assertEqual(names[0], ROOT)
        self.assertEqual(sorted(names), sorted(
            [ROOT, "commits", "commits/tiny", "extra-thing", "extra-thing/inner"]
            + [f"commits/pack-{i:02d}" for i in range(30)]))
        self.assertEqual([o.name for o in found if o.literal], ["commits/tiny"])

    async def test_bounded_throttled_and_resumable_after_a_stop(self):
        self.patch(reachable, "HIGH_WATER", 4)
        checked = []
        running = [0, 0]  # now, most at once
        ctx = self.context(parallel=3)

        class Counting:
            def __getattr__(self, name):
                return getattr(client, name)

            async def check(self, cap, **kwargs):
                running[0] += 1
                running[1] = max(running[1], running[0])
                try:
                    await deferLater(reactor, 0, lambda: None)
                    checked.append(cap)
                    if len(checked) == 20:
                        ctx.stopping = True
                    return await client.check(cap, **kwargs)
                finally:
                    running[0] -= 1

        client = self.client
        ctx.client = Counting()

        with self.assertRaises(JobStopped):
            await renew_leases(ctx)
        self.assertLessEqual(running[1], 3)
        first = set(checked)
        done = ctx.done_items()
        # Everything that was checked is marked done, and nothing else
        # (the literal one is done without a check).
        self.assertGreaterEqual(len(done), 20)
        del checked[:]
        ctx.stopping = False
        ctx.progress.clear()
        result = await renew_leases(ctx)
        self.assertEqual(result["objects"], 35)
        self.assertEqual(result["skipped"] + result["renewed"] + result["resumed"], 35)
        self.assertEqual(result["resumed"], len(done))
        self.assertFalse(first & set(checked), "nothing is checked twice")
        self.assertEqual(len(first | set(checked)), 34)
        self.assertEqual(ctx.progress["done"], 35)
