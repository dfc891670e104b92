"""
The watcher's decisions on the reactor's clock: when a change is scanned
(settle, settle_max), what the scan is told is dirty, the full scans (at the
start, after an overflow, every full_scan_interval), what it does where it
cannot watch, and when everything is protected as of now.  The backend is a
stand-in driven by the test; tests/unit/test_inotify.py and
tests/integration/test_watching.py use the real one.
"""

import os

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.config import BackupConfig
from gridbackupd.watch import inotify
from gridbackupd.watch.tree import eventless, mounts
from gridbackupd.watch.watcher import Watcher, accepts_changed


class FakeBackend:
    name = "fake"

    def __init__(self, limit=None):
        self.watched = []
        self.removed = []
        self.limit = limit
        self.closed = False

    def add(self, path):
        if self.limit is not None and len(self.watched) >= self.limit:
            raise OSError(28, "No space left on device")
        self.watched.append(path)

    def remove_tree(self, path):
        self.removed.append(path)

    def count(self):
        return len(self.watched)

    def close(self):
        self.closed = True


class FakeJobs:
    """BackupJobs' request and wait: requests are recorded, their ends fired by the test."""

    def __init__(self):
        self.requests = []  # (id, tags, changed)
        self.waiting = {}

    def request(self, tags=(), changed=None):
        snapshot_id = f"s{len(self.requests)}"
        self.requests.append((snapshot_id, tags, changed))
        return snapshot_id

    def wait(self, snapshot_id):
        return self.waiting.setdefault(snapshot_id, Deferred())

    def finish(self, snapshot_id, state="complete"):
        self.wait(snapshot_id).callback(state)


class OldJobs(FakeJobs):
    """BackupJobs before the scan of dirty directories: no ``changed``."""

    def request(self, tags=()):
        return FakeJobs.request(self, tags)


