"""
Figures and change rows counted by the scan: equal to the comparison of
the two snapshots' logs that the API made before (``reference_figures``,
kept here as it was), computed the same way for snapshots no scan counted,
dropped and computed again when a snapshot is forgotten, and the history
of a path answered from them.
"""

import contextlib
import os
import shutil
import time

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.changes import compute
from gridbackupd.changes.tally import stream
from gridbackupd.format import chain
from gridbackupd.model import FILE, LogHeader
from gridbackupd.scan.tolog import LogScan, scan_to_log
from gridbackupd.scan.values import ScanOptions, ScanProgress
from gridbackupd.state import changes, snapshots
from gridbackupd.state import db as dbmod

OLD = 1_600_000_000_000_000_000


@contextlib.contextmanager
def entries(log_paths):
    (_, top), known = log_paths[-1], dict(log_paths)
    with chain.open_chain(top, known.get) as (_, records):
        yield records


def _compared(entry):
    return (entry.kind, entry.size, entry.mtime_ns, entry.mode, entry.uid, entry.gid,
            entry.target, entry.inline, entry.blobs, entry.sha256, entry.xattrs)


def _changes(before, after):
    a = next(before, None)
    b = next(after, None)
    from gridbackupd.format import logpaths
    while a is not None or b is not None:
        ka = logpaths.path_key(a.path) if a is not None else None
        kb = logpaths.path_key(b.path) if b is not None else None
        if kb is None or (ka is not None and ka < kb):
            yield "deleted", a, None
            a = next(before, None)
        elif ka is None or kb < ka:
            yield "added", None, b
            b = next(after, None)
        else:
            if _compared(a) != _compared(b):
                yield "changed", a, b
            a = next(before, None)
            b = next(after, None)


def reference_figures(paths_a, paths_b):
    """The API's figures before they were stored (api/browse.py ``figures``), as they were."""
    counts = {"files_added": 0, "files_changed": 0, "files_deleted": 0,
              "entries_added": 0, "entries_changed": 0, "entries_deleted": 0,
              "bytes_added": 0, "bytes_deleted": 0}
    with contextlib.ExitStack() as stack:
        before = stack.enter_context(entries(paths_a)) if paths_a else iter(())
        after = stack.enter_context(entries(paths_b))
        for change, old, new in _changes(before, after):
            entry = new if new is not None else old
            counts["entries_" + change] += 1
            if entry.kind == FILE:
                counts["files_" + change] += 1
                if change == "deleted":
                    counts["bytes_deleted"] += old.size
                elif change == "added" or old.kind != FILE or old.blobs != new.blobs or old.inline != new.inline:
                    counts["bytes_added"] += new.size
    return counts


def reference_rows(paths_a, paths_b):
    with contextlib.ExitStack() as stack:
        before = stack.enter_context(entries(paths_a)) if paths_a else iter(())
        after = stack.enter_context(entries(paths_b))
        return sorted((e.path, change, e.kind, e.size, e.mtime_ns)
                      for change, old, new in stream(before, after)
                      for e in [new if new is not None else old])


