"""Retention policies: which snapshots ``[retention]`` keeps, and why (issue 7)."""

import os
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import attr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.maintenance.retention import (
    Decision,
    RetentionPolicy,
    SnapshotInfo,
    apply_policy,
)

UTC = timezone.utc
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def at(*fields, tz=UTC):
    """POSIX seconds of a wall-clock time in ``tz``."""
    return datetime(*fields, tzinfo=tz).timestamp()


def snap(id, *fields, host="h", tz=UTC):
    return SnapshotInfo(id=id, host=host, time=at(*fields, tz=tz))


def hourly_two_days():
    """48 snapshots, one at the top of each hour of 2026-11-24 and 2026-11-25 UTC."""
    start = at(2026, 11, 24)
    return [SnapshotInfo(id="s%02d" % i, host="h", time=start + 3600 * i) for i in range(48)]


class PolicyTests(SynchronousTestCase):
    def test_defaults_and_describe(self):
        self.assertTrue(RetentionPolicy().empty)
        self.assertFalse(RetentionPolicy(keep_yearly=1).empty)
        self.assertEqual(
            RetentionPolicy(keep_last=2, keep_weekly=4).describe(),
            {"keep_last": 2, "keep_hourly": 0, "keep_daily": 0,
             "keep_weekly": 4, "keep_monthly": 0, "keep_yearly": 0},
        )

    def test_negative_refused_naming_the_field(self):
        for field in ("keep_last", "keep_hourly", "keep_daily",
                      "keep_weekly", "keep_monthly", "keep_yearly"):
            with self.assertRaises(ValueError) as caught:
                RetentionPolicy(**{field: -1})
            self.assertIn(field, str(caught.exception))

    def test_non_integer_refused(self):
        for bad in ("3", 2.5, True, None):
            with self.assertRaises(TypeError) as caught:
                RetentionPolicy(keep_daily=bad)
            self.assertIn("keep_daily", str(caught.exception))

    def test_snapshot_time_must_be_finite(self):
        for bad in (float("nan"), float("inf")):
            with self.assertRaises(ValueError):
                SnapshotInfo(id="x", host="h", time=bad)

    def test_repeated_ids_refused(self):
        snaps = [snap("x", 2026, 1, 1), snap("x", 2026, 1, 2, host="other")]
        with self.assertRaises(ValueError) as caught:
            apply_policy(snaps, RetentionPolicy(keep_last=5), UTC)
        self.assertIn("'x'", str(caught.exception))


