"""
Waiting for the grid instead of failing.

A restore asked for while the grid is not there (the daemon still
connecting after a start, the Tahoe client node restarting) is accepted
and waits for it: each grid call of the run goes through one ``GridWait``,
which tries again with backoff while the grid is away, says so in the
run's progress (``waiting_for``, ``waiting_since``), and gives up with one
clear line after the configured time-out (``[tahoe] grid_wait``).
"""

import time

from twisted.internet.task import deferLater

from gridbackupd.errors import TahoeUnavailable, Unavailable, one_line
from gridbackupd.grid.retry import Backoff

# 15 minutes: long enough for a node to start and connect to its servers.
DEFAULT_TIMEOUT = 900.0
# Between tries; short, so that a stop or a cancel is seen soon.
RETRY = Backoff(base=0.5, cap=5.0)


class GridTimeout(Unavailable):
    """The grid did not come back within the time-out."""


def grid_away(error):
    """Whether ``error`` says the grid is not there (rather than a request that fails)."""
    if isinstance(error, Unavailable):
        return error.code == "grid_unavailable"
    return isinstance(error, TahoeUnavailable)


class GridWait:
    """
    For one run: ``call(operation)`` awaits ``operation(client)`` with the
    client ``client_getter`` gives, again while the grid is away, up to
    ``timeout`` seconds from the first failure of that call.  ``check()``,
    called between tries, raises to stop waiting (a cancel, a stop).
    """

    def __init__(self, clock, client_getter, timeout, progress, check=lambda: None, backoff=None):
        self.clock = clock
        self.client_getter = client_getter
        self.timeout = timeout
        self.progress = progress
        self.check = check
        self.backoff = backoff or RETRY
        self.gave_up = None  # the GridTimeout, once one call has given up
        self._waiting = 0

    async def call(self, operation):
        started = None
        delays = self.backoff.delays()
        try:
            while True:
                if self.gave_up is not None:
                    raise self.gave_up
                try:
                    return await operation(self.client_getter())
                except (Unavailable, TahoeUnavailable) as e:
                    if not grid_away(e):
                        raise
                    now = self.clock.seconds()
                    if started is None:
                        started = now
                        self._begin()
                    left = started + self.timeout - now
                    if left <= 0:
                        self.gave_up = GridTimeout(
                            "grid_unavailable",
                            f"gave up after waiting {self.timeout:g} s for the grid ([tahoe] grid_wait): "
                            f"{one_line(e)}")
                        raise self.gave_up from None
                self.check()
                await deferLater(self.clock, min(next(delays), left), lambda: None)
                self.check()
        finally:
            if started is not None:
                self._end()

    def _begin(self):
        self._waiting += 1
        if self._waiting == 1:
            self.progress.waiting_for = "grid"
            self.progress.waiting_since = time.time()

    def _end(self):
        self._waiting -= 1
        if self._waiting == 0:
            self.progress.waiting_for = None
            self.progress.waiting_since = None
