"""
The shared shape of the daemon's queued-job runners (backup jobs, restores,
maintenance jobs): requests are rows in a database table, run one at a time
by a serial runner, waited for by id; a run that a stop or a kill
interrupted is found again at the next start; a stop lets the running item
put down its work cleanly.

Durable work lives in SQLite; the in-memory runner only wakes the worker.
A subclass says how to find the next queued row, how to run one, how to
recover interrupted rows and how to ask the running item to stop.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gridbackupd.waiters import Waiters


class SerialRunner:
    """
    Runs an async function at most once at a time: ``kick()`` starts it if it
    is idle, and a kick while it runs is a no-op (the function drains its
    queue from the database before it returns).
    """

    def __init__(self, work, log, what):
        self._work = work
        self._log = log
        self._what = what
        self.running = None  # the Deferred of the run in progress, or None

    def kick(self):
        if self.running is not None:
            return
        self.running = Deferred.fromCoroutine(self._work())
        self.running.addErrback(lambda f: self._log.failure("{what} failed", f, what=self._what))

        def finished(result):
            self.running = None
            return result

        self.running.addBoth(finished)


class QueuedRunner(Service):
    """
    A child service of the daemon that drains a queue of rows, one at a
    time: ``kick()`` after queueing a row; ``wait(key)`` fires with the row's
    end state.  Starting it recovers the rows an earlier run left behind;
    stopping it returns a Deferred that fires when the running item is down.
    """

    log = Logger()
    what = "job"  # named in the log when a run fails unexpectedly
    # The states that end a row: ``wait`` fires at once for a row in one of them.
    final_states: tuple[str, ...] = ()

    def __init__(self, waiters=None):
        self.waiters = waiters if waiters is not None else Waiters()
        self.stopping = False
        self._serial = SerialRunner(self._drain, self.log, self.what)

    # -- what a subclass provides ----------------------------------------------

    def recover_interrupted(self):
        """Put back in the queue what a stop or a kill left half-done."""

    def next_queued(self):
        """The next row to run, or None when the queue is empty."""
        raise NotImplementedError

    async def run_one(self, row):
        """Run one row; return False if it was stopped (it resumes at the next start)."""
        raise NotImplementedError

    def interrupt(self):
        """Ask the running item, if any, to stop at its next safe point."""

    def state_of(self, key):
        """The row's state, or None if there is no such row (for ``wait``)."""
        return None

    # -- the runner ----------------------------------------------------------------

    def startService(self):
        super().startService()
        self.recover_interrupted()

    def stopService(self):
        super().stopService()
        return self.stop()

    def kick(self):
        """Run the queue now, unless it runs already or the runner is stopping."""
        if not self.stopping:
            self._serial.kick()

    def stop(self):
        """Start no new item; fires when the running one has put down its work."""
        self.stopping = True
        self.interrupt()
        return self._serial.running if self._serial.running is not None else succeed(None)

    def wait(self, key):
        """Fires with the row's end state; at once if it has ended already."""
        state = self.state_of(key)
        if state is not None and state in self.final_states:
            return succeed(state)
        return self.waiters.wait(key)

    async def _drain(self):
        while not self.stopping:
            row = self.next_queued()
            if row is None:
                return
            if await self.run_one(row) is False:
                return