class ExampleTests(SynchronousTestCase):
    def test_nothing_to_decide(self):
        self.assertEqual(apply_policy([], RetentionPolicy(keep_last=1), UTC), Decision({}, ()))

    def test_keep_daily_keeps_the_last_of_each_day(self):
        d = apply_policy(hourly_two_days(), RetentionPolicy(keep_daily=2), UTC)
        self.assertEqual(d.keep, {
            "s47": ("newest", "daily 2026-11-25"),
            "s23": ("daily 2026-11-24",),
        })
        self.assertEqual(d.forget, tuple("s%02d" % i for i in range(46, -1, -1) if i != 23))

    def test_keep_last_and_daily_overlap(self):
        d = apply_policy(hourly_two_days(), RetentionPolicy(keep_last=3, keep_daily=2), UTC)
        self.assertEqual(d.keep, {
            "s47": ("newest", "last", "daily 2026-11-25"),
            "s46": ("last",),
            "s45": ("last",),
            "s23": ("daily 2026-11-24",),
        })
        self.assertEqual(list(d.keep), ["s47", "s46", "s45", "s23"])  # newest first
        self.assertEqual(len(d.forget), 44)

    def test_hourly(self):
        snaps = hourly_two_days() + [snap("late", 2026, 11, 25, 23, 30)]
        d = apply_policy(snaps, RetentionPolicy(keep_hourly=3), UTC)
        self.assertEqual(d.keep, {
            "late": ("newest", "hourly 2026-11-25 23h"),
            "s46": ("hourly 2026-11-25 22h",),
            "s45": ("hourly 2026-11-25 21h",),
        })
        self.assertIn("s47", d.forget)  # same hour as "late", older

    def test_fewer_periods_than_asked(self):
        d = apply_policy(hourly_two_days(), RetentionPolicy(keep_daily=10, keep_yearly=3), UTC)
        self.assertEqual(d.keep, {
            "s47": ("newest", "daily 2026-11-25", "yearly 2026"),
            "s23": ("daily 2026-11-24",),
        })

    def test_iso_weeks_months_and_years(self):
        # 2025-12-29 is a Monday: ISO week 2026-W01, but still the year 2025.
        snaps = [
            snap("dec20", 2025, 12, 20, 12),
            snap("dec29", 2025, 12, 29, 12),
            snap("dec31", 2025, 12, 31, 12),
            snap("jan02", 2026, 1, 2, 12),
            snap("nov25", 2026, 11, 25, 12),
        ]
        policy = RetentionPolicy(keep_weekly=2, keep_monthly=3, keep_yearly=2)
        d = apply_policy(snaps, policy, UTC)
        self.assertEqual(d.keep, {
            "nov25": ("newest", "weekly 2026-W48", "monthly 2026-11", "yearly 2026"),
            "jan02": ("weekly 2026-W01", "monthly 2026-01"),
            "dec31": ("monthly 2025-12", "yearly 2025"),
        })
        self.assertEqual(d.forget, ("dec29", "dec20"))

    def test_iso_week_53(self):
        d = apply_policy([snap("x", 2027, 1, 1, 12)], RetentionPolicy(keep_weekly=1), UTC)
        self.assertEqual(d.keep, {"x": ("newest", "weekly 2026-W53")})

    def test_hosts_are_independent(self):
        # Every snapshot of "b" is newer than every one of "a".
        snaps = [snap("a1", 2026, 11, 1), snap("a2", 2026, 11, 2),
                 snap("b1", 2026, 11, 20, host="b"), snap("b2", 2026, 11, 21, host="b"),
                 snap("b3", 2026, 11, 22, host="b")]
        d = apply_policy(snaps, RetentionPolicy(keep_last=2), UTC)
        self.assertEqual(d.keep, {
            "b3": ("newest", "last"), "b2": ("last",),
            "a2": ("newest", "last"), "a1": ("last",),
        })
        self.assertEqual(d.forget, ("b1",))

    def test_empty_policy_keeps_everything(self):
        snaps = hourly_two_days() + [snap("other", 2020, 1, 1, host="o")]
        d = apply_policy(snaps, RetentionPolicy(), UTC)
        self.assertEqual(d.forget, ())
        self.assertEqual(set(d.keep), {s.id for s in snaps})
        self.assertEqual(d.keep["s47"], ("newest", "no policy"))
        self.assertEqual(d.keep["other"], ("newest", "no policy"))
        self.assertEqual(d.keep["s00"], ("no policy",))

    def test_newest_is_kept_whatever_the_policy(self):
        # keep_yearly=1 alone would keep it anyway; keep_last=0 plus a rule
        # that picks older snapshots cannot forget the newest.
        snaps = [snap("old", 2026, 1, 1), snap("new", 2026, 1, 1, 0, 0, 1)]
        d = apply_policy(snaps, RetentionPolicy(keep_daily=1), UTC)
        self.assertEqual(d.keep["new"], ("newest", "daily 2026-01-01"))
        self.assertEqual(d.forget, ("old",))

    def test_ties_go_to_the_larger_id(self):
        t = at(2026, 11, 25, 12)
        snaps = [SnapshotInfo("a", "h", t), SnapshotInfo("c", "h", t), SnapshotInfo("b", "h", t)]
        for order in (snaps, snaps[::-1]):
            d = apply_policy(order, RetentionPolicy(keep_last=2), UTC)
            self.assertEqual(d, Decision({"c": ("newest", "last"), "b": ("last",)}, ("a",)))

    def test_fixed_offset_moves_a_snapshot_across_midnight(self):
        snaps = [
            snap("C", 2026, 11, 24, 12),
            snap("A", 2026, 11, 25, 21),
            snap("B", 2026, 11, 25, 23, 30),  # 2026-11-26 00:30 at +01:00
        ]
        policy = RetentionPolicy(keep_daily=2)
        in_utc = apply_policy(snaps, policy, UTC)
        self.assertEqual(in_utc.keep, {"B": ("newest", "daily 2026-11-25"),
                                       "C": ("daily 2026-11-24",)})
        self.assertEqual(in_utc.forget, ("A",))
        plus_one = apply_policy(snaps, policy, timezone(timedelta(hours=1)))
        self.assertEqual(plus_one.keep, {"B": ("newest", "daily 2026-11-26"),
                                         "A": ("daily 2026-11-25",)})
        self.assertEqual(plus_one.forget, ("C",))

    def test_half_hour_offset_splits_an_hour(self):
        snaps = [snap("x", 2026, 11, 25, 13, 10), snap("y", 2026, 11, 25, 13, 40)]
        policy = RetentionPolicy(keep_hourly=5)
        self.assertEqual(apply_policy(snaps, policy, UTC).forget, ("x",))
        india = apply_policy(snaps, policy, timezone(timedelta(hours=5, minutes=30)))
        self.assertEqual(india.keep, {"y": ("newest", "hourly 2026-11-25 19h"),
                                      "x": ("hourly 2026-11-25 18h",)})

    def test_no_tz_means_the_local_zone(self):
        old = os.environ.get("TZ")

        def restore():
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)
        os.environ["TZ"] = "XYZ-3"  # POSIX: three hours east of UTC, no DST
        time.tzset()
        snaps = [snap("a", 2026, 11, 25, 20), snap("b", 2026, 11, 25, 22)]  # b is 01:00 on the 26th
        d = apply_policy(snaps, RetentionPolicy(keep_daily=2))
        self.assertEqual(d.keep, {"b": ("newest", "daily 2026-11-26"),
                                  "a": ("daily 2026-11-25",)})


