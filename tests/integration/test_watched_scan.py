"""
Watched scans: requests that name the directories a watcher saw change,
how they join a waiting scan, and the kind of scan each snapshot records.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.test_backup import Fixture, write


class RequestTests(SynchronousTestCase):
    def setUp(self):
        self.f = Fixture(self)
        write(os.path.join(self.f.tree, "a", "x.txt"), b"x" * 100)

    def scan_of(self, snapshot_id):
        return self.f.conn.execute("SELECT scan FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()[0]

    def held(self):
        """Requests made while the scan lock is held stay queued until ``release``."""
        lock = self.f.jobs.scan_lock
        lock.acquire()
        return lock.release

    def test_first_scan_without_a_parent_is_full(self):
        first = self.f.jobs.request(changed=frozenset([os.fsencode(self.f.tree)]))
        self.f.assertState(first)
        self.assertEqual(self.scan_of(first), "full")

    def test_watched_after_a_parent(self):
        self.f.backup()
        second = self.f.jobs.request(changed=frozenset([os.fsencode(self.f.tree)]))
        self.f.assertState(second)
        self.assertEqual(self.scan_of(second), "watched")
        third = self.f.backup()
        self.assertEqual(self.scan_of(third), "full")

    def test_joining_requests_merge_their_directories(self):
        self.f.backup()
        release = self.held()
        a, b = (os.fsencode(os.path.join(self.f.tree, n)) for n in ("a", "b"))
        first = self.f.jobs.request(changed=frozenset([a]))
        self.assertEqual(self.f.jobs.request(changed=frozenset([b])), first)
        self.assertEqual(self.f.jobs._changed[first], frozenset([a, b]))
        self.assertEqual(self.scan_of(first), "watched")
        release()
        self.f.assertState(first)
        self.assertEqual(self.scan_of(first), "watched")
        self.assertEqual(self.f.jobs._changed, {})

    def test_a_full_request_wins(self):
        self.f.backup()
        release = self.held()
        first = self.f.jobs.request(changed=frozenset([os.fsencode(self.f.tree)]))
        self.assertEqual(self.f.jobs.request(), first)
        self.assertEqual(self.scan_of(first), "full")
        # and a watched request after it does not make it watched again
        self.assertEqual(self.f.jobs.request(changed=frozenset([b"/x"])), first)
        release()
        self.f.assertState(first)
        self.assertEqual(self.scan_of(first), "full")

    def test_a_queued_watched_scan_after_a_restart_is_full(self):
        self.f.backup()
        release = self.held()
        first = self.f.jobs.request(changed=frozenset([os.fsencode(self.f.tree)]))
        self.f.jobs._changed.clear()  # what a new process knows of it
        release()
        self.f.assertState(first)
        self.assertEqual(self.scan_of(first), "full")
