"""
The uploader under its limits, against the in-memory fake Tahoe on a
``Clock``: the schedule's rate pacing each pack's body while it streams
(every 10-second window counted), packs no bigger than 10 s of a low rate,
the schedule pausing and a user's pause overriding it, and ``allow_if``
pausing and resuming uploads with a real command.
"""

import io
import os
import random
import types
from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import Cooperator
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer

from gridbackupd import service
from gridbackupd.api.metrics import DaemonCollector
from gridbackupd.format.index import settings_document
from gridbackupd.grid.retry import RetryPolicy
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.scan.hooks import run_command
from gridbackupd.state import db as dbmod
from gridbackupd.state import queue
from gridbackupd.testing.fake_tahoe import fake_client
from gridbackupd.testing.inline import InlinePool, ThreadlessReactor
from gridbackupd.upload import allowif
from gridbackupd.upload.allowif import AllowIf
from gridbackupd.upload.publisher import Publisher
from gridbackupd.upload.schedule import parse_schedule
from gridbackupd.upload.throttle import WINDOW
from gridbackupd.upload.uploader import PACK_SECONDS, Uploader
from tests.support.fakegrid import add_uploading_snapshot, run, write_files
from tests.unit.test_throttle import RecordingConsumer, window_totals

BERLIN = ZoneInfo("Europe/Berlin")


class StreamingClient:
    """
    The fake client, whose pack bodies stream through the uploader's
    wrapper into a consumer that notes when each byte went (as a
    connection to the node would take them); the fake then stores them.
    """

    def __init__(self, client, clock, log):
        self.client = client
        self.clock = clock
        self.log = log
        self.cooperator = Cooperator(scheduler=lambda f: clock.callLater(0, f))
        self.pack_sizes = []

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def upload_file(self, path, wrap_body=None):
        with open(path, "rb") as f:
            data = f.read()
        self.pack_sizes.append(len(data))
        producer = FileBodyProducer(io.BytesIO(data), cooperator=self.cooperator)
        if wrap_body is not None:
            producer = wrap_body(producer)
        consumer = RecordingConsumer(self.clock, self.log)
        await producer.startProducing(consumer)
        assert bytes(consumer.data) == data
        return await self.client.upload_bytes(data)


