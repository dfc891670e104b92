"""
The daemon's clocks: the reactor made steady (timers on a monotonic clock,
whatever the wall clock does) and the one wall clock a test can jump.
"""

from twisted.internet.base import ReactorBase
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import clock


class _Reactor(ReactorBase):
    """Twisted's own timer code (``callLater``, ``runUntilCurrent``, ``timeout``), no I/O."""

    def installWaker(self):
        pass


class _Times:
    def __init__(self):
        self.wall = 1_800_000_000.0
        self.mono = 5000.0


class SteadyReactorTests(SynchronousTestCase):
    def reactor(self, steady):
        t = _Times()
        r = _Reactor()
        if steady:
            clock.steady_reactor(r, monotonic=lambda: t.mono, wall=lambda: t.wall)
        else:
            r.seconds = lambda: t.wall  # what Twisted does: time.time
        return r, t

    def fired_after(self, r, t, jump):
        """A 60 s timer, the wall clock jumped by ``jump`` just after it was set: does it fire on time?"""
        fired = []
        r.callLater(60, fired.append, True)
        t.wall += jump
        t.mono += 61
        t.wall += 61
        r.runUntilCurrent()
        return bool(fired), r.timeout()

    def test_steady_timers_ignore_a_wall_clock_set_back(self):
        r, t = self.reactor(steady=True)
        self.assertAlmostEqual(r.seconds(), t.wall)  # still looks like a time
        self.assertEqual(self.fired_after(r, t, -3600), (True, None))

    def test_steady_timers_ignore_a_wall_clock_set_forward(self):
        r, t = self.reactor(steady=True)
        fired = []
        r.callLater(3600, fired.append, True)
        t.wall += 86400
        t.mono += 1
        r.runUntilCurrent()
        self.assertEqual(fired, [])
        self.assertAlmostEqual(r.timeout(), 3599)

    def test_twisteds_own_timers_follow_the_wall_clock(self):
        # Why the daemon makes its reactor steady: a timer set before the
        # wall clock went back an hour waits an hour longer.
        r, t = self.reactor(steady=False)
        fired, timeout = self.fired_after(r, t, -3600)
        self.assertFalse(fired)
        self.assertAlmostEqual(timeout, 3599)


class WallTests(SynchronousTestCase):
    def test_wall_source_can_be_jumped(self):
        previous = clock.set_wall_source(lambda: 12.0)
        self.addCleanup(clock.set_wall_source, previous)
        self.assertEqual(clock.wall(), 12.0)

    def test_monotonic_goes_forward(self):
        a = clock.monotonic()
        self.assertGreaterEqual(clock.monotonic(), a)


class TwistdTests(SynchronousTestCase):
    def test_the_daemon_under_twistd_makes_its_reactor_steady_first(self):
        from twisted.application.service import Service
        from twisted.internet import reactor

        from gridbackupd import tap

        made_steady = []
        order = []

        class Daemon(Service):
            def privilegedStartService(self):
                order.append("daemon")

        self.patch(clock, "steady_reactor", lambda r: (made_steady.append(r), order.append("steady")))
        tap._OneLineExit(Daemon()).privilegedStartService()
        self.assertEqual(made_steady, [reactor])
        self.assertEqual(order, ["steady", "daemon"])
