"""
The property of a watched scan: after any changes, a scan that lists only
the directories a watcher would have marked dirty (the parent directory of
each changed path, both sides of a rename) gives the same entries as a
full walk, entry for entry.

Runs at the scan-module level (``scan_to_log`` on a real tree, no daemon,
no grid).  ``make test`` runs a fixed, derandomized set of examples;
``GRIDBACKUP_WATCHED_EXAMPLES=N`` runs N random ones.
"""

import os
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format import chain
from gridbackupd.format.logreader import read_log
from gridbackupd.model import FILE, HARDLINK, LogHeader
from gridbackupd.scan import watched
from gridbackupd.scan.compare import PreviousEntries
from gridbackupd.scan.tolog import LogScan, scan_to_log
from gridbackupd.scan.values import ScanOptions, ScanProgress
from gridbackupd.state import db as dbmod

_LONG = int(os.environ.get("GRIDBACKUP_WATCHED_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=_LONG or 150, derandomize=not _LONG, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMES = [b"a", b"b", b"a b", b"a-", b"a.x", b"ab", b"z", b"n\xff", b"\xc3\xa9"]
OLD = 1_600_000_000_000_000_000
OPS = ["create", "write", "truncate", "rename_file", "rename_dir", "delete_file", "delete_dir",
       "chmod", "symlink_swap", "hard_link", "mkdir", "file_to_dir", "dir_to_file"]


class Tree:
    """A real tree under ``root`` changed at random, and the directories a watcher would mark."""

    def __init__(self, root, data):
        self.root = root
        self.data = data
        self.dirty = set()

    def listing(self):
        dirs, files, links = [self.root], [], []
        for top, subdirs, names in os.walk(self.root):
            dirs.extend(os.path.join(top, d) for d in subdirs)
            for n in names:
                path = os.path.join(top, n)
                (links if os.path.islink(path) else files).append(path)
        for top, subdirs, _ in os.walk(self.root):
            links.extend(os.path.join(top, d) for d in subdirs if os.path.islink(os.path.join(top, d)))
        dirs = [d for d in dirs if not os.path.islink(d)]
        return sorted(dirs), sorted(files), sorted(links)

    def pick(self, paths):
        return self.data.draw(st.sampled_from(paths))

    def new_path(self, dirs):
        return os.path.join(self.pick(dirs), self.data.draw(st.sampled_from(NAMES)))

    def changed(self, *paths):
        for p in paths:
            self.dirty.add(os.path.dirname(p))

    def write(self, path):
        size = self.data.draw(st.sampled_from([0, 5, 127, 128, 129, 300, 5000]))
        fill = self.data.draw(st.integers(0, 255))
        with open(path, "wb") as f:
            f.write(bytes([fill]) * size)
        self.age(path)

    def age(self, path):
        # Old times: no entry is "racy" (read within its mtime's second),
        # which would make two scans a second apart differ by design.
        t = OLD + self.data.draw(st.integers(0, 3)) * 10**9
        os.utime(path, ns=(t, t), follow_symlinks=False)

    def apply(self, op):
        dirs, files, links = self.listing()
        inner = [d for d in dirs if d != self.root]
        if op in ("create", "mkdir", "hard_link") or (op == "symlink_swap" and not links):
            path = self.new_path(dirs)
            if os.path.lexists(path):
                return
            if op == "create":
                self.write(path)
            elif op == "mkdir":
                os.mkdir(path)
                self.age(path)
            elif op == "hard_link":
                if not files:
                    return
                target = self.pick(files)
                os.link(target, path)
                self.changed(target)
            else:
                os.symlink(self.data.draw(st.sampled_from([b"a", b"../b", b"/nowhere"])), path)
            self.changed(path)
        elif op in ("write", "truncate", "delete_file", "file_to_dir") and files:
            path = self.pick(files)
            if op == "write":
                self.write(path)
            elif op == "truncate":
                os.truncate(path, self.data.draw(st.integers(0, 200)))
                self.age(path)
            else:
                os.unlink(path)
                if op == "file_to_dir":
                    os.mkdir(path)
                    self.write(os.path.join(path, b"inside"))
                    self.changed(os.path.join(path, b"inside"))
            self.changed(path)
        elif op == "rename_file" and files:
            path, to = self.pick(files), self.new_path(dirs)
            if not os.path.isdir(to):
                os.rename(path, to)
                self.changed(path, to)
        elif op == "rename_dir" and inner:
            path, to = self.pick(inner), self.new_path(dirs)
            if not (to + b"/").startswith(path + b"/") and not os.path.lexists(to):
                os.rename(path, to)
                self.changed(path, to)
        elif op in ("delete_dir", "dir_to_file") and inner:
            path = self.pick(inner)
            for top, subdirs, names in os.walk(path):
                self.changed(*(os.path.join(top, n) for n in subdirs + names))
            shutil.rmtree(path)
            if op == "dir_to_file":
                self.write(path)
            self.changed(path)
        elif op == "chmod" and (files or inner):
            path = self.pick(files + inner)
            os.chmod(path, self.data.draw(st.sampled_from([0o600, 0o644, 0o755, 0o700])))
            self.changed(path)
        elif op == "symlink_swap" and links:
            path = self.pick(links)
            os.unlink(path)
            if self.data.draw(st.booleans()):
                os.symlink(self.data.draw(st.sampled_from([b"b", b"../a", b"/elsewhere"])), path)
            else:
                self.write(path)
            self.changed(path)


class Scans:
    """Scans of one tree at the scan-module level, each log in ``base``."""

    def __init__(self, base, root):
        self.base = base
        self.root = root
        self.db_path = os.path.join(base, "state.sqlite")
        dbmod.open_database(self.db_path).close()

    def scan(self, name, kind="full", parents=(), changed=None, previous_totals=None):
        """
        (log path, counts) of a scan; ``parents``: the chain before, as
        (id, log path) pairs; ``previous_totals``: its totals, for a scan
        that counts by difference.
        """
        log_path = os.path.join(self.base, name + ".log")
        header = LogHeader(snapshot=name, kind=kind, paths=(self.root,),
                           parent=parents[-1][0] if kind == "incremental" else None)
        progress = ScanProgress()
        counts = scan_to_log(LogScan(
            db_path=self.db_path, snapshot_id=name, header=header,
            options=ScanOptions(roots=(self.root,)), log_path=log_path,
            previous_logs=parents, changed=changed,
            copy_blobs=previous_totals is None, previous_totals=previous_totals), progress)
        return log_path, counts

    def entries(self, log_path):
        with chain.open_chain(log_path) as (_, records):
            return list(records)


def records(log_path):
    with open(log_path, "rb") as f:
        return list(read_log(f)[1])


class WatchedScanProperty(SynchronousTestCase):
    @PROPERTY
    @given(st.data())
    def test_watched_scan_equals_a_full_walk(self, data):
        base = tempfile.mkdtemp(prefix="watched-")
        try:
            self.check(base, data)
        finally:
            shutil.rmtree(base)

    def check(self, base, data):
        root = os.path.join(os.fsencode(base), b"tree")
        os.mkdir(root)
        tree = Tree(root, data)
        for op in data.draw(st.lists(st.sampled_from(["create", "mkdir", "create", "mkdir", "hard_link"]),
                                     min_size=3, max_size=40)):
            tree.apply(op)
        scans = Scans(base, root)
        parent_log, counts = scans.scan("parent")
        parents = [("parent", parent_log)]
        # Two rounds: the second watched scan's parent may be the first's
        # incremental log, a chain of two to take entries from.
        for n in range(data.draw(st.integers(1, 2))):
            totals = counts["totals"]
            tree.dirty.clear()
            for op in data.draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=8)):
                tree.apply(op)
            kind = data.draw(st.sampled_from(["full", "incremental"]))
            # The parent's totals given: an incremental scan counts by
            # difference and passes what it takes from the parent over unread.
            by_difference = kind == "incremental" and data.draw(st.booleans())
            watched_log, counts = scans.scan(f"watched{n}", kind, parents, changed=frozenset(tree.dirty),
                                             previous_totals=totals if by_difference else None)
            self.assertEqual(counts["scan"], "watched")
            full_log, full_counts = scans.scan(f"full{n}", "full", parents)
            held = scans.entries(watched_log)
            self.assertEqual(held, records(full_log))
            self.assertEqual((counts["files"], counts["bytes"]), (full_counts["files"], full_counts["bytes"]))
            self.assertLessEqual(counts["visited"], full_counts["visited"])
            # What the snapshot holds, counted (by difference or not).
            self.assertEqual(full_counts["totals"], (
                len(held), sum(e.kind in (FILE, HARDLINK) for e in held),
                sum(e.size for e in held if e.kind in (FILE, HARDLINK))))
            self.assertEqual(counts["totals"], full_counts["totals"])
            parents = (parents if kind == "incremental" else []) + [(f"watched{n}", watched_log)]
            # The paths to look at again that the scan wrote beside its log
            # are the ones a search of the log finds.
            for log in (parent_log, watched_log):
                side = log + watched.REVISIT_SUFFIX
                written = watched._read_revisit(log)
                self.assertIsNotNone(written)
                os.rename(side, side + ".off")
                self.assertEqual(written, watched.paths_to_revisit([("", log)]))
                os.rename(side + ".off", side)


