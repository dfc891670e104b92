"""
The upload schedule (``[upload] schedule``): rules by weekday and time of
day, in local time, each setting an upload rate; the first rule that
matches wins, and ``[upload] max_rate`` holds when none does.

Pure functions over an aware ``datetime`` (its ``tzinfo`` a ``ZoneInfo``),
so that a test can put the clock on either side of a DST change.  A rule::

    DAYS  START-END  RATE

- DAYS: ``*`` (every day), or days and ranges of days separated by commas:
  ``Mon-Fri``, ``Sat,Sun``, ``Mon,Wed-Fri`` (``Mon`` ... ``Sun``; a range
  may wrap: ``Fri-Mon``).
- START-END: ``HH:MM-HH:MM`` from ``00:00`` to ``24:00``; the rule holds
  from START up to, not including, END.  An END at or before START runs
  past midnight into the next day (``Mon-Fri 22:00-06:00`` is each night
  from Monday's to Saturday's morning); DAYS name the day it starts on.
- RATE: ``0`` (uploads paused), ``unlimited``, or bytes per second as a
  size (``1MiB``, ``512KiB``, ``200k``), optionally followed by ``/s``.

Times are local wall-clock times: a rule ``09:00-18:00`` holds from nine
to six whatever the UTC offset is that day.  On a day when the clock goes
forward, a time in the skipped hour starts at the first instant after
it; where the clock goes back, a rule over the repeated hour holds both
times.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import attr

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY = 1440  # minutes
_WEEK = 7 * _DAY
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}
# How far ahead a change is looked for: a week, and a day either side for
# the UTC offset.  A schedule with no change that far never changes.
_HORIZON_DAYS = 9


class ScheduleError(ValueError):
    """A rule that cannot be read: the message says what is wrong, in one line."""


@attr.frozen
class Rule:
    """One rule: where in the week it holds (minutes from Monday 00:00) and its rate."""

    text: str  # as written, spaces squeezed: for the status
    spans: tuple  # ((start, end), ...) minutes of the week, start < end <= _WEEK
    rate: int | None  # bytes/s; 0 = paused; None = unlimited

    def holds_at(self, minute_of_week: int) -> bool:
        return any(start <= minute_of_week < end for start, end in self.spans)


@attr.frozen
class Schedule:
    """The rules in order, and the rate when none holds (None = unlimited)."""

    rules: tuple = ()
    default_rate: int | None = None


@attr.frozen
class Decision:
    """What holds at an instant: the rule (None: ``max_rate``), its rate, and when that changes."""

    rule: str | None
    rate: int | None
    next_change: datetime | None  # None: never, as the schedule stands


def parse_rate(text: str) -> int | None:
    """``unlimited`` -> None, else bytes per second (``0`` = paused)."""
    value = text.strip().lower()
    if value == "unlimited":
        return None
    m = re.fullmatch(r"([0-9]+)\s*([a-z]*)(?:/s)?", value)
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ScheduleError(f"rate {text!r} is not 0, unlimited or a rate such as 1MiB, 512KiB or 200k")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def _parse_days(text: str) -> list[int]:
    if text == "*":
        return list(range(7))
    days: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            a = DAYS.index(first.strip().lower()[:3]) if len(first.strip()) == 3 else -1
            b = DAYS.index(last.strip().lower()[:3]) if last and len(last.strip()) == 3 else a
        except ValueError:
            a = b = -1
        if a < 0 or b < 0:
            raise ScheduleError(f"days {text!r} are not * or days such as Mon-Fri or Sat,Sun")
        days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
    return sorted(set(days))


def _parse_minute(text: str, times: str) -> int:
    m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", text)
    if not m or int(m.group(2)) > 59 or int(m.group(1)) * 60 + int(m.group(2)) > _DAY:
        raise ScheduleError(f"times {times!r} are not HH:MM-HH:MM between 00:00 and 24:00")
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_rule(line: str) -> Rule:
    """One rule line; ScheduleError (one line) if it is not one."""
    words = line.split()
    if len(words) != 3:
        raise ScheduleError("expected three fields: DAYS START-END RATE, e.g. Mon-Fri 09:00-18:00 1MiB")
    days_text, times, rate_text = words
    days = _parse_days(days_text)
    start_text, dash, end_text = times.partition("-")
    if not dash:
        raise ScheduleError(f"times {times!r} are not HH:MM-HH:MM between 00:00 and 24:00")
    start, end = _parse_minute(start_text, times), _parse_minute(end_text, times)
    if start == _DAY:
        raise ScheduleError(f"times {times!r}: a rule cannot start at 24:00")
    length = end - start if end > start else end + _DAY - start
    spans = []
    for day in days:
        a = day * _DAY + start
        b = a + length
        if b <= _WEEK:
            spans.append((a, b))
        else:  # past Sunday midnight: on into Monday
            spans.extend([(a, _WEEK), (0, b - _WEEK)])
    return Rule(" ".join(words), tuple(sorted(spans)), parse_rate(rate_text))


def parse_schedule(lines, default_rate: int | None = None) -> Schedule:
    """
    The rules of ``lines`` (blank lines skipped); a bad one raises
    ScheduleError naming it: ``line N ('...'): what is wrong``.
    """
    rules = []
    for number, line in enumerate((ln for ln in lines if ln.strip()), start=1):
        try:
            rules.append(parse_rule(line))
        except ScheduleError as e:
            raise ScheduleError(f"line {number} ({line.strip()!r}): {e}") from None
    return Schedule(tuple(rules), default_rate)


def _minute_of_week(when: datetime) -> int:
    return when.weekday() * _DAY + when.hour * 60 + when.minute


def _holding(schedule: Schedule, when: datetime):
    """(index, rule) of the first rule holding at local time ``when``, or (None, None)."""
    minute = _minute_of_week(when)
    for i, rule in enumerate(schedule.rules):
        if rule.holds_at(minute):
            return i, rule
    return None, None


def _candidates(schedule: Schedule, when: datetime):
    """
    Instants after ``when`` at which what holds may change: every rule's
    start and end on each day of the horizon (both readings of a repeated
    local time), and every change of the UTC offset (where a local time is
    skipped or repeated).
    """
    tz = when.tzinfo
    now = when.timestamp()
    minutes = {0}
    for rule in schedule.rules:
        for start, end in rule.spans:
            minutes.update((start % _DAY, end % _DAY))
    found = set()
    first = when.replace(tzinfo=None).date() - timedelta(days=1)
    for d in range(_HORIZON_DAYS + 1):
        day = datetime.combine(first + timedelta(days=d), datetime.min.time())
        for minute in minutes:
            naive = day + timedelta(minutes=minute)
            for fold in (0, 1):
                t = naive.replace(tzinfo=tz, fold=fold).timestamp()
                if t > now:
                    found.add(t)
    found.update(_offset_changes(tz, now, now + _HORIZON_DAYS * 86400))
    return sorted(found)


def _offset(tz, t: float):
    return datetime.fromtimestamp(t, tz).utcoffset()


def _offset_changes(tz, start: float, stop: float):
    """The instants in (start, stop] where the UTC offset of ``tz`` changes (to the second)."""
    changes = []
    t, before = start, _offset(tz, start)
    while t < stop:
        nxt = min(t + 3600.0, stop)
        after = _offset(tz, nxt)
        if after != before:
            lo, hi = t, nxt  # the offset is ``before`` at lo and ``after`` at hi
            while hi - lo > 1.0:
                mid = (lo + hi) / 2
                if _offset(tz, mid) == before:
                    lo = mid
                else:
                    hi = mid
            changes.append(float(int(hi)) if _offset(tz, float(int(hi))) == after else hi)
            before = after
        t = nxt
    return changes


def decide(schedule: Schedule, when: datetime) -> Decision:
    """
    What holds at ``when`` (aware, in the local zone): the rule, its rate,
    and the next instant at which either changes, in ``when``'s zone.
    """
    if when.tzinfo is None:
        raise ValueError("decide needs an aware datetime")
    index, rule = _holding(schedule, when)
    rate = rule.rate if rule is not None else schedule.default_rate
    next_change = None
    if schedule.rules:
        tz = when.tzinfo
        for t in _candidates(schedule, when):
            other_index, other = _holding(schedule, datetime.fromtimestamp(t, tz))
            other_rate = other.rate if other is not None else schedule.default_rate
            if (other_index, other_rate) != (index, rate):
                next_change = datetime.fromtimestamp(t, tz)
                break
    return Decision(rule.text if rule is not None else None, rate, next_change)


def decide_at(schedule: Schedule, unix_time: float, tz) -> Decision:
    """``decide`` at a Unix time, read in ``tz``."""
    return decide(schedule, datetime.fromtimestamp(unix_time, tz))


def local_zone():
    """
    The system's zone as a ``ZoneInfo`` (DST rules and all): ``$TZ`` if it
    names one, else ``/etc/localtime``, else UTC.
    """
    import os
    import zoneinfo

    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return timezone.utc