class Backups:
    """A state database, a tree and scans of it, as the backup jobs make them."""

    def __init__(self, testcase):
        base = os.path.abspath(testcase.mktemp())
        self.tree = os.path.join(base, "tree")
        self.state = os.path.join(base, "state")
        self.logs = os.path.join(self.state, "logs")
        os.makedirs(self.tree)
        os.makedirs(self.logs)
        self.db_path = os.path.join(self.state, "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        testcase.addCleanup(self.conn.close)
        self.chains: dict[str, list] = {}
        self.serial = 0

    def write(self, name, data, mtime=OLD):
        path = os.path.join(self.tree, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, ns=(mtime, mtime))

    def backup(self, kind="incremental", host="h", changed=None, complete=True):
        """A scan against the newest snapshot of ``host`` (a full log if none); its id."""
        self.serial += 1
        snapshot_id = f"2026010{self.serial}T000000.000000Z-0000000{self.serial}"
        now = time.time()
        snapshots.create_queued(self.conn, snapshot_id, host, [self.tree], [], now)
        previous = snapshots.newest_scanned(self.conn, host)
        parent_chain = self.chains[previous[0][0]] if previous else []
        if not parent_chain:
            kind = "full"
        header = LogHeader(snapshot=snapshot_id, kind=kind, host=host,
                           parent=parent_chain[-1][0] if kind == "incremental" else None,
                           paths=(os.fsencode(self.tree),), started=now)
        log_path = os.path.join(self.logs, snapshot_id + ".log")
        counts = scan_to_log(LogScan(db_path=self.db_path, snapshot_id=snapshot_id, header=header,
                                     options=ScanOptions(roots=(self.tree,)), log_path=log_path,
                                     previous_logs=parent_chain, changed=changed), ScanProgress())
        snapshots.mark_uploading(self.conn, snapshot_id, kind=kind, parent=header.parent,
                                 started=now, finished=now, files=counts["files"], bytes=counts["bytes"],
                                 errors=[], log_path=log_path)
        if complete:
            snapshots.mark_complete(self.conn, snapshot_id, "URI:CHK:x", True)
        own = [(snapshot_id, log_path)]
        self.chains[snapshot_id] = (list(parent_chain) + own) if kind == "incremental" else own
        return snapshot_id


class ScanFiguresTests(SynchronousTestCase):
    def setUp(self):
        self.b = Backups(self)

    def check_against_reference(self, snapshot_id, parent):
        stored = changes.figures(self.b.conn, snapshot_id)
        parent_chain = self.b.chains[parent] if parent else []
        expected = reference_figures(parent_chain, self.b.chains[snapshot_id])
        self.assertEqual(stored, dict(expected, parent=parent))
        rows = sorted(tuple(r) for r in self.b.conn.execute(
            "SELECT path, change, kind, size, mtime_ns FROM snapshot_changes WHERE snapshot = ?",
            (snapshot_id,)))
        self.assertEqual(rows, reference_rows(parent_chain, self.b.chains[snapshot_id]))
        return stored

    def test_adds_changes_and_deletes_equal_the_logs_comparison(self):
        b = self.b
        b.write("keep.txt", b"same" * 100)
        b.write("small", b"tiny")
        b.write("grows.bin", b"a" * 5000)
        b.write("dir/gone.txt", b"bye" * 1000)
        b.write("dir/chmod.txt", b"mode")
        b.write("meta.txt", b"same content")
        os.symlink("keep.txt", os.path.join(b.tree, "link"))
        first = b.backup()
        figures = self.check_against_reference(first, None)
        self.assertEqual(figures["files_added"], 6)
        self.assertEqual(figures["entries_deleted"], 0)

        b.write("new.txt", b"new" * 2000)
        b.write("grows.bin", b"b" * 7000)
        b.write("small", b"TINY")
        os.unlink(os.path.join(b.tree, "dir", "gone.txt"))
        os.chmod(os.path.join(b.tree, "dir", "chmod.txt"), 0o600)
        os.utime(os.path.join(b.tree, "meta.txt"), ns=(OLD + 10**9, OLD + 10**9))
        os.unlink(os.path.join(b.tree, "link"))
        os.symlink("small", os.path.join(b.tree, "link"))
        second = b.backup()
        figures = self.check_against_reference(second, first)
        self.assertEqual((figures["files_added"], figures["files_deleted"]), (1, 1))
        # grows.bin and small (content), chmod.txt and meta.txt (metadata only).
        self.assertEqual(figures["files_changed"], 4)
        self.assertEqual(figures["bytes_added"], 6000 + 7000 + 4)
        self.assertEqual(figures["bytes_deleted"], 3000)

        shutil.rmtree(os.path.join(b.tree, "dir"))
        os.mkdir(os.path.join(b.tree, "dir"))  # a directory again, empty
        os.unlink(os.path.join(b.tree, "keep.txt"))
        os.mkdir(os.path.join(b.tree, "keep.txt"))  # a file became a directory
        third = b.backup(kind="full")  # a full log still compares with its parent
        figures = self.check_against_reference(third, second)
        # dir/chmod.txt; keep.txt is a directory now: an entry changed, not a file.
        self.assertEqual((figures["files_deleted"], figures["entries_changed"] >= 1), (1, True))

        unchanged = b.backup()
        figures = self.check_against_reference(unchanged, third)
        self.assertEqual(sum(figures[k] for k in changes.KEYS), 0)

    def test_a_watched_scan_counts_as_a_full_one(self):
        """Entries taken from the parent are unchanged; a dirty directory's losses are deletions."""
        b = self.b
        b.write("quiet/a", b"a" * 3000)
        b.write("busy/gone", b"g" * 2000)
        b.write("busy/sub/deep", b"d" * 1000)
        b.write("busy/kept", b"k" * 500)
        first = b.backup()
        os.unlink(os.path.join(b.tree, "busy", "gone"))
        shutil.rmtree(os.path.join(b.tree, "busy", "sub"))
        b.write("busy/new", b"n" * 700)
        busy = os.fsencode(os.path.join(b.tree, "busy"))
        second = b.backup(changed=frozenset({busy}))
        figures = self.check_against_reference(second, first)
        self.assertEqual((figures["files_added"], figures["files_deleted"], figures["bytes_deleted"]),
                         (1, 2, 3000))

    def test_computed_figures_equal_the_counted_ones(self):
        """What recovery and older snapshots get: the same figures and rows, from the logs."""
        b = self.b
        b.write("a", b"1" * 3000)
        b.write("d/b", b"2" * 3000)
        first = b.backup()
        b.write("a", b"3" * 4000)
        b.write("d/c", b"4")
        os.unlink(os.path.join(b.tree, "d", "b"))
        second = b.backup()
        counted = {s: (changes.figures(b.conn, s), self.rows(s)) for s in (first, second)}
        b.conn.execute("DELETE FROM snapshot_figures")
        b.conn.execute("DELETE FROM snapshot_changes")
        self.assertEqual(changes.missing(b.conn), [first, second])
        self.assertEqual(compute.fill_missing(b.db_path), [])
        self.assertEqual(changes.missing(b.conn), [])
        self.assertEqual({s: (changes.figures(b.conn, s), self.rows(s)) for s in (first, second)}, counted)

    def rows(self, snapshot_id):
        return sorted(self.b.conn.execute(
            "SELECT path, change, kind, size, mtime_ns FROM snapshot_changes WHERE snapshot = ?",
            (snapshot_id,)))

    def test_missing_logs_leave_figures_missing(self):
        b = self.b
        b.write("a", b"1" * 3000)
        first = b.backup()
        b.conn.execute("DELETE FROM snapshot_figures")
        os.rename(b.chains[first][0][1], b.chains[first][0][1] + ".away")
        self.assertEqual(compute.fill_missing(b.db_path), [first])
        self.assertIsNone(changes.figures(b.conn, first))

    def test_forget_drops_rows_and_recomputes_the_next(self):
        b = self.b
        b.write("a", b"1" * 3000)
        first = b.backup()
        b.write("b", b"2" * 3000)
        second = b.backup()
        b.write("b", b"3" * 3000)
        third = b.backup(kind="full")  # as forget rewrites the kept child of a forgotten snapshot
        self.assertEqual(changes.figures(b.conn, third)["parent"], second)
        with dbmod.transaction(b.conn):
            snapshots.forget(b.conn, second)
            changes.forget(b.conn, second)
        self.assertEqual(self.rows(second), [])
        self.assertEqual(changes.missing(b.conn), [third])
        compute.fill_missing(b.db_path)
        figures = changes.figures(b.conn, third)
        self.assertEqual(figures["parent"], first)
        self.assertEqual(figures, dict(reference_figures(b.chains[first], b.chains[third]), parent=first))
        # b was added (in the forgotten snapshot): now in the third.
        path = os.fsencode(os.path.join(b.tree, "b"))
        self.assertEqual([(r[0], r[4]) for r in changes.history(b.conn, path)], [(third, "added")])

    def test_replace_refuses_a_parent_that_is_no_longer_the_one_before(self):
        b = self.b
        b.write("a", b"1")
        first = b.backup()
        b.write("a", b"2")
        second = b.backup()
        tally = compute.compare([], b.chains[second])
        self.assertFalse(changes.replace(b.conn, second, None, tally.counts, tally.rows))
        self.assertEqual(changes.figures(b.conn, second)["parent"], first)

    def test_history_of_a_path(self):
        b = self.b
        b.write("f", b"one" * 1000)
        first = b.backup()
        b.write("other", b"x")
        b.backup()
        b.write("f", b"two" * 2000, mtime=OLD + 5 * 10**9)
        third = b.backup()
        os.unlink(os.path.join(b.tree, "f"))
        fourth = b.backup()
        b.write("f", b"three")
        b.backup(host="elsewhere")  # another host's first snapshot of the same tree
        path = os.fsencode(os.path.join(b.tree, "f"))
        mine = changes.history(b.conn, path, "h")
        self.assertEqual([(r[0], r[4], r[6]) for r in mine],
                         [(first, "added", 3000), (third, "changed", 6000), (fourth, "deleted", 6000)])
        self.assertEqual(mine[1][7], OLD + 5 * 10**9)
        self.assertEqual(len(changes.history(b.conn, path)), 4)
        self.assertEqual(changes.history(b.conn, path + b"x"), [])


class CompleteParentTests(SynchronousTestCase):
    """An unchanged file's blobs are not queued again when its parent is complete (all committed)."""

    def queued(self, b, snapshot_id):
        return b.conn.execute("SELECT count(*) FROM snapshot_blobs WHERE snapshot = ?",
                              (snapshot_id,)).fetchone()[0]

    def test_unchanged_blobs_of_a_complete_parent_are_not_queued(self):
        b = Backups(self)
        b.write("big", os.urandom(300_000))
        b.backup()
        # The blobs stay pending here (nothing uploads them): only the
        # parent's state says whether they are looked up and queued.
        b.write("new", os.urandom(5_000))
        second = b.backup(complete=False)
        self.assertEqual(self.queued(b, second), 1)  # the new file's only

    def test_an_uploading_parent_has_its_blobs_looked_up(self):
        b = Backups(self)
        b.write("big", os.urandom(300_000))
        b.backup(complete=False)
        b.write("new", os.urandom(5_000))
        second = b.backup(complete=False)
        self.assertGreater(self.queued(b, second), 1)
