"""
The wall clock set back an hour and forward a day while the daemon runs:
the maintenance schedule, stall detection, retry backoff and snapshot
times follow the monotonic clock (a ``task.Clock`` here) and record the
wall clock, which jumps.
"""

import os

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import clock as clockmod
from gridbackupd.config import BackupConfig, MaintenanceConfig, RetentionConfig, UploadConfig
from gridbackupd.errors import TahoeUnavailable
from gridbackupd.grid.retry import RetryPolicy, retrying
from gridbackupd.maintenance import scheduler
from gridbackupd.maintenance.forget import plan_forget
from gridbackupd.maintenance.jobs import JobContext
from gridbackupd.maintenance.retention import RetentionPolicy
from gridbackupd.scan.jobs import BackupJobs
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots
from gridbackupd.statedir import StateDir
from gridbackupd.upload.stall import STALL_AFTER
from gridbackupd.waiters import Waiters
from tests.unit.test_clock import _Reactor
from tests.unit.test_recovery import RecoveryCase

T0 = 1_800_000_000.0
HOUR = 3600.0
DAY = 86400.0


class JumpyWall:
    """A wall clock that runs with ``clock`` and jumps by ``offset``."""

    def __init__(self, clock):
        self.clock = clock
        self.offset = 0.0

    def __call__(self):
        return T0 + self.clock.seconds() + self.offset


