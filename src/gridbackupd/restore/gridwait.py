"""
Waiting for the grid instead of failing.

A restore asked for while the grid is not there (the daemon still
connecting after a start, the Tahoe client node restarting, storage
servers gone so that shares cannot be found) is accepted and waits for
it: each grid call of the run goes through one ``GridWait``,
which tries again with backoff while the grid is away, says so in the
run's progress (``waiting_for``, ``waiting_since``), and gives up with one
clear line after the configured time-out (``[tahoe] grid_wait``).

Shares that cannot be found (``TahoeSharesMissing``, Tahoe's 410 for
NoSharesError / NotEnoughSharesError) mean the grid is away only while
fewer storage servers than ``shares.happy`` are connected (the client's
``min_servers``): with all of them there, the shares are lost, and waiting
would not bring them back.
"""

from twisted.internet.task import deferLater

from gridbackupd import clock
from gridbackupd.errors import TahoeError, TahoeSharesMissing, TahoeUnavailable, Unavailable, one_line
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
                client = None
                try:
                    client = self.client_getter()
                    return await operation(client)
                except (Unavailable, TahoeUnavailable, TahoeSharesMissing) as e:
                    why = await self._away(e, client)
                    if why is None:
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
                            f"{why}")
                        raise self.gave_up from None
                self.check()
                await deferLater(self.clock, min(next(delays), left), lambda: None)
                self.check()
        finally:
            if started is not None:
                self._end()

    async def _away(self, error, client):
        """Why the grid is away, as ``error`` shows it (one line); None if that is not what it says."""
        if not isinstance(error, TahoeSharesMissing):
            return one_line(error) if grid_away(error) else None
        needed = getattr(client, "min_servers", 1)
        try:
            connected = await client.connected_servers()
        except TahoeError as e:
            return f"{one_line(error)}; and the node does not say which servers it has: {one_line(e)}"
        if connected >= needed:
            return None
        what = f" of {error.short_cap}" if error.short_cap else ""
        return (f"only {connected} of {needed} storage servers connected, too few to find "
                f"the shares{what} ({error.operation}: HTTP {error.status})")

    def _begin(self):
        self._waiting += 1
        if self._waiting == 1:
            self.progress.waiting_for = "grid"
            self.progress.waiting_since = clock.wall()

    def _end(self):
        self._waiting -= 1
        if self._waiting == 0:
            self.progress.waiting_for = None
            self.progress.waiting_since = None
