"""
Which snapshots a ``[retention]`` policy keeps and which it forgets (issue 7).

The rules are those of restic's ``forget --keep-*``: snapshots are looked at
newest first; ``keep_last`` keeps the N newest, and each period rule keeps
the newest snapshot of each of the N most recent periods (hours, days, ISO
weeks, months, years) that have a snapshot.  Two safety rules of our own: the
newest snapshot of a host is never forgotten, and a policy that keeps nothing
keeps everything, so that an unset ``[retention]`` section cannot empty a
backup.  Everything here is pure: the caller forgets what we name.
"""

import math
from collections import Counter
from datetime import datetime

import attr


def _count(instance, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more, got {value!r}")


def _finite(instance, attribute, value):
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, got {value!r}")


# The period rules, finest first; the label is both the bucket and the reason.
PERIODS = (
    ("hourly", lambda d: d.strftime("%Y-%m-%d %Hh")),
    ("daily", lambda d: d.strftime("%Y-%m-%d")),
    ("weekly", lambda d: "%04d-W%02d" % d.isocalendar()[:2]),
    ("monthly", lambda d: d.strftime("%Y-%m")),
    ("yearly", lambda d: "%04d" % d.year),
)


@attr.frozen
class RetentionPolicy:
    """How many snapshots of each kind to keep per host; 0 turns a rule off."""

    keep_last: int = attr.field(default=0, validator=_count)
    keep_hourly: int = attr.field(default=0, validator=_count)
    keep_daily: int = attr.field(default=0, validator=_count)
    keep_weekly: int = attr.field(default=0, validator=_count)
    keep_monthly: int = attr.field(default=0, validator=_count)
    keep_yearly: int = attr.field(default=0, validator=_count)

    @property
    def empty(self):
        """True when no rule is on: such a policy keeps everything."""
        return not any(attr.astuple(self))

    def describe(self):
        """The policy as JSON-ready data for the API."""
        return attr.asdict(self)


@attr.frozen
class SnapshotInfo:
    """What retention needs to know of a snapshot; ``time`` is the scan's start."""

    id: str
    host: str
    time: float = attr.field(validator=_finite)


@attr.frozen
class Decision:
    """
    The outcome: ``keep`` maps each kept id to every reason it is kept for,
    ``forget`` lists the other ids; both newest first.
    """

    keep: dict
    forget: tuple


def _newest_first(snapshot):
    # Ties on time go to the larger id, so the order never depends on input order.
    return (snapshot.time, snapshot.id)


def _reasons_for_host(snapshots, policy, tz):
    """Reasons for each of one host's snapshots, given newest first."""
    reasons: dict[str, list[str]] = {s.id: [] for s in snapshots}
    reasons[snapshots[0].id].append("newest")
    if policy.empty:
        for s in snapshots:
            reasons[s.id].append("no policy")
        return reasons
    for s in snapshots[: policy.keep_last]:
        reasons[s.id].append("last")
    local = [datetime.fromtimestamp(s.time, tz) for s in snapshots]
    for name, label in PERIODS:
        wanted = getattr(policy, "keep_" + name)
        seen: set[str] = set()
        for s, when in zip(snapshots, local):
            if len(seen) >= wanted:
                break
            bucket = label(when)
            if bucket not in seen:
                # Newest first: the first snapshot met in a bucket is its newest.
                seen.add(bucket)
                reasons[s.id].append(f"{name} {bucket}")
    return reasons


def apply_policy(snapshots, policy, tz=None):
    """
    Decide which ``snapshots`` to keep under ``policy``, each host on its own.

    Periods are counted in ``tz`` (a ``tzinfo``; None is the local time
    zone).  Where a clock goes back, the hour or day it repeats is one bucket.
    """
    ordered = sorted(snapshots, key=_newest_first, reverse=True)
    by_host: dict[str, list] = {}
    for s in ordered:
        by_host.setdefault(s.host, []).append(s)
    twice = sorted(i for i, n in Counter(s.id for s in ordered).items() if n > 1)
    if twice:
        raise ValueError(f"snapshot ids must be unique, repeated: {twice!r}")
    reasons = {}
    for group in by_host.values():
        reasons.update(_reasons_for_host(group, policy, tz))
    return Decision(
        keep={s.id: tuple(reasons[s.id]) for s in ordered if reasons[s.id]},
        forget=tuple(s.id for s in ordered if not reasons[s.id]),
    )