class WatcherTests(SynchronousTestCase):
    def setUp(self):
        self.base = os.fsencode(os.path.abspath(self.mktemp()))
        self.tree = self.base + b"/data"
        for d in (b"a", b"a/b", b"c", b"skip.tmp", b"state"):
            os.makedirs(self.tree + b"/" + d)
        self.clock = Clock()
        self.jobs = FakeJobs()

    def watcher(self, jobs=None, backend=None, mount_list=(), no_backend=False, **options):
        settings = dict(paths=(os.fsdecode(self.tree),), exclude=("*.tmp",), settle=10.0,
                        settle_max=60.0, full_scan_interval=86400.0, scan_interval=3600.0)
        settings.update(options)
        backup = BackupConfig(**settings)
        self.backend = backend if backend is not None else FakeBackend()

        def factory(reactor, on_event, on_overflow):
            self.on_event, self.on_overflow = on_event, on_overflow
            return None if no_backend else self.backend

        w = Watcher(self.clock, jobs or self.jobs, backup, os.fsdecode(self.tree + b"/state"),
                    lambda f, *args: maybeDeferred(f, *args), factory, read_mounts=lambda: list(mount_list))
        w.startService()
        self.addCleanup(lambda: w.running and w.stopService())
        return w

    def started(self, **options):
        """A watcher set up, its first full scan complete."""
        w = self.watcher(**options)
        self.assertEqual(w.state, "watching")
        first = self.jobs.requests[-1]
        self.jobs.finish(first[0])
        self.assertTrue(w.healthy())
        return w

    def test_first_scan_is_full_and_follows_the_setup(self):
        w = self.watcher()
        self.assertEqual(w.state, "watching")
        self.assertEqual(sorted(self.backend.watched), sorted([self.tree, self.tree + b"/a", self.tree + b"/a/b",
                                                             self.tree + b"/c"]))
        self.assertEqual(self.jobs.requests, [("s0", ("scheduled",), None)])
        self.assertFalse(w.healthy(), "nothing is protected before the first full scan completes")
        self.assertEqual(w.status()["directories"], 4)
        self.jobs.finish("s0")
        self.assertTrue(w.healthy())

    def test_a_change_is_scanned_settle_after_the_last_event(self):
        w = self.started()
        self.on_event(self.tree + b"/a", b"f", inotify.IN_CLOSE_WRITE)
        self.assertFalse(w.healthy())
        self.clock.advance(9)
        self.on_event(self.tree + b"/c", b"g", inotify.IN_CREATE)
        self.clock.advance(9.9)
        self.assertEqual(len(self.jobs.requests), 1)
        self.clock.advance(0.2)
        self.assertEqual(self.jobs.requests[1],
                         ("s1", ("watched",), frozenset({self.tree + b"/a", self.tree + b"/c"})))
        self.assertFalse(w.healthy(), "dirty until its snapshot is complete")
        self.assertEqual(w.status()["scans_pending"], 1)
        self.jobs.finish("s1")
        self.assertTrue(w.healthy())

    def test_settle_max_bounds_a_steady_stream(self):
        self.started()
        for _ in range(70):
            self.on_event(self.tree + b"/a", b"f", inotify.IN_MODIFY)
            self.clock.advance(1)
        # Requested at 60 s after the first event, and once again 10 s after the last.
        self.assertEqual([r[1] for r in self.jobs.requests], [("scheduled",), ("watched",)])
        self.clock.advance(10)
        self.assertEqual(len(self.jobs.requests), 3)

    def test_an_event_during_a_scan_is_for_the_next_scan(self):
        w = self.started()
        self.on_event(self.tree + b"/a", b"f", inotify.IN_MODIFY)
        self.clock.advance(10)
        self.on_event(self.tree + b"/a", b"f", inotify.IN_MODIFY)  # s1 is scanning
        self.jobs.finish("s1")
        self.assertFalse(w.healthy())
        self.clock.advance(10)
        self.assertEqual(self.jobs.requests[2][2], frozenset({self.tree + b"/a"}))
        self.jobs.finish("s2")
        self.assertTrue(w.healthy())

    def test_a_failed_scan_leaves_its_directories_dirty(self):
        w = self.started()
        self.on_event(self.tree + b"/c", b"f", inotify.IN_MODIFY)
        self.clock.advance(10)
        self.jobs.finish("s1", "failed")
        self.assertFalse(w.healthy())
        self.assertEqual(w.dirty, {self.tree + b"/c"})
        self.clock.advance(10)
        self.assertEqual(self.jobs.requests[2][2], frozenset({self.tree + b"/c"}))

    def test_excluded_paths_and_the_state_dir_start_no_scan(self):
        w = self.started()
        self.on_event(self.tree, b"x.tmp", inotify.IN_CLOSE_WRITE)
        self.on_event(self.tree, b"state", inotify.IN_ATTRIB | inotify.IN_ISDIR)
        self.clock.advance(100)
        self.assertEqual(len(self.jobs.requests), 1)
        self.assertTrue(w.healthy())
        self.assertNotIn(self.tree + b"/state", self.backend.watched)
        self.assertNotIn(self.tree + b"/skip.tmp", self.backend.watched)

    def test_a_new_directory_is_watched_and_dirty_with_its_contents(self):
        self.started()
        os.makedirs(self.tree + b"/n/m")
        self.on_event(self.tree, b"n", inotify.IN_CREATE | inotify.IN_ISDIR)
        self.assertIn(self.tree + b"/n/m", self.backend.watched)
        self.clock.advance(10)
        self.assertEqual(self.jobs.requests[1][2], frozenset({self.tree, self.tree + b"/n", self.tree + b"/n/m"}))

    def test_a_directory_moved_away_loses_its_watches(self):
        self.started()
        self.on_event(self.tree, b"a", inotify.IN_MOVED_FROM | inotify.IN_ISDIR)
        self.assertEqual(self.backend.removed, [self.tree + b"/a"])

    def test_a_root_gone_falls_back_to_scan_interval(self):
        w = self.started()
        self.on_event(self.tree, b"", inotify.IN_DELETE_SELF)
        self.assertEqual(w.state, "degraded")
        self.assertIn("moved or deleted", w.reason)
        self.assertEqual(self.backend.removed, [self.tree])
        self.assertEqual(self.jobs.requests[-1][2], None)
        self.jobs.finish(self.jobs.requests[-1][0])
        self.assertFalse(w.healthy())
        before = len(self.jobs.requests)
        self.clock.advance(3600)
        self.assertGreater(len(self.jobs.requests), before)

    def test_overflow_degrades_scans_everything_then_watches_again(self):
        w = self.started()
        self.on_event(self.tree + b"/a", b"f", inotify.IN_MODIFY)
        self.on_overflow()
        self.assertEqual(w.state, "degraded")
        self.assertIn("overflow", w.reason)
        self.assertEqual(self.jobs.requests[-1][2], None)
        self.assertFalse(w.healthy())
        self.jobs.finish(self.jobs.requests[-1][0])
        self.assertEqual(w.state, "watching")
        self.assertIsNone(w.reason)
        self.assertTrue(w.healthy())

    def test_a_full_scan_every_full_scan_interval(self):
        self.started(full_scan_interval=3600.0)
        self.clock.advance(3600)
        self.assertEqual(self.jobs.requests[-1], ("s1", ("scheduled",), None))
        self.clock.advance(3600)
        self.assertEqual(len(self.jobs.requests), 3)

    def test_without_changed_the_request_is_a_plain_one(self):
        jobs = self.jobs = OldJobs()
        self.assertFalse(accepts_changed(jobs.request))
        self.assertTrue(accepts_changed(FakeJobs().request))
        self.started(jobs=jobs)
        self.on_event(self.tree + b"/a", b"f", inotify.IN_MODIFY)
        self.clock.advance(10)
        self.assertEqual(jobs.requests[1], ("s1", ("watched",), None))

    def test_the_watch_limit_falls_back_to_scan_interval(self):
        w = self.watcher(backend=FakeBackend(limit=2))
        self.assertEqual(w.state, "degraded")
        self.assertIn("max_user_watches", w.reason)
        self.assertEqual(len(self.jobs.requests), 1)
        self.jobs.finish("s0")
        self.assertFalse(w.healthy())
        self.clock.advance(3600)
        self.assertEqual(self.jobs.requests[-1][2], None)
        self.assertEqual(len(self.jobs.requests), 2)

    def test_a_file_system_without_events_falls_back(self):
        mount_list = [(b"/", "ext4"), (self.tree + b"/c", "nfs4")]
        w = self.watcher(mount_list=mount_list)
        self.assertEqual(w.state, "degraded")
        self.assertIn("nfs4", w.reason)
        self.jobs.finish("s0")
        self.assertFalse(w.healthy())

    def test_no_backend_is_off_with_the_schedule(self):
        w = self.watcher(no_backend=True)
        self.assertEqual(w.state, "off")
        self.assertEqual(self.jobs.requests[-1][2], None)
        before = len(self.jobs.requests)
        self.clock.advance(3600)
        self.assertEqual(len(self.jobs.requests), before + 1)

    def test_stop_cancels_the_timers_and_closes_the_backend(self):
        w = self.started()
        self.on_event(self.tree + b"/a", b"f", inotify.IN_MODIFY)
        w.stopService()
        self.assertTrue(self.backend.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class MountTests(SynchronousTestCase):
    SAMPLE = (b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
              b"40 22 0:50 / /srv/nfs\\040share rw - nfs4 host:/x rw\n"
              b"41 22 0:51 / /home/u/remote rw - fuse.sshfs u@h: rw\n")

    def test_mountinfo_is_read_with_its_escapes(self):
        self.assertEqual(mounts(self.SAMPLE), [(b"/", "ext4"), (b"/srv/nfs share", "nfs4"),
                                               (b"/home/u/remote", "fuse.sshfs")])

    def test_eventless_file_systems_holding_or_under_a_root(self):
        found = mounts(self.SAMPLE)
        self.assertEqual(eventless([b"/srv/nfs share/x"], found), [(b"/srv/nfs share", "nfs4")])
        self.assertEqual(eventless([b"/home"], found), [(b"/home/u/remote", "fuse.sshfs")])
        self.assertEqual(eventless([b"/home"], found, one_file_system=True), [])
        self.assertEqual(eventless([b"/etc"], found), [])
