"""
When to scan, and what: the watcher's state, its dirty directories and its timers.

A backend reports which directory changed; the directory is dirty until a
scan is requested for it (``BackupJobs.request(changed=...)``).  A change
starts a scan ``settle`` after the last event, at most ``settle_max`` after
the first.  The first scan after the start, and after an overflow, walks
everything (changes made while nobody watched are invisible to a watcher);
so does one every ``full_scan_interval``.  Where watching cannot work (the
watch limit, a file system without events, no backend) the daemon says so
and scans everything every ``scan_interval``, as without a watcher.

All timers are on the reactor's clock (tests pass a ``Clock``).  What is
protected: while the watcher is healthy and every change it saw is in a
complete snapshot, everything is, as of now (``protected_as_of``).
"""

import inspect
import os
import time
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gridbackupd.errors import one_line
from gridbackupd.watch import inotify
from gridbackupd.watch.tree import Progress, WatchLimit, eventless, excluder_for, read_mounts, watch_tree

STARTING, WATCHING, DEGRADED, OFF = "starting", "watching", "degraded", "off"

_NEW_DIR = inotify.IN_CREATE | inotify.IN_MOVED_TO
_GONE_SELF = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF


def accepts_changed(request):
    """Whether ``BackupJobs.request`` takes ``changed`` (the scan of the dirty directories only)."""
    try:
        return "changed" in inspect.signature(request).parameters
    except (TypeError, ValueError):
        return False


