"""
The writer lock: only one daemon writes a backup set at a time.

The lock is a small immutable document linked as ``lock`` in the root:
the writer's id, its host, its wall time (for a person) and ``seq``, which
the writer counts up at every renewal.  Whether another daemon's lock is
stale is judged without comparing two machines' clocks: a reader notes,
on its own monotonic clock, when it first saw the lock with the ``seq`` it
has now, and takes the lock over only when it has stayed the same for
``LOCK_STALE`` seconds.  A machine whose clock runs ahead (or was set
forward) therefore never takes over a live lock, and a lock of the old
form (no ``seq``) is judged the same way by its heartbeat value.

So the holder must renew even when it has nothing to write: ``Heartbeat``
renews on a timer, and every write renews first when the lock is
``LOCK_HEARTBEAT`` old.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gridbackupd import clock as clockmod
from gridbackupd.errors import GridBackupError, TahoeTooLarge
from gridbackupd.format.index import MAX_LOCK, IndexFormatError, encode_lock, parse_lock
from gridbackupd.grid.layout import LOCK

__all__ = ["Heartbeat", "LOCK_HEARTBEAT", "LOCK_STALE", "WriterLock", "WriterLockHeld"]

# Renew our lock when our last renewal is this old (on the timer or before a write)...
LOCK_HEARTBEAT = 240.0
# ...and take over another writer's lock seen unchanged for this long.
LOCK_STALE = 900.0
# How often the heartbeat timer looks whether a renewal is due.
RENEW_CHECK = 60.0


class WriterLockHeld(GridBackupError):
    """Another daemon writes this backup set."""


class WriterLock:
    """
    This daemon's side of the lock.  ``wallclock`` gives the time written
    in the document; ``monotonic`` (seconds that only go forward) every
    duration.  Call ``take`` and ``hold`` one at a time (the publisher's
    lock).
    """

    log = Logger()

    def __init__(self, client, writer_id, host, wallclock=clockmod.wall, monotonic=clockmod.monotonic):
        self.client = client
        self.writer_id = writer_id
        self.host = host
        self.wallclock = wallclock
        self.monotonic = monotonic
        self.error: str | None = None  # why this daemon does not write, for the status
        self.seq = 0  # the last renewal we wrote
        self.renewed: float | None = None  # monotonic time of our last renewal; None: not held
        self._seen: tuple | None = None  # (another writer's lock as we saw it, monotonic time first seen)

    def due(self):
        """Whether we hold the lock and its renewal is due."""
        return self.renewed is not None and self.monotonic() - self.renewed >= LOCK_HEARTBEAT

    async def hold(self, root):
        """Make sure we hold the lock, renewing it when due (WriterLockHeld if another daemon has it)."""
        if self.renewed is None or self.due():
            await self.take(root)

    async def take(self, root, children=None, extra=None, force=False):
        """
        Write our lock, with ``extra`` children of the root in the same
        write; unless ``force``, only if the lock there is ours, missing,
        unreadable or stale.
        """
        if children is None:
            children = await self.client.list_dir(root)
        current = children.get(LOCK)
        other = await self.read(current.cap) if current is not None else None
        if other is not None and other["writer"] != self.writer_id and not force:
            unchanged = self._unchanged_for(other)
            if unchanged < LOCK_STALE:
                self.renewed = None
                self.error = (
                    f"another gridbackupd (host {other['host']!r}) writes this backup set "
                    f"(its lock has not changed for {unchanged:.0f}s as this daemon saw it); "
                    f"this daemon does not write to it until that lock stays unchanged for "
                    f"{LOCK_STALE:.0f}s"
                )
                raise WriterLockHeld(self.error)
            self.log.warn("taking over the writer lock of host {host}, unchanged for {age:.0f}s",
                          host=other["host"], age=unchanged)
        seq = max(self.seq, (other or {}).get("seq") or 0) + 1
        cap = await self.client.upload_bytes(encode_lock(self.writer_id, self.host, self.wallclock(), seq))
        await self.client.set_children(root, {**(extra or {}), LOCK: cap})
        # Two daemons may have written at once: the one whose lock is linked now won.
        linked = await self.client.child_cap(root, LOCK)
        if linked != cap:
            winner = await self.read(linked) if linked else None
            if winner is None or winner["writer"] != self.writer_id:
                self.renewed = None
                self.error = "another gridbackupd took the writer lock at the same moment"
                raise WriterLockHeld(self.error)
        self.seq = seq
        self.renewed = self.monotonic()
        self.error = None
        self._seen = None

    def _unchanged_for(self, other):
        """Seconds (monotonic, ours) since we first saw ``other``'s lock as it is now."""
        renewal = other["seq"] if other["seq"] is not None else ("heartbeat", other["heartbeat"])
        seen = (other["writer"], renewal)
        now = self.monotonic()
        if self._seen is None or self._seen[0] != seen:
            self._seen = (seen, now)
        return now - self._seen[1]

    async def read(self, cap):
        """
        The lock document at ``cap``, or None (taken over) if it does not
        parse or its cap says it is larger than a lock may be (not downloaded).
        """
        try:
            return parse_lock(await self.client.download(cap, max_size=MAX_LOCK))
        except (IndexFormatError, TahoeTooLarge) as e:
            self.log.warn("the writer lock in the root is unreadable, taking it over: {e}", e=e)
            return None


class Heartbeat(Service):
    """
    Renews the lock this daemon holds every ``LOCK_HEARTBEAT`` seconds,
    writes or not: a daemon idle between hourly scans must not look dead.
    ``renew`` is the publisher's (it serialises with the writes); a failed
    renewal is logged and tried again at the next check.
    """

    log = Logger()

    def __init__(self, clock, renew, every=RENEW_CHECK):
        self.clock = clock
        self.renew = renew
        self.every = every
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.beat)
        self._loop.clock = self.clock
        self._loop.start(self.every, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def beat(self):
        d = Deferred.fromCoroutine(self.renew())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure):
        if failure.check(WriterLockHeld):
            self.log.info("the writer lock was not renewed: {why}", why=str(failure.value))
        else:
            self.log.failure("the writer lock could not be renewed; trying again", failure)
