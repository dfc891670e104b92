"""
The upload schedule: its grammar, which rule holds when (rule boundaries,
midnight, the days a DST change skips or repeats an hour, in
Europe/Berlin), the rate timer on a ``Clock`` while the wall clock moves
(and jumps), and bad lines refused as one-line configuration errors.
"""

import os
from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.config import parse_config
from gridbackupd.errors import ConfigError
from gridbackupd.upload.ratetimer import EVERY, RateTimer
from gridbackupd.upload.schedule import (
    ScheduleError,
    decide,
    parse_rate,
    parse_rule,
    parse_schedule,
)

BERLIN = ZoneInfo("Europe/Berlin")
MiB = 1024 * 1024

# The example, and a night rule that runs past midnight.
EXAMPLE = """
    Mon-Fri 09:00-10:00  0
    Mon-Fri 09:00-18:00  1MiB
    Sat,Sun 02:00-03:00  5k
    Fri     22:00-06:00  200KiB/s
    *       00:00-24:00  unlimited
"""


def at(*args, fold=0):
    return datetime(*args, tzinfo=BERLIN, fold=fold)


class GrammarTests(SynchronousTestCase):
    def test_rates(self):
        self.assertEqual(parse_rate("0"), 0)
        self.assertIsNone(parse_rate("unlimited"))
        self.assertEqual(parse_rate("1MiB"), MiB)
        self.assertEqual(parse_rate("512KiB/s"), 512 * 1024)
        self.assertEqual(parse_rate("200k"), 200_000)
        self.assertEqual(parse_rate("4096"), 4096)

    def test_days(self):
        self.assertEqual(parse_rule("Mon-Fri 09:00-18:00 1MiB").spans,
                         tuple((d * 1440 + 540, d * 1440 + 1080) for d in range(5)))
        # A range may wrap past Sunday; a rule may run past midnight (and past Sunday's).
        self.assertEqual({s // 1440 for s, _ in parse_rule("Fri-Mon 10:00-11:00 0").spans}, {4, 5, 6, 0})
        self.assertEqual(parse_rule("Sun 23:00-01:00 0").spans, ((0, 60), (6 * 1440 + 1380, 7 * 1440)))
        self.assertEqual(parse_rule("mon,WED 00:00-24:00 0").spans, ((0, 1440), (2880, 4320)))

    def test_bad_lines_say_what_is_wrong(self):
        for line, needle in [
            ("Mon-Fri 09:00-18:00", "three fields"),
            ("Mon-Fry 09:00-18:00 1MiB", "days 'Mon-Fry'"),
            ("Mon 9-18 1MiB", "HH:MM-HH:MM"),
            ("Mon 09:00-25:00 1MiB", "HH:MM-HH:MM"),
            ("Mon 09:60-10:00 1MiB", "HH:MM-HH:MM"),
            ("Mon 24:00-10:00 1MiB", "cannot start at 24:00"),
            ("Mon 09:00-10:00 fast", "rate 'fast'"),
            ("Mon 09:00-10:00 1MiB/h", "rate '1MiB/h'"),
        ]:
            e = self.assertRaises(ScheduleError, parse_rule, line)
            self.assertIn(needle, str(e))
        e = self.assertRaises(ScheduleError, parse_schedule, ["* 00:00-24:00 0", "", "Mon 1 2 3 4"])
        self.assertEqual(str(e).split(":")[0], "line 2 ('Mon 1 2 3 4')")


class DecideTests(SynchronousTestCase):
    schedule = parse_schedule(EXAMPLE.splitlines(), default_rate=3 * MiB)

    def decide(self, when):
        d = decide(self.schedule, when)
        return d.rule, d.rate, d.next_change

    def test_first_rule_that_holds_wins(self):
        self.assertEqual(self.decide(at(2026, 6, 3, 9, 30)),  # a Wednesday
                         ("Mon-Fri 09:00-10:00 0", 0, at(2026, 6, 3, 10, 0)))
        self.assertEqual(self.decide(at(2026, 6, 3, 10, 0)),
                         ("Mon-Fri 09:00-18:00 1MiB", MiB, at(2026, 6, 3, 18, 0)))
        self.assertEqual(self.decide(at(2026, 6, 3, 17, 59, 59)),
                         ("Mon-Fri 09:00-18:00 1MiB", MiB, at(2026, 6, 3, 18, 0)))
        self.assertEqual(self.decide(at(2026, 6, 3, 18, 0)),
                         ("* 00:00-24:00 unlimited", None, at(2026, 6, 4, 9, 0)))

    def test_across_midnight(self):
        # Friday night's rule runs into Saturday; then Saturday's own hour.
        self.assertEqual(self.decide(at(2026, 6, 5, 21, 0)),
                         ("* 00:00-24:00 unlimited", None, at(2026, 6, 5, 22, 0)))
        self.assertEqual(self.decide(at(2026, 6, 5, 23, 59)),
                         ("Fri 22:00-06:00 200KiB/s", 200 * 1024, at(2026, 6, 6, 2, 0)))
        # 02:00-03:00 on Saturday comes first (it is listed first) inside the night rule.
        self.assertEqual(self.decide(at(2026, 6, 6, 2, 30)),
                         ("Sat,Sun 02:00-03:00 5k", 5000, at(2026, 6, 6, 3, 0)))
        self.assertEqual(self.decide(at(2026, 6, 6, 3, 0)),
                         ("Fri 22:00-06:00 200KiB/s", 200 * 1024, at(2026, 6, 6, 6, 0)))

    def test_no_rule_holds_then_max_rate(self):
        schedule = parse_schedule(["Mon-Fri 09:00-18:00 1MiB"], default_rate=3 * MiB)
        d = decide(schedule, at(2026, 6, 6, 12, 0))  # Saturday
        self.assertEqual((d.rule, d.rate, d.next_change), (None, 3 * MiB, at(2026, 6, 8, 9, 0)))
        # A schedule that never changes says so.
        d = decide(parse_schedule(["* 00:00-24:00 1MiB"]), at(2026, 6, 6, 12, 0))
        self.assertEqual((d.rate, d.next_change), (MiB, None))

    def test_the_hour_skipped_in_spring(self):
        # 29 March 2026: 02:00 CET becomes 03:00 CEST; Sunday's 02:00-03:00 never comes.
        d = decide(self.schedule, at(2026, 3, 29, 1, 30))
        self.assertEqual((d.rule, d.next_change), ("* 00:00-24:00 unlimited", at(2026, 3, 30, 9, 0)))
        # Saturday's did, an hour after 01:00 UTC as usual (CET).
        d = decide(self.schedule, at(2026, 3, 28, 1, 0))
        self.assertEqual(d.next_change.timestamp(), at(2026, 3, 28, 2, 0).timestamp())
        # A weekday hour after the change is local time: 09:00 CEST is 07:00 UTC.
        d = decide(self.schedule, at(2026, 3, 30, 8, 0))
        self.assertEqual(d.next_change.timestamp(), datetime.fromisoformat("2026-03-30T07:00:00+00:00").timestamp())

    def test_the_hour_repeated_in_autumn(self):
        # 25 October 2026: 03:00 CEST becomes 02:00 CET; Sunday's 02:00-03:00 holds both times round.
        first = at(2026, 10, 25, 2, 10, fold=0)
        second = at(2026, 10, 25, 2, 10, fold=1)
        self.assertEqual(second.timestamp() - first.timestamp(), 3600)
        for when in (first, second):
            d = decide(self.schedule, when)
            self.assertEqual(d.rule, "Sat,Sun 02:00-03:00 5k")
            self.assertEqual(d.next_change.timestamp(), at(2026, 10, 25, 3, 0).timestamp())
        # It came at 02:00 CEST (00:00 UTC).
        d = decide(self.schedule, at(2026, 10, 25, 1, 0))
        self.assertEqual(d.next_change.timestamp(), datetime.fromisoformat("2026-10-25T00:00:00+00:00").timestamp())

    def test_a_rule_ending_inside_the_repeated_hour(self):
        schedule = parse_schedule(["Sun 01:00-02:30 0"])
        d = decide(schedule, at(2026, 10, 25, 1, 30))
        # The first 02:30 (CEST) ends it; the second one (CET) is not in it.
        self.assertEqual(d.next_change.timestamp(), at(2026, 10, 25, 2, 30, fold=0).timestamp())
        d = decide(schedule, at(2026, 10, 25, 2, 30, fold=0))
        self.assertEqual((d.rule, d.rate), (None, None))
        # The clock going back to 02:00 brings the rule back.
        self.assertEqual(d.next_change.timestamp(), at(2026, 10, 25, 2, 0, fold=1).timestamp())


class RateTimerTests(SynchronousTestCase):
    """The timer on a Clock; the wall clock read from a variable the test moves and jumps."""

    def setUp(self):
        self.clock = Clock()
        self.wall = at(2026, 3, 27, 8, 59, 30).timestamp()  # Friday, before the office hours
        self.rates = []
        schedule = parse_schedule(EXAMPLE.splitlines(), default_rate=None)
        from gridbackupd.upload.schedule import Schedule

        self.timer = RateTimer(self.clock, Schedule(schedule.rules, 3 * MiB), self.rates.append,
                               zone=BERLIN, wallclock=lambda: self.wall)
        self.timer.start()
        self.addCleanup(self.timer.stop)

    def advance(self, seconds, step=20.0):
        """Move both clocks together, in steps."""
        while seconds > 0:
            dt = min(step, seconds)
            self.wall += dt
            self.clock.advance(dt)
            seconds -= dt

    def test_crossing_boundaries_midnight_and_the_dst_change(self):
        self.assertEqual(self.rates, [None])
        self.assertEqual(self.timer.status()["next_change"], at(2026, 3, 27, 9, 0).timestamp())
        self.advance(31)
        self.assertEqual(self.rates, [None, 0])
        self.assertEqual(self.timer.status(), {
            "rule": "Mon-Fri 09:00-10:00 0", "rate": 0, "next_change": at(2026, 3, 27, 10, 0).timestamp()})
        self.advance(3600)
        self.assertEqual(self.rates[-1], MiB)
        self.advance(8 * 3600)  # 18:00
        self.assertEqual(self.rates[-1], None)
        self.advance(4 * 3600)  # 22:00: the Friday night rule, past midnight into Saturday
        self.assertEqual(self.rates[-1], 200 * 1024)
        self.advance(4 * 3600 - 60)  # Saturday 01:59
        self.assertEqual(self.rates[-1], 200 * 1024)
        self.advance(60)
        self.assertEqual(self.rates[-1], 5000)
        self.advance(3600)
        self.assertEqual(self.rates[-1], 200 * 1024)
        # Through Sunday, whose 02:00-03:00 the DST change skips: no 5k then.
        seen = len(self.rates)
        self.advance(24 * 3600)
        self.assertEqual(self.rates[seen:], [None])
        self.assertEqual(self.timer.status()["next_change"], at(2026, 3, 30, 9, 0).timestamp())
        # Monday 09:00 CEST, an hour earlier in UTC than Friday's 09:00 CET.
        self.advance(at(2026, 3, 30, 9, 0).timestamp() - self.wall - 1)
        self.assertEqual(self.rates[-1], None)
        self.advance(2)
        self.assertEqual(self.rates[-1], 0)
        # The timer wakes at each change and at least every minute.
        self.assertLessEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), EVERY)

    def test_a_wall_clock_jump_is_followed_within_a_minute(self):
        self.advance(60)
        self.assertEqual(self.rates[-1], 0)
        self.wall = at(2026, 3, 27, 12, 0).timestamp()  # set forward three hours at once
        self.clock.advance(EVERY)
        self.assertEqual(self.rates[-1], MiB)
        self.wall = at(2026, 3, 27, 7, 0).timestamp()  # and back to before it all
        self.clock.advance(EVERY)
        self.assertEqual(self.rates[-1], None)
        # Only the reactor's clock schedules: nothing fires early while the wall stands still.
        n = len(self.rates)
        self.clock.advance(EVERY * 10)
        self.assertEqual(len(self.rates), n)


