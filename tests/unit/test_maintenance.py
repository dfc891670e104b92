"""
The maintenance scheduler on a Clock: what is due when, one job at a time,
resumed after a stop or a kill, failures kept and reported.
"""

import os

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gridbackupd.api import metrics
from gridbackupd.config import MaintenanceConfig, RetentionConfig, UploadConfig
from gridbackupd.errors import TahoeUnavailable
from gridbackupd.maintenance import scheduler as maintenance
from gridbackupd.maintenance.jobs import JobContext, JobStopped
from gridbackupd.state import db as dbmod
from gridbackupd.statedir import StateDir

DAY = 86400.0


class SchedulerTests(TestCase):
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.db_path = os.path.join(base, "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        self.addCleanup(self.conn.close)
        self.scan_lock = DeferredLock()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.ran = []
        self.behaviour = {}
        self.patch(maintenance, "RUNNERS", {k: self._runner(k) for k in maintenance.KINDS})

    def _runner(self, kind):
        async def run(m, ctx):
            self.ran.append((kind, ctx.job_id, ctx.is_done("item-1")))
            ctx.progress.update(done=1, total=2, errors=0)
            how = self.behaviour.get(kind)
            if how == "stop":
                ctx.mark_done(["item-1"])
                raise JobStopped("stopping")
            if how == "fail":
                raise RuntimeError("the grid said no")
            if how == "grid away":
                ctx.mark_done(["item-1"])
                raise TahoeUnavailable("connection refused by the tahoe node\n(at its second try)")
            if isinstance(how, Deferred):
                await how
            return {"kind": kind}
        return run

    def make(self, retention=RetentionConfig(), grid_wait=900.0, **maint):
        template = JobContext(
            reactor=self.clock, conn=self.conn, db_path=self.db_path, client=None,
            rootcap="URI:DIR2:x:y", pool=None, statedir=StateDir(os.path.dirname(self.db_path)),
            job_id="", publisher="publisher", restorer=None)
        m = maintenance.Maintenance(self.clock, template, MaintenanceConfig(**maint), retention,
                                    UploadConfig().pack_size, self.scan_lock, lambda: None,
                                    grid_wait=grid_wait)
        m.startService()
        self.addCleanup(m.stopService)
        return m

    def kinds(self):
        return [k for k, _, _ in self.ran]

    def test_nothing_is_due_at_the_first_start(self):
        self.make(lease_interval=7 * DAY, check_interval=14 * DAY, drill_interval=DAY)
        self.assertEqual(self.ran, [])
        self.clock.advance(DAY)
        self.assertEqual(self.kinds(), ["drill"])
        self.clock.pump([DAY] * 6)
        self.assertEqual(sorted(self.kinds()), ["drill"] * 7 + ["leases"])
        # A daemon asleep for a week runs what is due once, not once per missed day.
        self.clock.advance(7 * DAY)
        self.assertEqual(sorted(self.kinds()), ["check"] + ["drill"] * 8 + ["leases"] * 2)
        # Forget runs on a schedule only with a policy.
        self.assertNotIn("forget", self.kinds())

    def test_forget_scheduled_with_a_policy(self):
        self.make(retention=RetentionConfig(keep_daily=7, interval=DAY),
                  lease_interval=0, check_interval=0, drill_interval=0)
        self.clock.advance(DAY)
        self.assertEqual(self.kinds(), ["forget"])

    def test_a_restart_does_not_repeat_a_weekly_job(self):
        m = self.make(lease_interval=7 * DAY, check_interval=0, drill_interval=0)
        self.clock.advance(7 * DAY)
        self.assertEqual(self.kinds(), ["leases"])
        m.stop()
        self.make(lease_interval=7 * DAY, check_interval=0, drill_interval=0)
        self.clock.advance(DAY)
        self.assertEqual(self.kinds(), ["leases"])

    def test_stopped_job_resumes_with_its_items(self):
        m = self.make(lease_interval=0, check_interval=0, drill_interval=0)
        self.behaviour["leases"] = "stop"
        job_id = m.request("leases")
        self.assertEqual(self.ran, [("leases", job_id, False)])
        self.assertEqual(m.job(job_id)["state"], "queued")
        m.stop()
        del self.behaviour["leases"]
        # A kill in the middle leaves the row running: the next start resumes it too.
        self.conn.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (job_id,))
        m2 = self.make(lease_interval=0, check_interval=0, drill_interval=0)
        self.assertEqual(self.ran[-1], ("leases", job_id, True))
        self.assertEqual(m2.job(job_id)["state"], "done")
        self.assertEqual(m2.job(job_id)["result"], {"kind": "leases"})
        # A finished job's items are gone.
        self.assertEqual(self.conn.execute("SELECT count(*) FROM job_items").fetchone()[0], 0)

    def test_failure_is_kept_and_reported(self):
        m = self.make(lease_interval=0, check_interval=0, drill_interval=0)
        self.behaviour["check"] = "fail"
        job_id = m.request("check", {"repair": False})
        doc = m.job(job_id)
        self.assertEqual((doc["state"], doc["error"]), ("failed", "the grid said no"))
        self.assertEqual(doc["options"]["repair"], False)
        self.assertEqual(m.status()["check"]["last"]["state"], "failed")
        self.assertEqual(samples(m)[("gridbackup_job_last_failed", "check")], 1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_job_waits_for_the_grid_and_resumes_its_items(self):
        m = self.make(lease_interval=0, check_interval=0, drill_interval=0)
        self.behaviour["leases"] = "grid away"
        job_id = m.request("leases")
        doc = m.job(job_id)
        self.assertEqual((doc["state"], doc["progress"]["waiting_for"]), ("running", "grid"))
        self.assertIsInstance(doc["progress"]["waiting_since"], float)
        self.clock.advance(60)
        self.assertEqual(m.job(job_id)["state"], "running")
        del self.behaviour["leases"]
        self.clock.advance(10)
        doc = m.job(job_id)
        self.assertEqual((doc["state"], doc["result"]), ("done", {"kind": "leases"}))
        self.assertNotIn("waiting_for", doc["progress"])
        # The second run skipped what the first had finished.
        self.assertEqual(self.ran[0][2], False)
        self.assertEqual(self.ran[-1], ("leases", job_id, True))

    def test_a_job_gives_up_on_the_grid_with_one_line(self):
        m = self.make(lease_interval=0, check_interval=0, drill_interval=0, grid_wait=120.0)
        self.behaviour["check"] = "grid away"
        job_id = m.request("check")
        self.clock.pump([5.0] * 30)
        doc = m.job(job_id)
        self.assertEqual(doc["state"], "failed")
        self.assertEqual(doc["error"], "gave up after waiting 120 s for the grid ([tahoe] grid_wait): "
                                       "connection refused by the tahoe node (at its second try)")
        self.flushLoggedErrors()

    def test_a_stop_while_waiting_requeues_the_job(self):
        m = self.make(lease_interval=0, check_interval=0, drill_interval=0)
        self.behaviour["drill"] = "grid away"
        job_id = m.request("drill")
        m.interrupt()
        self.clock.advance(10)
        self.assertEqual(m.job(job_id)["state"], "queued")

    def test_one_job_at_a_time_and_joining(self):
        m = self.make(lease_interval=0, check_interval=0, drill_interval=0)
        gate = self.behaviour["drill"] = Deferred()
        first = m.request("drill")
        second = m.request("leases")
        again = m.request("leases")
        self.assertEqual(second, again)
        self.assertEqual(self.kinds(), ["drill"])
        status = m.status()
        self.assertTrue(status["drill"]["running"])
        self.assertEqual(status["drill"]["progress"], {"done": 1, "total": 2, "errors": 0})
        found = samples(m)
        self.assertEqual(found[("gridbackup_job_running", "drill")], 1.0)
        self.assertEqual(found[("gridbackup_job_running", "leases")], 0.0)
        self.assertEqual(found[("gridbackup_job_items_total", "drill")], 2.0)
        gate.callback(None)
        self.assertEqual(self.kinds(), ["drill", "leases"])
        self.assertEqual([m.job(i)["state"] for i in (first, second)], ["done", "done"])

    def test_writing_jobs_hold_the_scan_lock(self):
        m = self.make(lease_interval=0, check_interval=0, drill_interval=0)
        lock = m.scan_lock
        held = succeed(None)
        held.addCallback(lambda _: lock.acquire())
        m.request("prune")
        self.assertEqual(self.ran, [])  # waits for the scan
        lock.release()
        self.assertEqual(self.kinds(), ["prune"])
        self.assertFalse(lock.locked)

    def test_unknown_kind(self):
        from gridbackupd.api.errors import answer
        from gridbackupd.errors import Invalid

        m = self.make()
        e = self.assertRaises(Invalid, m.request, "defrag")
        self.assertEqual((answer(e).status, e.code), (400, "bad_request"))


def samples(m):
    """The maintenance metrics as {(name, kind): value}."""
    return {(sample.name, sample.labels["kind"]): sample.value
            for family in metrics._maintenance_metrics(m.status()) for sample in family.samples}
