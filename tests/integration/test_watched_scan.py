"""
Watched scans: requests that name the directories a watcher saw change,
how they join a waiting scan, and the kind of scan each snapshot records.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format import chain
from gridbackupd.scan import walker
from gridbackupd.scan.jobs import BackupJobs
from gridbackupd.state.snapshots import log_resolver
from gridbackupd.statedir import StateDir
from gridbackupd.testing.inline import InlinePool, ThreadlessReactor
from gridbackupd.waiters import Waiters
from tests.integration.test_backup import OLD, Fixture, full_scan, write


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


def entries_of(f, snapshot_id):
    return list(chain.snapshot_entries(snapshot_id, log_resolver(f.conn)))


class WatchedScanTests(SynchronousTestCase):
    """Watched scans through BackupJobs: what they visit and that their snapshot is a full walk's."""

    def setUp(self):
        self.f = Fixture(self)
        for d in range(5):
            for n in range(4):
                write(os.path.join(self.f.tree, f"d{d}", f"s{n}", "f.txt"), b"%d" % n * 200)
        self.first = self.f.backup()

    def watched(self, *dirs):
        snapshot_id = self.f.jobs.request(changed=frozenset(os.fsencode(os.path.join(self.f.tree, d))
                                                            for d in dirs))
        self.f.assertState(snapshot_id)
        return snapshot_id

    def test_one_changed_file_visits_its_directory_only(self):
        write(os.path.join(self.f.tree, "d3", "s1", "f.txt"), b"changed" * 100, mtime=OLD + 10**9)
        second = self.watched("d3/s1")
        last = self.f.jobs.status()["last_scan"]
        self.assertEqual(last["scan"], "watched")
        # the root, d3, d3/s1 and f.txt; 46 entries in all
        self.assertEqual((last["visited"], last["entries"]), (4, 46))
        self.assertEqual(self.f.row(second)[:2], ("incremental", self.first))
        self.assertEqual(entries_of(self.f, second), full_scan(self, [self.f.tree]))
        changed = [e for e in entries_of(self.f, second) if e.path.endswith(b"d3/s1/f.txt")]
        self.assertEqual(changed[0].size, 700)

    def test_a_missed_directory_is_not_seen(self):
        # What the property test relies on: the dirty set is what is listed.
        write(os.path.join(self.f.tree, "d1", "new.txt"), b"new" * 100)
        second = self.watched("d3")
        self.assertNotIn(os.fsencode(os.path.join(self.f.tree, "d1", "new.txt")),
                         [e.path for e in entries_of(self.f, second)])

    def test_paths_the_parent_could_not_read_are_listed_again(self):
        locked = os.fsencode(os.path.join(self.f.tree, "d2", "s0"))

        def deny(path):
            if path == locked:
                raise PermissionError(13, "Permission denied")

        self.patch(walker, "before_opening_dir", deny)
        second = self.f.backup()
        self.assertNotIn(locked + b"/f.txt", [e.path for e in entries_of(self.f, second)])
        self.patch(walker, "before_opening_dir", None)
        third = self.watched()
        self.assertEqual(self.f.jobs.status()["last_scan"]["scan"], "watched")
        self.assertEqual(entries_of(self.f, third), full_scan(self, [self.f.tree]))

    def test_a_new_process_walks_everything(self):
        jobs = BackupJobs(ThreadlessReactor(), self.f.conn, StateDir(self.f.state), InlinePool(),
                          self.f.config.backup, self.f.config.hostname, lambda _: None, Waiters())
        second = jobs.request(changed=frozenset([os.fsencode(self.f.tree)]))
        self.f.assertState(second)
        self.assertEqual((jobs.status()["last_scan"]["scan"], jobs.status()["last_scan"]["visited"]),
                         ("full", 46))
