"""
The writer lock: staleness from the lock's own renewal count and the
reader's monotonic time, never from two machines' clocks; the holder
renews on a timer even when idle.  Each machine has its own wall clock and
its own ``task.Clock`` for monotonic time.
"""

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.index import IndexFormatError, encode_lock, parse_lock, settings_document
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import db as dbmod
from gridbackupd.testing.fake_tahoe import fake_client
from gridbackupd.upload.publisher import Publisher
from gridbackupd.upload.writerlock import LOCK_HEARTBEAT, LOCK_STALE, RENEW_CHECK, WriterLockHeld

T0 = 1_800_000_000.0


def run(coro):
    return Deferred.fromCoroutine(coro)


class Machine:
    """A daemon's publisher with its own clocks: ``wall_offset`` is how far its wall clock is off."""

    def __init__(self, case, name, host, wall_offset=0.0):
        self.case = case
        self.mono = Clock()
        self.wall_offset = wall_offset
        conn = dbmod.open_database(os.path.join(case.mktemp(), "state.sqlite"))
        case.addCleanup(conn.close)
        settings = settings_document(ChunkParams(), 128, 1048576, 2048)
        self.publisher = Publisher(conn, case.client, settings, writer_id=name, host=host,
                                   now=self.wall, monotonic=self.mono.seconds)
        case.successResultOf(run(self.publisher.ensure_layout(case.root)))

    def wall(self):
        return T0 + self.mono.seconds() + self.wall_offset

    def may_write(self):
        """Whether this daemon may write now (it takes or renews the lock when it may)."""
        d = run(self.publisher.check_writer())
        if self.case.successResultOf(d.addErrback(lambda f: f.trap(WriterLockHeld) and False)) is False:
            return False
        return True