class LimitsTests(SynchronousTestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.base, "files"))
        self.conn = dbmod.open_database(os.path.join(self.base, "state.sqlite"))
        self.addCleanup(self.conn.close)
        self.reactor = ThreadlessReactor()
        self.reactor.advance(datetime(2026, 6, 3, 8, 0, tzinfo=BERLIN).timestamp())  # a Wednesday
        client, self.fake = fake_client(clock=self.reactor, retry=RetryPolicy(attempts=1))
        self.log = []
        self.client = StreamingClient(client, self.reactor, self.log)
        self.root = self.successResultOf(run(client.mkdir()))
        self.publisher = Publisher(
            self.conn, self.client, settings_document(ChunkParams(), 128, 1 << 20, 2048),
            writer_id="w-test", host="test")
        self.successResultOf(run(self.publisher.ensure_layout(self.root)))
        self.rnd = random.Random(16)

    def uploader(self, schedule=(), **kw):
        kw.setdefault("pack_size", 1024 * 1024)
        up = Uploader(self.reactor, self.conn, self.client, self.publisher, InlinePool(),
                      os.path.join(self.base, "packs"),
                      schedule=parse_schedule(schedule).rules, zone=BERLIN,
                      wallclock=self.reactor.seconds, **kw)
        return up

    def queue_files(self, sizes, prefix="f"):
        blobs = write_files(self.rnd, os.path.join(self.base, "files"), sizes, prefix)
        add_uploading_snapshot(self.conn, self.base, prefix + "snap", blobs)
        return blobs

    def pending(self):
        return queue.pending_totals(self.conn)[0]

    def run_until_idle(self, up, limit=3600.0, step=0.05):
        for _ in range(int(limit / step)):
            if not self.pending() and not up.packs_in_flight:
                return
            self.reactor.advance(step)
        self.fail("uploads did not finish")

    def test_the_scheduled_rate_holds_over_every_window_while_packs_stream(self):
        rate = 40_000
        self.queue_files([30_000] * 40)  # 1.2 MB: about 30 s at the rate
        up = self.uploader([f"Mon-Fri 06:00-20:00 {rate}"], parallel=3)
        start = self.reactor.seconds()
        up.start()
        self.addCleanup(up.stop)
        self.run_until_idle(up)
        sent = sum(n for _, n in self.log)
        self.assertEqual(sent, sum(self.client.pack_sizes))
        totals = window_totals(self.log)
        self.assertLessEqual(max(n for _, n in totals), rate * WINDOW)
        end = max(t for t, _ in self.log)
        full = [n for t, n in totals if t + WINDOW <= end]
        self.assertTrue(full)
        self.assertGreaterEqual(min(full), 0.9 * rate * WINDOW)
        self.assertGreaterEqual(end - start, sent / rate - 1)
        # At this rate a pack holds at most 10 s of it (one 30 KB blob is 0.75 s).
        self.assertTrue(all(size <= rate * PACK_SECONDS + 4096 for size in self.client.pack_sizes))
        self.assertEqual(up.status()["schedule"]["rate"], rate)

    def test_a_low_rate_makes_small_packs(self):
        up = self.uploader(["* 00:00-24:00 2000"], pack_size=1024 * 1024)
        up.rates.start()
        self.assertEqual(up.pack_target(), 2000 * PACK_SECONDS)
        up.throttle.set_rate(None)
        self.assertEqual(up.pack_target(), 1024 * 1024)

    def test_schedule_pauses_and_a_user_pause_overrides_it(self):
        self.queue_files([20_000] * 6)
        # Wednesday 08:00: the 09:00-10:00 hour is paused, unlimited before and after.
        up = self.uploader(["Mon-Fri 09:00-10:00 0", "* 00:00-24:00 unlimited"], parallel=2)
        up.pause()
        up.start()
        self.addCleanup(up.stop)
        self.reactor.advance(60)
        self.assertEqual((up.paused_by, self.pending()), ("user", 6))
        self.assertIn("POST /v1/uploads/pause", up.status()["paused_reason"])
        # 09:00: the schedule pauses too; the user's pause still says so.
        self.reactor.advance(3600)
        status = up.status()
        self.assertEqual((status["paused_by"], status["schedule"]["rate"]), ("user", 0))
        self.assertEqual(status["schedule"]["rule"], "Mon-Fri 09:00-10:00 0")
        self.assertEqual(status["schedule"]["next_change"],
                         datetime(2026, 6, 3, 10, 0, tzinfo=BERLIN).timestamp())
        # Resumed: the schedule holds them now.
        up.resume()
        self.reactor.advance(1)
        self.assertEqual((up.paused_by, self.pending()), ("schedule", 6))
        self.assertIn("Mon-Fri 09:00-10:00 0", up.status()["paused_reason"])
        self.assertEqual(self.metrics(up), {
            "gridbackup_upload_rate_limit_bytes_per_second": 0.0,
            "gridbackup_upload_schedule_next_change_timestamp_seconds":
                datetime(2026, 6, 3, 10, 0, tzinfo=BERLIN).timestamp(),
            "gridbackup_upload_paused_by{by=schedule}": 1.0,
            "gridbackup_upload_paused_by{by=user}": 0.0,
            "gridbackup_upload_paused_by{by=allow_if}": 0.0,
        })
        # 10:00: unlimited, everything goes.
        self.reactor.advance(3600)
        self.run_until_idle(up, limit=10)
        self.assertIsNone(up.paused_by)
        self.assertEqual(self.pending(), 0)
        self.assertEqual(self.metrics(up)["gridbackup_upload_rate_limit_bytes_per_second"], float("inf"))

    def metrics(self, up):
        """The upload limit's samples in /metrics, by name (and label)."""
        daemon = types.SimpleNamespace(
            state="ready", jobs=None, uploader=up, conn=None, maintenance=None, restorer=None,
            grid_status=lambda: {}, watch_status=lambda: {"state": "off", "directories": 0, "dirty": 0})
        found = {}
        for family in DaemonCollector(daemon).collect():
            for sample in family.samples:
                if "rate_limit" in sample.name or "schedule" in sample.name or "paused_by" in sample.name:
                    labels = "".join(f"{{{k}={v}}}" for k, v in sample.labels.items())
                    found[sample.name + labels] = sample.value
        return found

    def test_a_pack_in_flight_is_held_by_a_rate_of_zero_and_dropped_at_a_stop(self):
        self.queue_files([200_000])
        up = self.uploader(["Mon-Fri 08:00-08:01 10k", "* 00:00-24:00 0"])
        up.start()
        self.reactor.advance(30)
        sent = sum(n for _, n in self.log)
        self.assertGreater(sent, 0)
        self.reactor.advance(60)  # 08:01: paused while the pack streams
        held = sum(n for _, n in self.log)
        self.assertLess(held, 200_000)
        self.reactor.advance(600)
        self.assertEqual(sum(n for _, n in self.log), held)
        self.assertEqual(up.paused_by, "schedule")
        # The stop does not wait for it: the blob stays pending for the next start.
        self.successResultOf(up.stop())
        self.assertEqual(self.pending(), 1)
        self.assertEqual(self.conn.execute("SELECT count(*) FROM packs").fetchone()[0], 0)

    def test_allow_if_pauses_and_resumes_uploads_with_a_real_command(self):
        flag = os.path.join(self.base, "unmetered")
        ran = []

        def run_it(command):
            ran.append(self.reactor.seconds())
            return succeed(run_command(command, {}, timeout=allowif.TIMEOUT))

        gate = AllowIf(self.reactor, f"test -e {flag} || {{ echo metered >&2; exit 3; }}", run_it)
        self.queue_files([20_000] * 4)
        up = self.uploader(allow_if=gate)
        requests_before = len(self.fake.requests)
        up.start()
        self.addCleanup(up.stop)
        status = up.status()
        self.assertEqual((status["paused_by"], self.pending()), ("allow_if", 4))
        self.assertEqual(status["paused_reason"], "[upload] allow_if failed (exit status 3): metered")
        self.assertEqual(len(self.fake.requests), requests_before)  # no round: nothing sent at all
        # Tried again a minute later, still failing.
        self.reactor.advance(allowif.RECHECK)
        self.assertEqual(len(ran), 2)
        self.assertEqual(self.pending(), 4)
        with open(flag, "w"):
            pass
        self.reactor.advance(allowif.RECHECK)
        self.run_until_idle(up, limit=10)
        self.assertEqual(self.pending(), 0)
        self.assertIsNone(up.status()["paused_by"])
        self.assertIsNone(up.status()["paused_reason"])
        # New work: the command runs before the round again; it fails, and nothing goes.
        os.unlink(flag)
        before = len(ran)
        self.queue_files([20_000] * 2, prefix="g")
        up.wake()
        self.assertEqual(len(ran), before + 1)
        self.assertEqual((up.paused_by, self.pending()), ("allow_if", 2))


class WiringTests(TestCase):
    async def test_allow_if_runs_its_command_in_the_worker_pool(self):
        pool = ThreadPool(minthreads=0, maxthreads=1, name="test-allow-if")
        pool.start()
        self.addCleanup(pool.stop)
        self.assertIsNone(service.allow_if(reactor, pool, None))
        gate = service.allow_if(reactor, pool, "echo on a hotspot >&2; exit 4")
        self.assertFalse(await gate.check())
        self.assertEqual(gate.reason, "[upload] allow_if failed (exit status 4): on a hotspot")
        gate = service.allow_if(reactor, pool, "true")
        self.assertTrue(await gate.check())
        self.assertIsNone(gate.reason)
