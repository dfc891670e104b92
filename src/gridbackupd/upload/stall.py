"""
Stalls made visible.  A snapshot that stays ``uploading`` while the
uploader has nothing pending, in flight or waiting on a retry will never
finish by itself: the recovery pass (``Publisher.recover``) is there so
that this never happens, but if it does a person must see it.  After
``STALL_AFTER`` seconds of it, ``stalled`` says since when and why (for
``GET /v1/status``'s ``upload.stalled`` and ``gridbackup_stalled`` in
``/metrics``), and the daemon logs it once.  The minute is counted on the
reactor's (monotonic) clock; ``since`` is a wall time, for a person.
"""

from twisted.logger import Logger

from gridbackupd import clock as clockmod
from gridbackupd.state import queue, snapshots

STALL_AFTER = 60.0


class StallWatch:
    """Told by the uploader's loop when it goes idle, wakes, and gets on; watches the clock."""

    log = Logger()

    def __init__(self, clock, conn, paused, after=STALL_AFTER, wallclock=clockmod.wall):
        self.clock = clock
        self.wallclock = wallclock
        self.conn = conn
        self.paused = paused  # a callable: pending blobs wait on purpose while paused
        self.after = after
        self.since = None  # when the uploader went idle with a snapshot uploading (clock)
        self.since_wall = None  # the same moment on the wall clock
        self.stalled = None  # {"since", "reason"} once that lasted ``after`` seconds
        self._idle = False
        self._timer = None

    def idle(self):
        """The loop waits for new work: if a snapshot is still uploading, the clock runs."""
        self._idle = True
        if self.reason() is None:
            self.reset()
            return
        if self.since is None:
            self.since = self.clock.seconds()
            self.since_wall = self.wallclock()
        if self.stalled is None and self._timer is None:
            delay = max(0.0, self.since + self.after - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._check)

    def woken(self):
        """A round starts; a round that does nothing keeps the clock running."""
        self._idle = False
        self._cancel()

    def reset(self):
        """The uploader got on (did work, or waits on a retry): no stall."""
        self._cancel()
        self.since = self.since_wall = None
        if self.stalled is not None:
            self.stalled = None
            self.log.info("uploads are no longer stalled")

    def stop(self):
        self._cancel()

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check(self):
        self._timer = None
        if not self._idle:
            return
        reason = self.reason()
        if reason is None:
            self.reset()
            return
        self.stalled = {"since": self.since_wall, "reason": reason}
        self.log.error("uploads are stalled: {reason}", reason=reason)

    def reason(self):
        """Why the uploading snapshots cannot finish as things stand (one line), or None."""
        waits = snapshots.uploading_waits(self.conn)
        if not waits:
            return None
        pending, _ = queue.pending_totals(self.conn)
        if pending and self.paused():
            return None
        snapshot_id, unfinished, parent = waits[0]
        if parent is not None:
            detail = f"it waits for its parent {parent}, whose log is not on the grid"
        elif unfinished:
            detail = f"{unfinished} of its blobs are not committed ({pending} blobs pending in all)"
        else:
            detail = "all its blobs are committed but its log was not published"
        others = f" (and {len(waits) - 1} more)" if len(waits) > 1 else ""
        return (f"snapshot {snapshot_id}{others} is uploading while nothing is in flight "
                f"or waiting on a retry: {detail}")
