"""
Stand-ins for the daemon's worker pool and reactor that run "threaded"
work at once, in the caller's thread, so tests of the parts that use
``deferToThreadPool`` stay synchronous and deterministic.
"""

from twisted.internet.task import Clock
from twisted.python.failure import Failure


class InlinePool:
    """What ``deferToThreadPool`` needs of a thread pool, running the function at once."""

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadlessReactor(Clock):
    """A Clock whose ``callFromThread`` runs the call at once (there is no other thread)."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)
