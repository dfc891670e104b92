"""
A daemon (in this process, on the shared real grid) whose wall clock is
set back an hour and then forward a day in the middle of a backup: the
backup completes, its times stay in order, the snapshots made after keep
the order they were made in (so retention keeps the newest), and no
maintenance job runs early.  The wall clock is ``gridbackupd.clock``'s,
jumped here; the system clock is never touched.
"""

import time

from twisted.internet.task import LoopingCall

from gridbackupd import clock as clockmod
from gridbackupd.maintenance.forget import plan_forget
from gridbackupd.maintenance.retention import RetentionPolicy
from gridbackupd.testing.configfile import write_config
from tests.support.daemoncase import DaemonTestCase

HOUR = 3600.0
DAY = 86400.0


class ClockJumpTests(DaemonTestCase):
    files = 400

    async def _start(self):
        self.offset = 0.0
        previous = clockmod.set_wall_source(lambda: time.time() + self.offset)
        self.addCleanup(clockmod.set_wall_source, previous)
        await super()._start()

    async def start_daemon(self, config_path):
        # An hourly maintenance job: a clock set forward a day must not make it due.
        extra = "[maintenance]\nlease_interval = 1h\ncheck_interval = 0\ndrill_interval = 0\n"
        config_path = write_config(self.base, self.node_url, [self.tree], extra=extra)
        await super().start_daemon(config_path)

    async def snapshot(self, snapshot_id):
        code, doc = await self.api.call("GET", f"/v1/snapshots/{snapshot_id}")
        self.assertEqual(code, 200, doc)
        return doc

    async def test_a_backup_through_a_clock_set_back_and_forward(self):
        before = time.time()
        code, body = await self.api.call("POST", "/v1/backups")
        self.assertEqual(code, 202, body)
        first = body["id"]
        # Back an hour while it scans, forward a day while it uploads.
        self.offset -= HOUR
        jumps = [("back an hour", self.daemon.jobs.state_of(first))]

        def watch():
            if len(jumps) == 1 and self.daemon.jobs.state_of(first) == "uploading":
                self.offset += DAY
                jumps.append(("forward a day", "uploading"))

        loop = LoopingCall(watch)
        loop.start(0.005)
        try:
            self.assertEqual(await self.daemon.wait_for_snapshot(first), "complete")
        finally:
            loop.stop()
        after = time.time()
        self.assertEqual(jumps, [("back an hour", "scanning"), ("forward a day", "uploading")])
        # Its times: the request's, and the scan's measured from its start.
        doc = await self.snapshot(first)
        self.assertTrue(before <= doc["requested"] <= doc["started"] <= doc["finished"] <= after + 1, doc)

        # A backup with the clock a day ahead, then one with the clock put right.
        second = await self.backup()
        self.offset = 0.0
        third = await self.backup()
        self.assertEqual(sorted([third, second, first]), [first, second, third])
        docs = [await self.snapshot(s) for s in (first, second, third)]
        times = [d["started"] for d in docs]
        self.assertEqual(sorted(times), times)
        plan = plan_forget(self.daemon.conn, RetentionPolicy(keep_last=1))
        self.assertEqual(list(plan.keep), [third])

        # Nothing is due: an hour has not passed, whatever the wall clock said.
        self.daemon.maintenance.tick()
        self.assertEqual(self.daemon.maintenance.jobs(), [])
        self.assertIsNone((await self.api.call("GET", "/v1/status"))[1]["upload"]["stalled"])
