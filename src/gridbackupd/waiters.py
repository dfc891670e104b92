"""Deferreds that wait for a snapshot or a restore to reach its end."""

from twisted.internet.defer import Deferred


class Waiters:
    """Keyed one-shot notifications: ``wait(key)`` fires at ``fire(key, value)``."""

    def __init__(self):
        self._waiting = {}

    def wait(self, key):
        d: Deferred = Deferred()
        self._waiting.setdefault(key, []).append(d)
        return d

    def fire(self, key, value=None):
        for d in self._waiting.pop(key, []):
            d.callback(value)


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
