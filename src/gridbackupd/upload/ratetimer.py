"""
The schedule applied as time goes: which rule holds is read from the wall
clock in the local zone (``upload.schedule``), at each change the schedule
announces and at least every minute, so that a wall clock set forward or
back, or a DST change, is followed within a minute.  The waits themselves
run on the reactor's (monotonic) clock; the pacing of the bytes does not
depend on this at all (``upload.throttle``).
"""

from twisted.logger import Logger

from gridbackupd import clock as clockmod
from gridbackupd.upload.schedule import Decision, Schedule, decide_at, local_zone

# The longest time between two readings of the schedule (seconds).
EVERY = 60.0


class RateTimer:
    """Calls ``apply(rate)`` whenever the rate the schedule gives changes (and once at start)."""

    log = Logger()

    def __init__(self, clock, schedule: Schedule, apply, zone=None, wallclock=clockmod.wall):
        self.clock = clock
        self.schedule = schedule
        self.apply = apply
        self.zone = zone if zone is not None else local_zone()
        self.wallclock = wallclock
        self.decision: Decision | None = None
        self._read_at = 0.0  # the wall time the decision was made at
        self._timer = None

    def start(self):
        self.evaluate()

    def stop(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def evaluate(self):
        """Read the schedule now, apply a new rate, and wake at the next change (or in a minute)."""
        self.stop()
        now = self.wallclock()
        before = self.decision
        if before is not None and self._read_at <= now and (
                before.next_change is None or now < before.next_change.timestamp()):
            decision = before  # the wall clock is still between the last reading and the change
        else:
            decision = decide_at(self.schedule, now, self.zone)
            self._read_at = now
        self.decision = decision
        if before is None or (before.rule, before.rate) != (decision.rule, decision.rate):
            if before is not None:
                self.log.info("upload schedule: {rule}, rate {rate}",
                              rule=decision.rule or "no rule ([upload] max_rate)",
                              rate=_shown(decision.rate))
            self.apply(decision.rate)
        if not self.schedule.rules:
            return  # max_rate alone: nothing ever changes
        delay = EVERY
        if decision.next_change is not None:
            delay = min(delay, decision.next_change.timestamp() - now + 0.001)
        self._timer = self.clock.callLater(max(delay, 0.001), self.evaluate)

    @property
    def rate(self):
        return self.decision.rate if self.decision is not None else self.schedule.default_rate

    def status(self):
        """``{rule, rate, next_change}``: rate in bytes/s (0 paused, None unlimited), a Unix time or None."""
        d = self.decision
        if d is None:
            return {"rule": None, "rate": self.schedule.default_rate, "next_change": None}
        return {
            "rule": d.rule,
            "rate": d.rate,
            "next_change": round(d.next_change.timestamp(), 3) if d.next_change is not None else None,
        }


def _shown(rate):
    return "unlimited" if rate is None else ("paused" if rate == 0 else f"{rate} B/s")
