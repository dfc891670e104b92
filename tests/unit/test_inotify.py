"""
The Linux backend on a real directory, read by the real reactor: events
reach the reactor thread with their directory, a deleted directory's watch
is forgotten, and a queue overflow is reported (twisted.internet.inotify
drops it, which is why the backend is our own).
"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from gridbackupd.watch import inotify


class InotifyTests(TestCase):
    timeout = 60

    def setUp(self):
        if not sys.platform.startswith("linux") or inotify.supported() is not None:
            raise SkipTest("inotify is Linux's")
        self.dir = os.fsencode(os.path.abspath(self.mktemp()))
        os.makedirs(self.dir + b"/sub")
        self.events = []
        self.overflows = 0
        self.waiting = None
        self.backend = inotify.InotifyBackend(reactor, self._event, self._overflow)
        self.addCleanup(self.backend.close)

    def _event(self, directory, name, mask):
        self.events.append((directory, name, mask))
        self._wake()

    def _overflow(self):
        self.overflows += 1
        self._wake()

    def _wake(self):
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(None)

    async def until(self, condition):
        while not condition():
            self.waiting = Deferred()
            await self.waiting

    async def test_a_saved_file_reaches_the_reactor_with_its_directory(self):
        self.backend.add(self.dir)
        self.backend.add(self.dir + b"/sub")
        self.assertEqual(self.backend.count(), 2)
        with open(self.dir + b"/sub/f", "wb") as f:
            f.write(b"x")
        await self.until(lambda: any(m & inotify.IN_CLOSE_WRITE for _, _, m in self.events))
        self.assertIn((self.dir + b"/sub", b"f"), {(d, n) for d, n, _ in self.events})

    async def test_a_deleted_directory_is_forgotten(self):
        self.backend.add(self.dir)
        self.backend.add(self.dir + b"/sub")
        os.rmdir(self.dir + b"/sub")
        await self.until(lambda: self.backend.count() == 1)
        self.assertEqual(list(self.backend.wds), [self.dir])
        self.assertTrue(any(n == b"sub" and m & inotify.IN_DELETE for _, n, m in self.events))

    def test_a_missing_directory_is_an_oserror(self):
        with self.assertRaises(OSError):
            self.backend.add(self.dir + b"/missing")

    async def test_an_overflow_is_reported(self):
        try:
            with open("/proc/sys/fs/inotify/max_queued_events") as f:
                limit = int(f.read())
        except OSError:
            raise SkipTest("no /proc/sys/fs/inotify/max_queued_events")
        if limit > 100_000:
            raise SkipTest(f"max_queued_events is {limit}: too many files to make here")
        self.backend.add(self.dir)
        # The reactor does not read while this runs: each file is a create
        # and a close-write, so the queue overflows.
        for i in range(limit // 2 + 100):
            with open(self.dir + b"/f%d" % i, "wb"):
                pass
        await self.until(lambda: self.overflows > 0)
        self.assertEqual(self.overflows, 1)