# Properties.

HOSTS = ("alpha", "beta", "gamma")
SPANS = (10, 6 * 3600, 10 * 86400, 120 * 86400, 4 * 366 * 86400)


@st.composite
def snapshot_lists(draw, max_size=30):
    """Snapshots with unique ids, packed densely enough that buckets and times collide."""
    span = draw(st.sampled_from(SPANS))
    base = draw(st.integers(0, 2_000_000_000))
    ids = draw(st.lists(st.text("0123456789abcdef", min_size=1, max_size=4),
                        unique=True, max_size=max_size))
    return [
        SnapshotInfo(
            id=i,
            host=draw(st.sampled_from(HOSTS)),
            time=base + draw(st.integers(0, span)) + draw(st.sampled_from((0, 0.25))),
        )
        for i in ids
    ]


policies = st.builds(RetentionPolicy, **{
    f: st.integers(0, 5) for f in ("keep_last", "keep_hourly", "keep_daily",
                                   "keep_weekly", "keep_monthly", "keep_yearly")
})
zones = st.integers(-24 * 60 + 1, 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


def rank(s):
    return (s.time, s.id)


def per_host(snaps):
    groups = defaultdict(list)
    for s in snaps:
        groups[s.host].append(s)
    return {h: sorted(g, key=rank, reverse=True) for h, g in groups.items()}


def labels(when):
    """Bucket labels, spelled out independently of the module's formats."""
    year, week, _ = when.isocalendar()
    return {
        "hourly": f"{when.year:04d}-{when.month:02d}-{when.day:02d} {when.hour:02d}h",
        "daily": f"{when.year:04d}-{when.month:02d}-{when.day:02d}",
        "weekly": f"{year:04d}-W{week:02d}",
        "monthly": f"{when.year:04d}-{when.month:02d}",
        "yearly": f"{when.year:04d}",
    }


def oracle(snaps, policy, tz):
    """
    Reasons by id, worked out another way: group each host's snapshots by
    bucket, take each bucket's newest, keep the buckets whose newest are
    the most recent.
    """
    reasons = {s.id: set() for s in snaps}
    for group in per_host(snaps).values():
        reasons[group[0].id].add("newest")
        if policy.empty:
            for s in group:
                reasons[s.id].add("no policy")
            continue
        for s in group[: policy.keep_last]:
            reasons[s.id].add("last")
        for name in ("hourly", "daily", "weekly", "monthly", "yearly"):
            best = {}
            for s in group:
                label = labels(datetime.fromtimestamp(s.time, tz))[name]
                if label not in best or rank(s) > rank(best[label]):
                    best[label] = s
            chosen = sorted(best.items(), key=lambda kv: rank(kv[1]), reverse=True)
            for label, s in chosen[: getattr(policy, "keep_" + name)]:
                reasons[s.id].add(f"{name} {label}")
    return {i: r for i, r in reasons.items() if r}


class PropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_keep_and_forget_partition_the_ids(self, snaps, policy, tz):
        d = apply_policy(snaps, policy, tz)
        self.assertEqual(set(d.keep) | set(d.forget), {s.id for s in snaps})
        self.assertEqual(set(d.keep) & set(d.forget), set())
        self.assertEqual(len(d.keep) + len(d.forget), len(snaps))
        self.assertTrue(all(d.keep.values()))

    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_newest_first(self, snaps, policy, tz):
        d = apply_policy(snaps, policy, tz)
        by_id = {s.id: s for s in snaps}
        for ids in (list(d.keep), list(d.forget)):
            ranks = [rank(by_id[i]) for i in ids]
            self.assertEqual(ranks, sorted(ranks, reverse=True))

    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_newest_of_each_host_kept(self, snaps, policy, tz):
        d = apply_policy(snaps, policy, tz)
        for group in per_host(snaps).values():
            self.assertIn("newest", d.keep[group[0].id])
            for s in group[1:]:
                self.assertNotIn("newest", d.keep.get(s.id, ()))

    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_keep_last_keeps_the_newest_n(self, snaps, policy, tz):
        d = apply_policy(snaps, policy, tz)
        for group in per_host(snaps).values():
            for s in group[: policy.keep_last]:
                self.assertIn(s.id, d.keep)
            if not policy.empty:
                lasts = [s.id for s in group if "last" in d.keep.get(s.id, ())]
                self.assertEqual(lasts, [s.id for s in group[: policy.keep_last]])

    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_kept_per_host_is_bounded(self, snaps, policy, tz):
        d = apply_policy(snaps, policy, tz)
        bound = 1 + sum(attr.astuple(policy))
        for group in per_host(snaps).values():
            kept = [s for s in group if s.id in d.keep]
            if policy.empty:
                self.assertEqual(kept, group)
            else:
                self.assertLessEqual(len(kept), bound)

    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_idempotent(self, snaps, policy, tz):
        first = apply_policy(snaps, policy, tz)
        kept = [s for s in snaps if s.id in first.keep]
        self.assertEqual(apply_policy(kept, policy, tz), Decision(first.keep, ()))

    @PROPERTY
    @given(snapshot_lists(), policies, zones, st.randoms(use_true_random=False))
    def test_input_order_does_not_matter(self, snaps, policy, tz, rnd):
        shuffled = list(snaps)
        rnd.shuffle(shuffled)
        self.assertEqual(apply_policy(shuffled, policy, tz), apply_policy(snaps, policy, tz))

    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_each_host_alone_decides_the_same(self, snaps, policy, tz):
        d = apply_policy(snaps, policy, tz)
        for group in per_host(snaps).values():
            alone = apply_policy(group, policy, tz)
            ids = {s.id for s in group}
            self.assertEqual(alone.keep, {i: r for i, r in d.keep.items() if i in ids})
            self.assertEqual(alone.forget, tuple(i for i in d.forget if i in ids))

    @PROPERTY
    @given(snapshot_lists(), policies, zones)
    def test_agrees_with_bucket_grouping(self, snaps, policy, tz):
        d = apply_policy(snaps, policy, tz)
        self.assertEqual({i: set(r) for i, r in d.keep.items()}, oracle(snaps, policy, tz))
        order = ["newest", "no policy", "last", "hourly", "daily", "weekly", "monthly", "yearly"]
        for reasons in d.keep.values():
            kinds = [next(k for k in order if r == k or r.startswith(k + " ")) for r in reasons]
            self.assertEqual(kinds, sorted(kinds, key=order.index))
            self.assertEqual(len(set(kinds)), len(kinds))

    @PROPERTY
    @given(snapshot_lists(), zones)
    def test_a_bigger_policy_keeps_no_less(self, snaps, tz):
        small = RetentionPolicy(keep_last=1, keep_daily=2, keep_monthly=1)
        big = attr.evolve(small, keep_daily=4, keep_weekly=2)
        self.assertLessEqual(set(apply_policy(snaps, small, tz).keep),
                             set(apply_policy(snaps, big, tz).keep))