class Watcher(Service):
    """
    ``jobs``: the BackupJobs (``request`` and ``wait``); ``backup``: the
    ``[backup]`` config; ``run_in_thread(f, *args)``: a Deferred of ``f``'s
    result from a worker thread; ``backend_factory(reactor, on_event,
    on_overflow)``: the backend, or None where there is none.
    """

    log = Logger()

    def __init__(self, reactor, jobs, backup, state_root, run_in_thread, backend_factory,
                 read_mounts=read_mounts):
        self.reactor = reactor
        self.jobs = jobs
        self.backup = backup
        self.run_in_thread = run_in_thread
        self.backend_factory = backend_factory
        self.read_mounts = read_mounts
        self.excluder = excluder_for(backup, state_root)
        self.roots = [os.fsencode(p) for p in backup.paths]
        self.state = STARTING
        self.reason = None
        self.fallback = False  # watching cannot see everything: full scans every scan_interval
        self.backend: Any = None
        self.dirty: set[bytes] = set()
        self.progress = Progress()
        self.setup_seconds = None
        self._setup_started = None
        self._first_event = None
        self._settle_call = None
        self._full_call = None
        self._fallback_loop = None
        self._new_dirs = 0  # new sub-trees whose watches are being set up
        self._gen = 1  # bumped at each change seen; the start counts as one
        self._covered = 0  # the newest generation a complete snapshot holds
        self._outstanding: set[str] = set()
        self._with_changed = accepts_changed(jobs.request)

    # -- start and stop ---------------------------------------------------------

    def startService(self):
        super().startService()
        try:
            self.backend = self.backend_factory(self.reactor, self._event, self._overflow)
        except OSError as e:
            self._cannot_watch(DEGRADED, f"cannot start watching: {one_line(e)}")
            return
        if self.backend is None:
            self._cannot_watch(OFF, "watching is not supported on this platform")
            return
        self._setup_started = self.reactor.seconds()
        d = self.run_in_thread(self._watch_all)
        d.addCallbacks(self._set_up, self._setup_failed)

    def stopService(self):
        super().stopService()
        self.progress.stop = True
        for call in (self._settle_call, self._full_call):
            if call is not None and call.active():
                call.cancel()
        self._settle_call = self._full_call = None
        if self._fallback_loop is not None and self._fallback_loop.running:
            self._fallback_loop.stop()
        if self.backend is not None:
            self.backend.close()

    def _watch_all(self):
        """In a worker thread: watch every root; the thread's CPU seconds (the wall time depends on the load)."""
        cpu = time.thread_time()
        for root in self.roots:
            watch_tree(self.backend, root, self.excluder, self.progress)
        return time.thread_time() - cpu

    def _set_up(self, cpu):
        if not self.running:
            return
        self.setup_seconds = round(self.reactor.seconds() - self._setup_started, 3)
        self.log.info("watching {n} directories (set up in {s} s, {cpu} s of CPU)",
                      n=self.backend.count(), s=self.setup_seconds, cpu=round(cpu or 0.0, 2))
        bad = eventless(self.roots, self.read_mounts(), self.backup.one_file_system)
        if bad:
            point, fstype = bad[0]
            self._cannot_watch(DEGRADED, f"{os.fsdecode(point)} is on {fstype}, whose changes made "
                               "elsewhere raise no events here: a full scan every scan_interval")
            return
        self.state = WATCHING
        self.reason = None
        self._full_scan()

    def _setup_failed(self, failure):
        if not self.running:
            return
        if failure.check(WatchLimit):
            self._watch_limit_reached()
            return
        self.log.failure("cannot set up the watches", failure)
        self._cannot_watch(DEGRADED, f"cannot set up the watches: {one_line(failure.value)}")

    def _watch_limit_reached(self):
        limit = inotify.max_user_watches()
        self._cannot_watch(DEGRADED, (
            f"the inotify watch limit (fs.inotify.max_user_watches = {limit}) is reached after "
            f"{self.backend.count()} directories: raise it and restart; until then a full scan "
            "every scan_interval"))

    def _cannot_watch(self, state, reason):
        """Say why, scan everything now and every scan_interval, as without a watcher."""
        self.log.warn("watching: {why}", why=reason)
        self.state = state
        self.reason = reason
        self.fallback = True
        self._full_scan()
        interval = self.backup.scan_interval
        if interval > 0 and self._fallback_loop is None:
            self._fallback_loop = LoopingCall(self._full_scan)
            self._fallback_loop.clock = self.reactor
            self._fallback_loop.start(interval, now=False)

    # -- events ------------------------------------------------------------------

    def _event(self, directory, name, mask):
        """One event of the backend, in the reactor thread."""
        path = directory.rstrip(b"/") + b"/" + name if name else directory
        is_dir = bool(mask & inotify.IN_ISDIR)
        if name and self.excluder.path_excluded(path, is_dir):
            return
        if is_dir and mask & inotify.IN_MOVED_FROM:
            self.backend.remove_tree(path)
        if not name and mask & _GONE_SELF:
            # A directory went away (its parent's event says so too).
            self.backend.remove_tree(directory)
            if directory in self.roots and self.state != OFF:
                # Nothing watches a root's parent: a root made again would go unseen.
                self._cannot_watch(DEGRADED, f"{os.fsdecode(directory)} was moved or deleted: "
                                   "a full scan every scan_interval until the daemon starts again")
        if is_dir and mask & _NEW_DIR and self.state != OFF:
            self._watch_new(path)
        self._mark((directory,))

    def _watch_new(self, path):
        """A new directory: watch it and everything in it, all of it dirty (it is new)."""
        self._new_dirs += 1
        root_dev = self._root_dev(path)
        d = maybeDeferred(self.run_in_thread, watch_tree, self.backend, path, self.excluder, Progress(), root_dev)

        def done(watched):
            self._new_dirs -= 1
            if self.running:
                self._mark(watched)

        def failed(f):
            self._new_dirs -= 1
            if not self.running:
                return
            if f.check(WatchLimit):
                self._watch_limit_reached()
            else:
                self.log.failure("cannot watch {path}", f, path=os.fsdecode(path))
                self._full_scan()

        d.addCallbacks(done, failed)

    def _root_dev(self, path):
        if not self.backup.one_file_system:
            return None
        for root in self.roots:
            if path == root or path.startswith(root.rstrip(b"/") + b"/"):
                try:
                    return os.lstat(root).st_dev
                except OSError:
                    return None
        return None

    def _overflow(self):
        """The kernel dropped events: nobody knows what changed, so everything is looked at."""
        self.log.warn("watching: the event queue overflowed; a full scan runs")
        if not self.fallback:
            self.state = DEGRADED
            self.reason = ("the kernel's event queue overflowed (fs.inotify.max_queued_events): "
                           "a full scan runs, then watching resumes")
        self._gen += 1
        self._full_scan(resume=True)

    def _mark(self, directories):
        if not directories:
            return
        self._gen += 1
        if self.state == STARTING:
            return  # the full scan after the set-up looks at everything
        self.dirty.update(directories)
        now = self.reactor.seconds()
        if self._settle_call is None or not self._settle_call.active():
            self._first_event = now
            self._settle_call = self.reactor.callLater(self.backup.settle, self._settled)
            return
        due = min(now + self.backup.settle, self._first_event + self.backup.settle_max)
        self._settle_call.reset(max(0.0, due - now))

    def _settled(self):
        self._settle_call = None
        changed = frozenset(self.dirty)
        self.dirty.clear()
        if changed:
            self._request(("watched",), changed)

    # -- scans -------------------------------------------------------------------

    def _full_scan(self, resume=False):
        """Request a scan of everything; the dirty set is part of it."""
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()
        self._settle_call = None
        self.dirty.clear()
        self._request(("scheduled",), None, resume=resume)
        if self._full_call is not None and self._full_call.active():
            self._full_call.cancel()
        self._full_call = self.reactor.callLater(self.backup.full_scan_interval, self._full_scan)

    def _retry_full(self):
        """A scan could not be queued or failed: everything is looked at again after settle_max."""
        if self._full_call is not None and self._full_call.active():
            self._full_call.cancel()
        self._full_call = self.reactor.callLater(self.backup.settle_max, self._full_scan)

    def _request(self, tags, changed, resume=False):
        gen = self._gen
        try:
            if self._with_changed:
                snapshot_id = self.jobs.request(tags=tags, changed=changed)
            else:
                snapshot_id = self.jobs.request(tags=tags)
        except Exception:
            self.log.failure("watching: cannot queue a scan")
            self._gen += 1
            self._retry_full()
            return
        self._outstanding.add(snapshot_id)
        d = self.jobs.wait(snapshot_id)
        d.addCallback(self._scanned, snapshot_id, gen, changed, resume)
        d.addErrback(lambda f: self.log.failure("watching: waiting for {id}", f, id=snapshot_id))

    def _scanned(self, end_state, snapshot_id, gen, changed, resume):
        self._outstanding.discard(snapshot_id)
        if not self.running:
            return
        if end_state == "failed":
            # What it was to cover is still to do: dirty again (all of it, for a full scan).
            self._gen += 1
            if changed is None:
                self._retry_full()
            else:
                self._mark(changed)
            return
        self._covered = max(self._covered, gen)
        if resume and self.state == DEGRADED and not self.fallback:
            self.log.info("watching again after the full scan")
            self.state = WATCHING
            self.reason = None

    # -- what the API shows ------------------------------------------------------

    def healthy(self):
        """Every change is in a complete snapshot and the watcher misses nothing: protected as of now."""
        return (self.state == WATCHING and not self.dirty and self._new_dirs == 0
                and (self._settle_call is None or not self._settle_call.active())
                and not self._outstanding and self._covered >= self._gen)

    def status(self):
        if self.state == STARTING and self._setup_started is not None:
            setup = round(self.reactor.seconds() - self._setup_started, 1)
        else:
            setup = self.setup_seconds
        return {
            "state": self.state,
            "reason": self.reason,
            "backend": getattr(self.backend, "name", None),
            "directories": self.backend.count() if self.backend is not None else 0,
            "dirty": len(self.dirty),
            "scans_pending": len(self._outstanding),
            "setup_seconds": setup,
        }


def off_status(reason):
    """``watch`` in status when there is no watcher."""
    return {"state": OFF, "reason": reason, "backend": None, "directories": 0, "dirty": 0,
            "scans_pending": 0, "setup_seconds": None}


def platform_backend():
    """The backend factory for this platform, or None (see DESIGN-NOTES: only Linux is tested)."""
    import sys

    if sys.platform.startswith("linux") and inotify.supported() is None:
        return inotify.InotifyBackend
    return None
