"""
``[upload] allow_if``: a command run before each upload round (and at
least every minute while a round goes on) whose failure pauses uploads,
e.g. on a metered network.  Scans go on; only the uploader waits, and tries
the command again after ``RECHECK`` seconds or when woken.
"""

from twisted.logger import Logger

# Seconds between two runs of the command while it fails, and within a long round.
RECHECK = 60.0
# A command still running after this is killed with its process group: uploads stay paused.
TIMEOUT = 60.0


class AllowIf:
    """``run(command)`` returns a Deferred of a ``scan.hooks.CommandResult``-like (``ok``, ``why``)."""

    log = Logger()

    def __init__(self, clock, command, run):
        self.clock = clock
        self.command = command
        self.run = run
        self.allowed = True
        self.reason = None  # one line while the command fails
        self.checked_at = None  # reactor time of the last run

    def due(self):
        """True when the last run is older than ``RECHECK`` (or there was none)."""
        return self.checked_at is None or self.clock.seconds() - self.checked_at >= RECHECK

    async def check(self):
        """Run the command; True if uploads may go."""
        result = await self.run(self.command)
        self.checked_at = self.clock.seconds()
        reason = None if result.ok else f"[upload] allow_if {result.why}"
        if reason != self.reason:
            if reason is None:
                self.log.info("[upload] allow_if succeeds again: uploads go on")
            else:
                self.log.warn("uploads paused: {reason}", reason=reason)
        self.allowed, self.reason = result.ok, reason
        return result.ok