class ByDifferenceTests(SynchronousTestCase):
    """
    Watched scans that count by difference over a chain, on a tree with
    many sub-trees to pass over unread: each equals a full walk, entry for
    entry and in its totals.
    """

    def test_a_chain_of_watched_scans(self):
        base = tempfile.mkdtemp(prefix="bydifference-")
        self.addCleanup(shutil.rmtree, base)
        root = os.path.join(os.fsencode(base), b"tree")
        dirs = [os.path.join(root, b"d%02d" % i, b"s%d" % j) for i in range(30) for j in range(3)]
        for d in dirs:
            os.makedirs(d)
            for k in range(12):
                with open(os.path.join(d, b"f%02d" % k), "wb") as f:
                    f.write(b"x" * k * 40)
        for top, subdirs, names in os.walk(root):
            for name in subdirs + names:
                os.utime(os.path.join(top, name), ns=(OLD, OLD))
        scans = Scans(base, root)
        log, counts = scans.scan("s0")
        parents = [("s0", log)]
        skipped = []
        original = PreviousEntries.skip_below
        self.patch(PreviousEntries, "skip_below", lambda entries, prefix: (
            skipped.append(prefix), original(entries, prefix))[1])
        changes = [
            lambda: open(os.path.join(dirs[5], b"new"), "wb").close() or [dirs[5]],
            lambda: shutil.rmtree(dirs[40]) or [os.path.dirname(dirs[40])],
            lambda: os.rename(dirs[70], os.path.join(dirs[2], b"moved")) or [os.path.dirname(dirs[70]), dirs[2]],
            lambda: os.truncate(os.path.join(dirs[88], b"f03"), 7) or [dirs[88]],
        ]
        for n, change in enumerate(changes, 1):
            dirty = change()
            for d in dirty:
                os.utime(d, ns=(OLD, OLD))
            name = f"s{n}"
            log, watched = scans.scan(name, "incremental", parents, changed=frozenset(dirty),
                                      previous_totals=counts["totals"])
            full_log, full = scans.scan(f"full{n}", "full", parents)
            self.assertEqual(scans.entries(log), records(full_log))
            self.assertEqual(watched["totals"], full["totals"])
            self.assertEqual((watched["files"], watched["bytes"]), (full["files"], full["bytes"]))
            parents.append((name, log))
            counts = watched
        self.assertGreater(len(skipped), 100)
