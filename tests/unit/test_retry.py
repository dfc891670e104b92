"""Tests of gridbackupd.grid.retry.Backoff, the waits of every retrying loop."""

from itertools import islice

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.grid.retry import Backoff, RetryPolicy


class BackoffTests(SynchronousTestCase):
    def test_delays_double_up_to_the_cap(self):
        self.assertEqual(list(islice(Backoff(base=5.0, cap=300.0).delays(), 8)),
                         [5, 10, 20, 40, 80, 160, 300, 300])
        self.assertEqual(list(islice(Backoff(base=1.0, cap=30.0).delays(), 7)),
                         [1, 2, 4, 8, 16, 30, 30])

    def test_no_jitter_by_default_retry_policy_has_it(self):
        self.assertFalse(Backoff().jitter)
        self.assertTrue(RetryPolicy().jitter)
        jittered = Backoff(base=2, jitter=True)
        self.assertEqual(next(jittered.delays(random=lambda: 0.0)), 1.0)

    def test_invalid(self):
        for kwargs in ({"base": -1}, {"cap": -1}, {"factor": 0.5}):
            self.assertRaises(ValueError, Backoff, **kwargs)
        self.assertRaises(ValueError, RetryPolicy, attempts=0)