class ScheduleTests(SynchronousTestCase):
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.db_path = os.path.join(base, "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        self.addCleanup(self.conn.close)
        self.clock = Clock()
        self.wall = JumpyWall(self.clock)
        self.ran = []

        async def run(m, ctx):
            self.ran.append(ctx.job_id)
            return {}

        self.patch(scheduler, "RUNNERS", {k: run for k in scheduler.KINDS})

    def make(self):
        template = JobContext(
            reactor=self.clock, conn=self.conn, db_path=self.db_path, client=None,
            rootcap="URI:DIR2:x:y", pool=None, statedir=StateDir(os.path.dirname(self.db_path)),
            job_id="", publisher="publisher", restorer=None)
        m = scheduler.Maintenance(
            self.clock, template, MaintenanceConfig(lease_interval=HOUR, check_interval=0, drill_interval=0),
            RetentionConfig(), UploadConfig().pack_size, DeferredLock(), lambda: None, wallclock=self.wall)
        m.recover_interrupted()
        m.startService()
        self.addCleanup(m.stopService)
        return m

    def test_an_hourly_job_keeps_to_the_hour_whatever_the_wall_clock_does(self):
        m = self.make()
        self.clock.advance(HOUR)
        self.assertEqual(len(self.ran), 1)
        self.assertEqual(m.job(self.ran[0])["requested"], self.wall())  # recorded: the wall time
        # Set back an hour: the next run comes an hour after the last, not two.
        self.wall.offset = -HOUR
        self.clock.pump([scheduler.TICK] * 60)
        self.assertEqual(len(self.ran), 2)
        self.assertEqual(m.job(self.ran[1])["requested"], self.wall())
        # Set forward a day: nothing runs early, and not a day's worth of runs after.
        self.wall.offset = DAY
        self.clock.pump([scheduler.TICK] * 59)
        self.assertEqual(len(self.ran), 2)
        self.clock.pump([scheduler.TICK])
        self.assertEqual(len(self.ran), 3)
        self.clock.pump([scheduler.TICK] * 59)
        self.assertEqual(len(self.ran), 3)
        self.assertEqual(m.status()["leases"]["next_due"], self.wall() + scheduler.TICK)

    def test_a_restart_after_the_clock_was_set_back(self):
        m = self.make()
        self.clock.advance(HOUR)
        self.assertEqual(len(self.ran), 1)
        m.stopService()
        # Restarted with the clock an hour behind: the last request seems to
        # lie ahead; the job is due one interval after the start, not two.
        self.wall.offset = -2 * HOUR
        self.make()
        self.clock.pump([scheduler.TICK] * 59)
        self.assertEqual(len(self.ran), 1)
        self.clock.pump([scheduler.TICK] * 2)
        self.assertEqual(len(self.ran), 2)


class StallClockTests(RecoveryCase):
    def test_no_false_stall_and_no_late_one_when_the_wall_clock_jumps(self):
        # A snapshot that cannot be published: its parent's log is not on the grid.
        self.snapshot("s2", [5000])
        with dbmod.transaction(self.conn):
            self.conn.execute("INSERT INTO snapshots (id, state, host, requested) VALUES ('s1', 'failed', 'h', 0)")
            self.conn.execute("UPDATE snapshots SET kind = 'incremental', parent = 's1' WHERE id = 's2'")
        wall = JumpyWall(self.reactor)
        self.uploader.stall.wallclock = wall
        self.uploader.start()
        self.addCleanup(self.uploader.stop)
        idle_at = wall()
        self.reactor.advance(STALL_AFTER / 2)
        wall.offset = DAY  # no stall for a day of wall time
        self.reactor.advance(STALL_AFTER / 2 - 1)
        self.assertIsNone(self.uploader.status()["stalled"])
        wall.offset = -HOUR  # nor an hour more to wait for one
        self.reactor.advance(2)
        stalled = self.uploader.status()["stalled"]
        self.assertIsNotNone(stalled)
        self.assertEqual(stalled["since"], idle_at)  # a wall time, for a person


class BackoffClockTests(SynchronousTestCase):
    def test_a_retry_waits_its_backoff_not_an_hour_more(self):
        times = {"wall": T0, "mono": 100.0}
        reactor = clockmod.steady_reactor(_Reactor(), monotonic=lambda: times["mono"],
                                          wall=lambda: times["wall"])
        attempts = []

        async def flaky():
            attempts.append(times["mono"])
            if len(attempts) < 3:
                raise TahoeUnavailable("the node is away")
            return "done"

        d = Deferred.fromCoroutine(retrying(reactor, RetryPolicy(base=5, jitter=False), "put", flaky))
        for _ in range(4):
            times["wall"] -= HOUR
            times["mono"] += 5
            times["wall"] += 5
            reactor.runUntilCurrent()
            times["mono"] += 5
            times["wall"] += DAY
            reactor.runUntilCurrent()
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(attempts, [100.0, 105.0, 115.0])  # waits of 5 s and 10 s
        self.flushLoggedErrors()


class SnapshotTimeTests(SynchronousTestCase):
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.conn = dbmod.open_database(os.path.join(base, "state.sqlite"))
        self.addCleanup(self.conn.close)
        self.jobs = BackupJobs(Clock(), self.conn, StateDir(base), None, BackupConfig(paths=("/data",)),
                               "host", lambda snapshot_id: None, Waiters())
        self.jobs.kick = lambda: None  # requests only: no scan runs here
        self.now = T0
        previous = clockmod.set_wall_source(lambda: self.now)
        self.addCleanup(clockmod.set_wall_source, previous)

    def made(self, clock_at_scan):
        """A snapshot requested now, scanned with the wall clock at ``clock_at_scan``, published."""
        snapshot_id = self.jobs.request()
        started = self.jobs.not_before_the_newest(clock_at_scan)  # what run_scan records
        snapshots.mark_scanning(self.conn, snapshot_id, started)
        self.conn.execute("UPDATE snapshots SET state = 'complete', log_cap = 'URI:LIT:' WHERE id = ?",
                          (snapshot_id,))
        return snapshot_id

    def test_a_clock_set_right_after_a_day_ahead_keeps_the_newest(self):
        # A scan started while the clock was a day ahead; then the clock is
        # put right and the next snapshot is made.
        ahead = self.made(clock_at_scan=T0 + DAY)
        self.now += 600
        newest = self.made(clock_at_scan=T0 + 600)
        self.assertLess(ahead, newest)  # ids sort in the order the snapshots were made
        rows = {r[0]: r[3] for r in snapshots.lineage(self.conn)}
        self.assertGreater(rows[newest], rows[ahead])
        plan = plan_forget(self.conn, RetentionPolicy(keep_last=1))
        self.assertEqual((list(plan.keep), list(plan.forget)), ([newest], [ahead]))

    def test_a_clock_set_back_an_hour_makes_no_snapshot_older_than_the_last(self):
        first = self.made(clock_at_scan=T0)
        self.now -= HOUR
        second = self.jobs.request()
        self.assertLess(first, second)
        requested = self.conn.execute("SELECT requested FROM snapshots WHERE id = ?", (second,)).fetchone()[0]
        self.assertGreater(requested, T0)
