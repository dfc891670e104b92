"""
A stalled upload is visible: ``upload.stalled`` in the status, the
``gridbackup_stalled`` metric, one line in the log.  On a task.Clock.
"""

import types

from prometheus_client.core import GaugeMetricFamily
from twisted.logger import Logger, LogLevel

from gridbackupd.api.metrics import DaemonCollector
from gridbackupd.errors import TahoeError
from gridbackupd.state import db as dbmod
from gridbackupd.upload.stall import STALL_AFTER
from tests.unit.test_recovery import RecoveryCase


class StallTests(RecoveryCase):
    def start(self):
        self.events = []
        self.uploader.stall.log = Logger(observer=self.events.append)
        self.uploader.stall.wallclock = self.reactor.seconds  # one clock for both in these tests
        self.uploader.start()
        self.addCleanup(self.uploader.stop)

    def stall_lines(self):
        return [e for e in self.events if e["log_level"] == LogLevel.error]

    def orphan(self):
        """A snapshot that cannot be published: its parent's log is not on the grid."""
        self.snapshot("s2", [5000])
        with dbmod.transaction(self.conn):
            self.conn.execute("INSERT INTO snapshots (id, state, host, requested) VALUES ('s1', 'failed', 'h', 0)")
            self.conn.execute("UPDATE snapshots SET kind = 'incremental', parent = 's1' WHERE id = 's2'")

    def test_a_snapshot_that_cannot_finish_is_seen_once(self):
        self.orphan()
        t0 = self.reactor.seconds()
        self.start()
        self.assertEqual(self.uploader.status()["pending_blobs"], 0)  # its blob is committed
        self.reactor.advance(STALL_AFTER - 1)
        self.assertIsNone(self.uploader.status()["stalled"])
        self.reactor.advance(2)
        stalled = self.uploader.status()["stalled"]
        self.assertEqual(stalled["since"], t0)
        self.assertIn("parent s1", stalled["reason"])
        self.assertEqual(len(self.stall_lines()), 1)
        # A wake-up that finds nothing to do changes nothing, and says nothing again.
        self.uploader.wake()
        self.reactor.advance(3600)
        self.assertEqual(self.uploader.status()["stalled"]["since"], t0)
        self.assertEqual(len(self.stall_lines()), 1)
        # Once it can finish, it does, and the stall is gone.
        with dbmod.transaction(self.conn):
            self.conn.execute("UPDATE snapshots SET log_cap = 'URI:LIT:' WHERE id = 's1'")
        self.uploader.wake()
        self.assertEqual(self.state_of("s2"), "complete")
        self.assertIsNone(self.uploader.status()["stalled"])
        self.reactor.advance(3600)
        self.assertIsNone(self.uploader.status()["stalled"])

    def test_waiting_on_a_retry_is_no_stall(self):
        self.snapshot("s1", [5000])

        async def refuse(path):
            raise TahoeError("the node is down")

        self.client.upload_file = refuse
        self.start()
        self.reactor.advance(10 * STALL_AFTER)
        status = self.uploader.status()
        self.assertEqual(status["last_error"], "the node is down")
        self.assertIsNone(status["stalled"])
        self.assertEqual(self.stall_lines(), [])

    def test_paused_with_work_pending_is_no_stall(self):
        self.snapshot("s1", [5000])
        self.uploader.pause()
        self.start()
        self.reactor.advance(10 * STALL_AFTER)
        self.assertIsNone(self.uploader.status()["stalled"])
        self.uploader.resume()
        self.assertEqual(self.state_of("s1"), "complete")

    def test_nothing_uploading_is_no_stall(self):
        self.start()
        self.reactor.advance(10 * STALL_AFTER)
        self.assertIsNone(self.uploader.status()["stalled"])

    def test_metric(self):
        self.orphan()
        self.start()
        daemon = types.SimpleNamespace(
            state="ready", jobs=None, uploader=self.uploader, conn=None, maintenance=None, restorer=None,
            grid_status=lambda: {}, watch_status=lambda: {"state": "off", "directories": 0, "dirty": 0})

        def stalled_metric():
            [family] = [f for f in DaemonCollector(daemon).collect()
                        if isinstance(f, GaugeMetricFamily) and f.name == "gridbackup_stalled"]
            return family.samples[0].value

        self.assertEqual(stalled_metric(), 0.0)
        self.reactor.advance(STALL_AFTER + 1)
        self.assertEqual(stalled_metric(), 1.0)
