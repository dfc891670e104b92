"""
The daemon's two kinds of time, kept apart so that a wall clock set back
an hour or forward a day neither stalls nor fires anything.

- **Durations, timers and time-outs** use the reactor's clock.  Twisted's
  real reactor reads the wall clock for that, so the daemon makes it
  steady at start (``steady_reactor``): monotonic, counting suspend, and
  anchored at the wall time of the start so that its figures still look
  like times.  Tests use ``twisted.internet.task.Clock``.
- **Times that are recorded or shown** (snapshot and job times, a lock's
  heartbeat, "stalled since") read ``wall()``: the one place the daemon
  reads the wall clock, so that a test can jump it (``set_wall_source``).
"""

import time
from collections.abc import Callable

_wall_source: Callable[[], float] = time.time


def wall() -> float:
    """Seconds since the epoch, as the system says now: for times recorded or shown."""
    return _wall_source()


def set_wall_source(source: Callable[[], float]) -> Callable[[], float]:
    """Read the wall clock from ``source`` from now on (tests jump it); returns the previous source."""
    global _wall_source
    previous, _wall_source = _wall_source, source
    return previous


def monotonic() -> float:
    """Seconds that only go forward, suspend included where the system counts it (Linux)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()


def steady_reactor(reactor, monotonic=monotonic, wall=time.time):
    """
    Make ``reactor.seconds()`` (and with it every ``callLater``, loop and
    time-out on it) monotonic: the wall time now plus the monotonic time
    since.  Call before anything is scheduled on the reactor.
    """
    offset = wall() - monotonic()

    def seconds():
        return monotonic() + offset

    reactor.seconds = seconds
    return reactor
