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
from gridbackupd.model import LogHeader
from gridbackupd.scan.tolog import LogScan, scan_to_log
from gridbackupd.scan.values import ScanOptions, ScanProgress
from gridbackupd.state import db as dbmod

_LONG = int(os.environ.get("GRIDBACKUP_WATCHED_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=_LONG or 30, derandomize=not _LONG, deadline=None, database=None,
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

    def scan(self, name, kind="full", parent=None, changed=None):
        """(log path, progress) of a scan; ``parent``: the (id, log path) before."""
        log_path = os.path.join(self.base, name + ".log")
        header = LogHeader(snapshot=name, kind=kind, paths=(self.root,),
                           parent=parent[0] if kind == "incremental" else None)
        progress = ScanProgress()
        counts = scan_to_log(LogScan(
            db_path=self.db_path, snapshot_id=name, header=header,
            options=ScanOptions(roots=(self.root,)), log_path=log_path,
            previous_logs=[parent] if parent else [], changed=changed), progress)
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
        for op in data.draw(st.lists(st.sampled_from(["create", "mkdir", "create", "hard_link"]),
                                     min_size=3, max_size=25)):
            tree.apply(op)
        scans = Scans(base, root)
        parent = ("parent", scans.scan("parent")[0])
        tree.dirty.clear()
        for op in data.draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=8)):
            tree.apply(op)
        kind = data.draw(st.sampled_from(["full", "incremental"]))
        watched_log, counts = scans.scan("watched", kind, parent, changed=frozenset(tree.dirty))
        self.assertEqual(counts["scan"], "watched")
        full_log, full_counts = scans.scan("full", "full", parent)
        self.assertEqual(scans.entries(watched_log), records(full_log))
        self.assertEqual((counts["files"], counts["bytes"]), (full_counts["files"], full_counts["bytes"]))
        self.assertLessEqual(counts["visited"], full_counts["visited"])
