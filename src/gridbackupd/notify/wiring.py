"""
The notifier as ``[notify]`` says, with what it reads of the running parts
(the uploader and publisher exist only once the grid answers, so each is
asked for when a look is taken).
"""

from gridbackupd.notify.conditions import Sources
from gridbackupd.notify.notifier import Notifier
from gridbackupd.notify.targets import build
from gridbackupd.state import notifications as stored


def sources(parts, protected_as_of):
    """``parts()`` -> (uploader or None, publisher or None); ``protected_as_of()`` -> a time or None."""

    def stalled():
        uploader = parts()[0]
        return uploader.stall.stalled if uploader is not None else None

    def lock_error():
        publisher = parts()[1]
        return publisher.lock_error if publisher is not None else None

    return Sources(stalled=stalled, lock_error=lock_error, protected_as_of=protected_as_of)


def notifier(reactor, conn, pool, config, parts, protected_as_of=lambda: None, crashed=False):
    """The notifier service; ``crashed``: the last daemon was killed, so what it left is announced redone."""
    notify = config.notify
    n = Notifier(reactor, conn, config.hostname, build(reactor, pool, notify),
                 repeat_every=notify.repeat_every, stale_after=notify.stale_after,
                 sources=sources(parts, protected_as_of))
    work = stored.work_left(conn) if crashed else []
    if work:
        n.crash_recovered(work)
    return n
