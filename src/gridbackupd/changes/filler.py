"""
The daemon's background computation of missing figures (``compute``):
once at start (snapshots from before the figures were stored, or a start
interrupted in the middle of one), and whenever the API meets a snapshot
without figures.  Requests while it runs make it look once more.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gridbackupd.changes import compute


class FiguresFiller(Service):
    log = Logger()

    def __init__(self, reactor, pool, db_path):
        self.reactor = reactor
        self.pool = pool
        self.db_path = db_path
        self.failed: set[str] = set()  # until the next start: their logs are not here or unreadable
        self._running: Deferred | None = None
        self._again = False

    def startService(self):
        super().startService()
        self.kick()

    def stopService(self):
        super().stopService()
        self._again = False
        return self._running

    def _stopping(self):
        return not self.running

    def kick(self):
        """Compute what is missing, now or once the run under way ends."""
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = Deferred.fromCoroutine(self._run())
        self._running.addErrback(lambda f: self.log.failure("computing figures failed", f))

    async def _run(self):
        try:
            while True:
                self._again = False
                failed = await deferToThreadPool(self.reactor, self.pool, compute.fill_missing,
                                                 self.db_path, frozenset(self.failed), self._stopping)
                self.failed.update(failed)
                if not (self._again and self.running):
                    return
        finally:
            self._running = None