class WriterLockTests(SynchronousTestCase):
    def setUp(self):
        self.client, self.fake = fake_client()
        self.root = self.successResultOf(run(self.client.mkdir()))

    def linked_lock(self):
        cap = self.successResultOf(run(self.client.child_cap(self.root, "lock")))
        return parse_lock(self.successResultOf(run(self.client.download(cap))))

    def link_lock(self, data):
        cap = self.successResultOf(run(self.client.upload_bytes(data)))
        self.successResultOf(run(self.client.set_children(self.root, {"lock": cap})))

    def advance(self, seconds, *machines):
        """Time passes for every machine alike, in steps a heartbeat timer would see."""
        step = RENEW_CHECK / 2
        while seconds > 0:
            for m in machines:
                m.mono.advance(min(step, seconds))
            seconds -= step

    def test_format_with_and_without_seq(self):
        new = encode_lock("w-1", "laptop", 12.7, seq=3)
        self.assertEqual(
            new, b'{"format":"gridbackup-lock","version":1,"writer":"w-1","host":"laptop","heartbeat":12,"seq":3}')
        self.assertEqual(parse_lock(new)["seq"], 3)
        old = encode_lock("w-1", "laptop", 12.7)
        self.assertEqual(old, b'{"format":"gridbackup-lock","version":1,"writer":"w-1","host":"laptop","heartbeat":12}')
        self.assertEqual((parse_lock(old)["host"], parse_lock(old)["seq"]), ("laptop", None))
        for bad in (old.replace(b"12", b"-1"), old.replace(b'"w-1"', b'""'), b"{}",
                    new.replace(b'"seq":3', b'"seq":-3'), new.replace(b'"seq":3', b'"seq":"3"'),
                    new.replace(b'"seq":3', b'"sequence":3')):
            self.assertRaises(IndexFormatError, parse_lock, bad)

    def test_a_clock_11_minutes_ahead_does_not_take_over_a_live_lock(self):
        writer = Machine(self, "w-one", "alpha")
        ahead = Machine(self, "w-two", "beta", wall_offset=11 * 60)
        self.assertTrue(writer.may_write())
        # The writer's last renewal is nearly 4 minutes old, as its heartbeat
        # says; by the clock of a machine 11 minutes ahead, nearly 15.
        self.advance(LOCK_HEARTBEAT + 5, writer, ahead)
        self.assertFalse(ahead.may_write())
        self.assertIn("'alpha'", ahead.publisher.lock_error)
        self.assertEqual(self.linked_lock()["writer"], "w-one")
        # The writer goes on writing; the other machine keeps its hands off.
        for _ in range(10):
            self.assertTrue(writer.may_write())
            self.advance(LOCK_HEARTBEAT + 5, writer, ahead)
            self.assertFalse(ahead.may_write())
        self.assertEqual(self.linked_lock()["writer"], "w-one")

    def test_an_idle_writer_keeps_renewing(self):
        writer = Machine(self, "w-one", "alpha")
        other = Machine(self, "w-two", "beta")
        self.assertTrue(writer.may_write())
        first = self.linked_lock()["seq"]
        heartbeat = writer.publisher.heartbeat(writer.mono)
        heartbeat.startService()
        self.addCleanup(heartbeat.stopService)
        self.assertFalse(other.may_write())
        # Hours without a single write: the lock is renewed all along...
        seqs = {first}
        for _ in range(12):
            self.advance(LOCK_HEARTBEAT + RENEW_CHECK, writer, other)
            seqs.add(self.linked_lock()["seq"])
            self.assertFalse(other.may_write())
        self.assertEqual(len(seqs), 13)
        self.assertEqual(self.linked_lock()["writer"], "w-one")
        # ...and with the wall clock set back an hour and on a day, too.
        writer.wall_offset = -3600
        self.advance(LOCK_HEARTBEAT + RENEW_CHECK, writer, other)
        writer.wall_offset = 86400
        self.advance(LOCK_HEARTBEAT + RENEW_CHECK, writer, other)
        self.assertEqual(self.linked_lock()["seq"], max(seqs) + 2)
        self.assertFalse(other.may_write())
        # Stopped (the daemon is gone): no more renewals.
        heartbeat.stopService()
        self.advance(3 * LOCK_HEARTBEAT, writer, other)
        self.assertEqual(self.linked_lock()["seq"], max(seqs) + 2)

    def test_a_dead_writers_lock_is_taken_after_the_staleness_period(self):
        writer = Machine(self, "w-one", "alpha")
        # The other machine's wall clock is behind by a day: it does not matter.
        other = Machine(self, "w-two", "beta", wall_offset=-86400)
        self.assertTrue(writer.may_write())
        self.assertFalse(other.may_write())  # first seen now
        # The writer dies; the other machine has seen its lock unchanged for
        # a little less, then a little more, than the staleness period.
        self.advance(LOCK_STALE - 1, other)
        self.assertFalse(other.may_write())
        self.advance(2, other)
        self.assertTrue(other.may_write())
        self.assertIsNone(other.publisher.lock_error)
        lock = self.linked_lock()
        self.assertEqual((lock["writer"], lock["host"]), ("w-two", "beta"))
        # The old writer, were it to come back, stops writing.
        self.advance(LOCK_HEARTBEAT + 1, writer)
        self.assertFalse(writer.may_write())
        self.assertIn("'beta'", writer.publisher.lock_error)

    def test_an_old_form_lock_is_judged_by_its_heartbeat_value(self):
        Machine(self, "w-founder", "gone")  # made the layout, and a lock we replace
        other = Machine(self, "w-two", "beta")
        # An older daemon's lock (no seq), its heartbeat a week old by our clock:
        # our clock may be the wrong one, so the lock is watched first.
        self.link_lock(encode_lock("w-old", "old-host", T0 - 7 * 86400))
        self.assertFalse(other.may_write())
        # The old daemon renews it (a new heartbeat): watched afresh.
        self.advance(LOCK_STALE - 60, other)
        self.link_lock(encode_lock("w-old", "old-host", T0 - 7 * 86400 + 300))
        self.advance(120, other)
        self.assertFalse(other.may_write())
        # Unchanged for the staleness period: taken over.
        self.advance(LOCK_STALE - 120, other)
        self.assertFalse(other.may_write())
        self.advance(121, other)
        self.assertTrue(other.may_write())
        self.assertEqual(self.linked_lock()["writer"], "w-two")

    def test_an_unreadable_lock_is_taken_over(self):
        Machine(self, "w-founder", "gone")
        other = Machine(self, "w-two", "beta")
        self.link_lock(b"not a lock")
        self.assertTrue(other.may_write())
        self.assertEqual(self.linked_lock()["writer"], "w-two")
        self.flushLoggedErrors()

    def test_a_restart_keeps_its_own_lock_and_counts_on(self):
        writer = Machine(self, "w-one", "alpha")
        self.assertTrue(writer.may_write())
        self.advance(LOCK_HEARTBEAT, writer)
        self.assertTrue(writer.may_write())
        self.assertEqual(self.linked_lock()["seq"], 2)
        again = Machine(self, "w-one", "alpha")  # same writer id, nothing in memory
        self.assertTrue(again.may_write())
        self.assertEqual(self.linked_lock()["seq"], 3)

    def test_take_over_a_fresh_lock_on_request(self):
        one = Machine(self, "w-one", "old-machine")
        two = Machine(self, "w-two", "new-machine")
        self.assertTrue(one.may_write())
        self.assertFalse(two.may_write())
        # The person knows the old machine is gone: the new one takes the lock now.
        self.assertEqual(self.successResultOf(run(two.publisher.take_over())), "old-machine")
        self.assertTrue(two.may_write())
        self.assertIsNone(two.publisher.lock_error)
        # The old daemon, were it still running, stops writing.
        self.advance(LOCK_HEARTBEAT + 1, one)
        self.assertFalse(one.may_write())
        # Taking over one's own lock names nobody.
        self.assertIsNone(self.successResultOf(run(two.publisher.take_over())))
