"""
Deferreds that wait for something to end: a snapshot or a restore
(``Waiters``, by key), a start or a computation that many wait for
(``OneShot``).
"""

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class Waiters:
    """Keyed one-shot notifications: ``wait(key)`` fires at ``fire(key, value)``."""

    def __init__(self):
        self._waiting = {}
        self._listeners = []

    def listen(self, callback):
        """Call ``callback(key, value)`` at every ``fire``, whoever waits (the mount indexer)."""
        self._listeners.append(callback)

    def wait(self, key):
        d: Deferred = Deferred()
        self._waiting.setdefault(key, []).append(d)
        return d

    def fire(self, key, value=None):
        # Listeners first: a waiter woken next may look for what they started.
        for callback in self._listeners:
            callback(key, value)
        for d in self._waiting.pop(key, []):
            d.callback(value)


class OneShot:
    """
    The outcome of something that happens once (a start, a computation),
    for any number of observers: ``observe()`` gives each its own Deferred,
    which fires with the outcome (a value or a Failure) when ``fire`` is
    called, or at once if it was.  An observer's callbacks never change
    what the next one gets.
    """

    def __init__(self):
        self._outcome = None  # (result,) once fired
        self._observers = []

    @classmethod
    def of(cls, d):
        """The outcome of the Deferred ``d``, whose own chain goes on with None."""
        one = cls()
        d.addBoth(one.fire)
        return one

    @property
    def fired(self):
        return self._outcome is not None

    def fire(self, result):
        """Record the outcome (a value or a Failure) and hand it to every observer."""
        self._outcome = (result,)
        observers, self._observers = self._observers, []
        for d in observers:
            self._deliver(d, result)

    def observe(self):
        """A Deferred with the outcome; cancelling it drops only this observer."""
        if self._outcome is not None:
            d: Deferred = Deferred()
            self._deliver(d, self._outcome[0])
            return d
        d = Deferred(lambda d: self._observers.remove(d))
        self._observers.append(d)
        return d

    @staticmethod
    def _deliver(d, result):
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
