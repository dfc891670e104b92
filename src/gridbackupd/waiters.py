"""Deferreds that wait for a snapshot or a restore to reach its end."""

from twisted.internet.defer import Deferred


class Waiters:
    """Keyed one-shot notifications: ``wait(key)`` fires at ``fire(key, value)``."""

    def __init__(self):
        self._waiting = {}

    def wait(self, key):
        d = Deferred()
        self._waiting.setdefault(key, []).append(d)
        return d

    def fire(self, key, value=None):
        for d in self._waiting.pop(key, []):
            d.callback(value)