class ConfigTests(SynchronousTestCase):
    def parse(self, upload):
        base = self.mktemp()
        os.makedirs(base)
        path = os.path.join(base, "g.ini")
        with open(path, "w") as f:
            f.write("[gridbackup]\nstate_dir = /tmp/x\n[tahoe]\nnode_url = embedded\n[upload]\n" + upload)
        return parse_config(path).upload

    def test_schedule_and_allow_if(self):
        up = self.parse("schedule =" + EXAMPLE.replace("\n", "\n  ") + "\nmax_rate = 2MiB\n"
                        "allow_if = nmcli -t -f GENERAL.METERED dev show | grep -q 'no'\n")
        self.assertEqual([r.text for r in up.schedule][:2], ["Mon-Fri 09:00-10:00 0", "Mon-Fri 09:00-18:00 1MiB"])
        self.assertEqual(up.allow_if, "nmcli -t -f GENERAL.METERED dev show | grep -q 'no'")
        self.assertEqual((self.parse("").schedule, self.parse("").allow_if), ((), None))

    def test_a_bad_line_is_a_one_line_error_naming_it(self):
        e = self.assertRaises(ConfigError, self.parse,
                              "schedule =\n  Mon-Fri 09:00-18:00 1MiB\n  Sat 10:00-12:00 lots\n")
        message = str(e)
        self.assertEqual(len(message.splitlines()), 1)
        self.assertIn("[upload] schedule line 2 ('Sat 10:00-12:00 lots'): rate 'lots' is not", message)
        self.assertIn("g.ini", message)
