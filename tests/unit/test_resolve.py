"""
state.snapshots.resolve, the one answer to "which snapshot is `latest` (or
as of a time)", and the check of a snapshot spec it starts with.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.errors import Invalid, NotFound
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots
from gridbackupd.state.snapshots import check_spec, parse_time, resolve


class SpecTests(SynchronousTestCase):
    def test_snapshot_specs(self):
        self.assertEqual(check_spec("latest"), "latest")
        self.assertEqual(check_spec({"as_of": "2026-01-01T00:00:00Z"}), {"as_of": "2026-01-01T00:00:00Z"})
        for bad in ("", 3, None, [], {"as_of": "yesterday"}, {"as_of": 5}, {"as_of": "2026-01-01", "x": 1},
                    {"when": "2026-01-01"}):
            e = self.assertRaises(Invalid, check_spec, bad)
            self.assertEqual(e.code, "bad_request")

    def test_parse_time(self):
        self.assertEqual(parse_time("1970-01-01T00:01:00Z"), 60.0)
        self.assertEqual(parse_time("1970-01-01T01:01:00+01:00"), 60.0)
        self.assertEqual(parse_time("1970-01-01T00:01:00"), 60.0)  # no zone: UTC


class ResolveTests(SynchronousTestCase):
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.conn = dbmod.open_database(os.path.join(base, "state.sqlite"))
        self.addCleanup(self.conn.close)

    def add(self, snapshot_id, host, started, complete=True):
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO snapshots (id, state, kind, host, requested, started, complete) "
                "VALUES (?, ?, 'full', ?, ?, ?, ?)",
                (snapshot_id, "complete" if complete else "uploading", host, started, started, int(complete)))

    def test_nothing_yet(self):
        for spec in ("latest", {"as_of": "2026-01-01T00:00:00Z"}):
            e = self.assertRaises(NotFound, resolve, self.conn, spec, "a")
            self.assertEqual(e.code, "unknown_snapshot")
        # An id is the caller's to look up.
        self.assertEqual(resolve(self.conn, "s-nope", "a"), "s-nope")

    def test_this_host_first(self):
        """Two hosts share the backup set: `latest` is this host's newest complete snapshot."""
        self.add("s1", "a", parse_time("2026-01-01T00:00:00Z"))
        self.add("s2", "b", parse_time("2026-02-01T00:00:00Z"))
        self.add("s3", "a", parse_time("2026-03-01T00:00:00Z"), complete=False)
        self.add("s4", "b", parse_time("2026-04-01T00:00:00Z"))
        self.assertEqual(resolve(self.conn, "latest", "a"), "s1")
        self.assertEqual(resolve(self.conn, "latest", "b"), "s4")
        # Another host's only when this one has none (a new machine).
        self.assertEqual(resolve(self.conn, "latest", "new"), "s4")
        self.assertEqual(resolve(self.conn, {"as_of": "2026-03-15T00:00:00Z"}, "a"), "s1")
        self.assertEqual(resolve(self.conn, {"as_of": "2026-03-15T00:00:00Z"}, "new"), "s2")
        self.assertEqual(resolve(self.conn, {"as_of": "2026-02-01T00:00:00Z"}, "b"), "s2")
        self.assertRaises(NotFound, resolve, self.conn, {"as_of": "2025-12-31T00:00:00Z"}, "a")
        self.assertEqual(resolve(self.conn, "s3", "a"), "s3")
        self.assertRaises(Invalid, resolve, self.conn, "", "a")

    def test_last_complete_is_any_hosts(self):
        """GET /v1/status shows the newest complete snapshot of the whole set, as before."""
        self.add("s1", "a", 1.0)
        self.add("s2", "b", 2.0)
        self.assertEqual(snapshots.last_complete(self.conn)[0], "s2")
