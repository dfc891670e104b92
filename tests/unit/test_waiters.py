"""Tests of gridbackupd.waiters.OneShot: one outcome for any number of observers."""

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.waiters import OneShot


class OneShotTests(SynchronousTestCase):
    def test_value_to_every_observer_before_and_after(self):
        """Observers from before and after the outcome all get it; one's callbacks do not touch the next."""
        one = OneShot()
        early = one.observe()
        early.addCallback(lambda value: value + 1)
        self.assertNoResult(early)
        self.assertFalse(one.fired)
        one.fire(41)
        self.assertTrue(one.fired)
        self.assertEqual(self.successResultOf(early), 42)
        self.assertEqual(self.successResultOf(one.observe()), 41)
        self.assertEqual(self.successResultOf(one.observe()), 41)

    def test_failure_to_every_observer(self):
        one = OneShot()
        early = one.observe()
        one.fire(Failure(ValueError("no")))
        self.failureResultOf(early, ValueError)
        self.failureResultOf(one.observe(), ValueError)
        self.failureResultOf(one.observe(), ValueError)

    def test_cancel_drops_only_that_observer(self):
        one = OneShot()
        cancelled, kept = one.observe(), one.observe()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        one.fire("done")
        self.assertEqual(self.successResultOf(kept), "done")

    def test_of_a_deferred(self):
        """OneShot.of takes a Deferred's outcome and leaves that Deferred with None."""
        d: Deferred = Deferred()
        one = OneShot.of(d)
        observer = one.observe()
        d.callback("value")
        self.assertEqual(self.successResultOf(observer), "value")
        self.assertIsNone(self.successResultOf(d))
        failing: Deferred = Deferred()
        two = OneShot.of(failing)
        failing.errback(KeyError("k"))
        self.assertIsNone(self.successResultOf(failing))
        self.failureResultOf(two.observe(), KeyError)
