"""
The upload rate limit on the reactor's clock: real body producers
(``FileBodyProducer`` on a cooperator the clock drives) streaming through
the throttle into consumers that note when each byte arrived; every
10-second window is then counted.
"""

import io

from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import FileBodyProducer

from gridbackupd.upload.throttle import WINDOW, Throttle, UploadAborted

MiB = 1024 * 1024


class RecordingConsumer:
    """A connection that takes every byte at once and notes when it came."""

    def __init__(self, clock, log):
        self.clock = clock
        self.log = log  # [(time, bytes)], shared by the streams of one test
        self.data = bytearray()

    def write(self, data):
        self.log.append((self.clock.seconds(), len(data)))
        self.data += data

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass


def window_totals(log, window=WINDOW, eps=1e-6):
    """Bytes in each window [t, t + window) starting at a write (where a window's most lie)."""
    times = sorted(log)
    totals = []
    j = 0
    running = 0
    for i, (t, _) in enumerate(times):
        while j < len(times) and times[j][0] < t + window - eps:
            running += times[j][1]
            j += 1
        totals.append((t, running))
        running -= times[i][1]
    return totals


class ThrottleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.cooperator = Cooperator(scheduler=lambda f: self.clock.callLater(0, f))
        self.log = []

    def stream(self, throttle, data):
        """Start one body through ``throttle``; (its Deferred, its consumer)."""
        consumer = RecordingConsumer(self.clock, self.log)
        producer = throttle.wrap(FileBodyProducer(io.BytesIO(data), cooperator=self.cooperator))
        self.assertEqual(producer.length, len(data))
        return producer.startProducing(consumer), consumer

    def run_until(self, deferreds, step=0.01, limit=3600):
        for _ in range(int(limit / step)):
            if all(d.called for d in deferreds):
                return
            self.clock.advance(step)
        self.fail("the streams did not finish")

    def assert_windows(self, rate, saturated_until):
        """No window over rate x 10 s; every full window while there was work at least 95% of it."""
        totals = window_totals(self.log)
        self.assertTrue(totals)
        most = max(n for _, n in totals)
        self.assertLessEqual(most, rate * WINDOW)
        full = [n for t, n in totals if t + WINDOW <= saturated_until]
        self.assertTrue(full)
        self.assertGreaterEqual(min(full), 0.95 * rate * WINDOW)

    def test_every_window_holds_at_most_the_rate(self):
        rate = 100_000
        throttle = Throttle(self.clock, rate)
        data = bytes(range(256)) * 20_000  # 5.1 MB: 51 s at the rate
        d, consumer = self.stream(throttle, data)
        self.run_until([d])
        self.successResultOf(d)
        self.assertEqual(bytes(consumer.data), data)
        end = max(t for t, _ in self.log)
        # About 51 s: the rate, give or take the half second the bucket holds.
        self.assertGreaterEqual(end, len(data) / rate - 1)
        self.assertLess(end, len(data) / rate + 1)
        self.assert_windows(rate, end)
        # Written in slices of at most a tenth of a second of the rate.
        self.assertLessEqual(max(n for _, n in self.log), rate // 10)

    def test_packs_in_flight_share_the_rate(self):
        rate = 50_000
        throttle = Throttle(self.clock, rate)
        ds = [self.stream(throttle, b"x" * n)[0] for n in (400_000, 700_000, 300_000)]
        self.run_until(ds)
        self.assert_windows(rate, max(t for t, _ in self.log))
        self.assertEqual(sum(n for _, n in self.log), 1_400_000)

    def test_a_lower_rate_applies_at_once_to_a_pack_in_flight(self):
        throttle = Throttle(self.clock, None)  # unlimited: all at once
        d, _ = self.stream(throttle, b"a" * 300_000)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(sum(n for _, n in self.log), 300_000)
        self.successResultOf(d)
        self.log.clear()
        throttle.set_rate(20_000)
        d, _ = self.stream(throttle, b"b" * 600_000)
        self.run_until([d])
        # The 300 KB just sent count against the new rate: nothing goes until
        # they are out of the window, and then 20 KB/s.
        self.assertGreaterEqual(min(t for t, _ in self.log), WINDOW - 1e-6)
        self.assert_windows(20_000, max(t for t, _ in self.log))

    def test_rate_zero_holds_and_a_new_rate_lets_go(self):
        throttle = Throttle(self.clock, 10_000)
        d, _ = self.stream(throttle, b"z" * 200_000)
        self.clock.advance(2.0)
        throttle.set_rate(0)
        sent = sum(n for _, n in self.log)
        for _ in range(100):
            self.clock.advance(1.0)
        self.assertEqual(sum(n for _, n in self.log), sent)
        self.assertNoResult(d)
        throttle.set_rate(1_000_000)
        self.run_until([d])
        self.successResultOf(d)
        self.assertLessEqual(max(n for _, n in window_totals(self.log)), 1_000_000 * WINDOW)

    def test_the_connection_pausing_holds_the_stream(self):
        throttle = Throttle(self.clock, 1_000_000)
        consumer = RecordingConsumer(self.clock, self.log)
        producer = throttle.wrap(FileBodyProducer(io.BytesIO(b"q" * 500_000), cooperator=self.cooperator))
        d = producer.startProducing(consumer)
        self.clock.advance(0.05)
        producer.pauseProducing()
        sent = sum(n for _, n in self.log)
        for _ in range(20):
            self.clock.advance(0.5)
        self.assertEqual(sum(n for _, n in self.log), sent)
        producer.resumeProducing()
        self.run_until([d])
        self.assertEqual(sum(n for _, n in self.log), 500_000)

    def test_abort_fails_the_streams_held_back(self):
        throttle = Throttle(self.clock, 1000)
        d, _ = self.stream(throttle, b"w" * 100_000)
        self.clock.advance(1.0)
        throttle.abort(UploadAborted("stopping"))
        self.failureResultOf(d, UploadAborted)
        self.assertFalse(throttle.streams)
        later, _ = self.stream(throttle, b"v" * 10)
        self.failureResultOf(later, UploadAborted)

    def test_the_wall_clock_does_not_matter(self):
        # Pacing reads only the reactor's clock: what the daemon makes monotonic.
        import gridbackupd.clock as clockmod

        previous = clockmod.set_wall_source(lambda: 0.0)
        self.addCleanup(clockmod.set_wall_source, previous)
        throttle = Throttle(self.clock, 200_000)
        d, _ = self.stream(throttle, b"c" * 3_000_000)
        clockmod.set_wall_source(lambda: 86400.0 * 365)
        self.run_until([d])
        self.assert_windows(200_000, max(t for t, _ in self.log))

    def test_late_timers_catch_up_and_never_overshoot(self):
        # A busy reactor: the clock moves in steps of 0.3 s, so every wake is late.
        rate = 100_000
        throttle = Throttle(self.clock, rate)
        d, _ = self.stream(throttle, b"l" * 3_000_000)
        self.run_until([d], step=0.3)
        end = max(t for t, _ in self.log)
        self.assertLess(end, 3_000_000 / rate * 1.03)
        self.assert_windows(rate, end)

    def test_a_rate_of_a_few_bytes_a_second_still_sends(self):
        throttle = Throttle(self.clock, 1)
        d, consumer = self.stream(throttle, b"tiny")
        self.run_until([d], step=0.5, limit=60)
        self.assertEqual(bytes(consumer.data), b"tiny")
        self.assertLessEqual(max(n for _, n in window_totals(self.log)), 10)
