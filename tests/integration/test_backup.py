"""
Backup jobs and their logs: full and incremental logs, chains of logs
merged into snapshots, the choice of log kind.
"""

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase, TestCase

from gridbackupd.config import BackupConfig, Config, TahoeConfig
from gridbackupd.format import chain
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logreader import read_log
from gridbackupd.format.logwriter import write_log
from gridbackupd.model import Deletion, Entry, LogHeader
from gridbackupd.scan import jobs as jobsmod
from gridbackupd.scan import reader
from gridbackupd.scan.jobs import BackupJobs
from gridbackupd.scan.tolog import LogScan, scan_to_log
from gridbackupd.scan.values import ScanOptions, ScanProgress, ScanStopped
from gridbackupd.state import checkpoints
from gridbackupd.state import db as dbmod
from gridbackupd.state.snapshots import log_resolver
from gridbackupd.statedir import StateDir
from gridbackupd.testing.inline import InlinePool, ThreadlessReactor
from gridbackupd.waiters import Waiters
from tests.support import REPO

OLD = 1_600_000_000_000_000_000


def write(path, data, mtime=OLD):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(mtime, mtime))


def read_records(path):
    with open(path, "rb") as f:
        header, records = read_log(f)
        return header, list(records)


class Fixture:
    """A state directory with a database, and a tree to scan."""

    def __init__(self, testcase, full_every=10):
        self.base = os.path.abspath(testcase.mktemp())
        self.tree = os.path.join(self.base, "tree")
        self.state = os.path.join(self.base, "state")
        os.makedirs(self.tree)
        os.makedirs(self.state)
        self.db_path = os.path.join(self.state, "state.sqlite")
        self.conn = dbmod.open_database(self.db_path)
        testcase.addCleanup(self.conn.close)
        self.config = Config(
            path=os.path.join(self.base, "x.ini"), state_dir=self.state, hostname="h",
            tahoe=TahoeConfig("embedded"),
            backup=BackupConfig(paths=(self.tree,), full_every=full_every),
        )
        self.scanned = []
        self.jobs = BackupJobs(
            ThreadlessReactor(), self.conn, StateDir(self.state), InlinePool(), self.config.backup,
            self.config.hostname, self.scanned.append, Waiters(),
        )

    def backup(self):
        snapshot_id = self.jobs.request()
        self.assertState(snapshot_id)
        return snapshot_id

    def assertState(self, snapshot_id):
        state = self.conn.execute("SELECT state FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()[0]
        assert state == "uploading", state

    def row(self, snapshot_id):
        return self.conn.execute(
            "SELECT kind, parent, log_path, files FROM snapshots WHERE id = ?", (snapshot_id,)
        ).fetchone()


def full_scan(testcase, roots, previous=()):
    """The entries of a full scan of ``roots`` now (previous: the chain to compare with)."""
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path)
    db_path = os.path.join(path, "db.sqlite")
    dbmod.open_database(db_path).close()
    log_path = os.path.join(path, "full.log")
    header = LogHeader(snapshot="check", kind="full", paths=tuple(os.fsencode(r) for r in roots))
    scan_to_log(LogScan(db_path=db_path, snapshot_id="check", header=header,
                        options=ScanOptions(roots=tuple(roots)), log_path=log_path,
                        previous_logs=list(previous)), ScanProgress())
    return read_records(log_path)[1]


class IncrementalTests(SynchronousTestCase):
    def setUp(self):
        self.f = Fixture(self)
        t = self.f.tree
        write(os.path.join(t, "a", "keep.txt"), b"keep" * 100)
        write(os.path.join(t, "a", "change.txt"), b"old content" * 50)
        write(os.path.join(t, "gone", "x.txt"), b"x" * 300)
        write(os.path.join(t, "gone", "sub", "y.txt"), b"y" * 300)
        write(os.path.join(t, "z.txt"), b"tiny")
        os.symlink("a/keep.txt", os.path.join(t, "link"))

    def change_tree(self):
        t = self.f.tree
        write(os.path.join(t, "a", "change.txt"), b"new content!" * 50, mtime=OLD + 10**9)
        write(os.path.join(t, "a", "new.txt"), b"brand new" * 40)
        for p in ("gone/sub/y.txt", "gone/x.txt"):
            os.unlink(os.path.join(t, p))
        os.rmdir(os.path.join(t, "gone", "sub"))
        os.rmdir(os.path.join(t, "gone"))

    def test_first_log_is_full_then_incremental(self):
        first = self.f.backup()
        kind, parent, log_path, files = self.f.row(first)
        self.assertEqual((kind, parent, files), ("full", None, 5))
        header, records = read_records(log_path)
        self.assertEqual(header.kind, "full")
        self.assertEqual(len(records), 10)

        self.change_tree()
        second = self.f.backup()
        kind, parent, log_path, files = self.f.row(second)
        self.assertEqual((kind, parent, files), ("incremental", first, 4))
        header, records = read_records(log_path)
        self.assertEqual((header.kind, header.parent), ("incremental", first))
        t = os.fsencode(self.f.tree)
        # The tree's directory and a/ changed (their mtimes), change.txt
        # changed, new.txt is new, gone/ went away with what it held.
        self.assertEqual(
            [(type(r).__name__, r.path[len(t):]) for r in records],
            [
                ("Entry", b""),
                ("Entry", b"/a"),
                ("Entry", b"/a/change.txt"),
                ("Entry", b"/a/new.txt"),
                ("Deletion", b"/gone"),
                ("Deletion", b"/gone/sub"),
                ("Deletion", b"/gone/sub/y.txt"),
                ("Deletion", b"/gone/x.txt"),
            ],
        )

    def test_chain_gives_the_same_entries_as_a_full_scan(self):
        first = self.f.backup()
        self.change_tree()
        second = self.f.backup()
        write(os.path.join(self.f.tree, "a", "third.txt"), b"3" * 1000)
        third = self.f.backup()
        self.assertEqual(self.f.row(third)[:2], ("incremental", second))
        merged = list(chain.snapshot_entries(third, log_resolver(self.f.conn)))
        chain_logs = chain.chain_paths(self.f.row(third)[2])
        self.assertEqual([i for i, _ in chain_logs], [first, second, third])
        self.assertEqual(merged, full_scan(self, [self.f.tree], chain_logs))
        # and through the log path alone, as the restore engine reads it
        with chain.open_chain(self.f.row(third)[2]) as (header, entries):
            self.assertEqual(header.snapshot, third)
            self.assertEqual(list(entries), merged)

    def test_unchanged_tree_gives_an_empty_incremental(self):
        self.f.backup()
        second = self.f.backup()
        header, records = read_records(self.f.row(second)[2])
        self.assertEqual((header.kind, records), ("incremental", []))

    def test_full_every(self):
        self.f = Fixture(self, full_every=3)
        write(os.path.join(self.f.tree, "f"), b"f" * 200)
        ids = []
        for i in range(7):
            write(os.path.join(self.f.tree, f"n{i}"), b"n" * (200 + i))
            ids.append(self.f.backup())
        rows = [self.f.row(i)[:2] for i in ids]
        self.assertEqual(
            rows,
            [("full", None), ("incremental", ids[0]), ("incremental", ids[1]),
             ("full", None), ("incremental", ids[3]), ("incremental", ids[4]),
             ("full", None)],
        )
        entries = list(chain.snapshot_entries(ids[5], log_resolver(self.f.conn)))
        self.assertEqual(len(entries), 1 + 1 + 6)

    def test_missing_parent_log_makes_a_full_log_and_is_reported_by_chain(self):
        first = self.f.backup()
        self.f.backup()
        os.unlink(self.f.row(first)[2])
        second = self.f.conn.execute("SELECT id FROM snapshots ORDER BY id DESC").fetchone()[0]
        self.assertRaises(chain.ChainError, chain.snapshot_entries, second, log_resolver(self.f.conn))
        third = self.f.backup()
        self.assertEqual(self.f.row(third)[:2], ("full", None))

    def test_damaged_parent_log_gives_a_full_log(self):
        first = self.f.backup()
        log_path = self.f.row(first)[2]
        with open(log_path, "rb") as f:
            header, records = read_log(f)
            records = list(records)
        # A valid start, then garbage: the reader fails half-way.
        with open(log_path, "wb") as f:
            write_log(f, header, records)
        with open(log_path, "r+b") as f:
            f.seek(-6, os.SEEK_END)
            f.write(b"\0" * 6)
        self.change_tree()
        second = self.f.backup()
        kind, parent, path, files = self.f.row(second)
        self.assertEqual((kind, parent, files), ("full", None, 4))
        self.assertEqual(list(chain.snapshot_entries(second, log_resolver(self.f.conn))),
                         full_scan(self, [self.f.tree]))


class ChainTests(SynchronousTestCase):
    def write_log(self, directory, header, records):
        with open(os.path.join(directory, header.snapshot + ".log"), "wb") as f:
            write_log(f, header, records)
        return os.path.join(directory, header.snapshot + ".log")

    def test_merge_and_checks(self):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        def e(p, size=0):
            return Entry(path=p, kind="file", size=size, inline=b"x" * size)
        self.write_log(d, LogHeader(snapshot="s1", kind="full"), [e(b"/a"), e(b"/b"), e(b"/c")])
        self.write_log(d, LogHeader(snapshot="s2", kind="incremental", parent="s1"),
                       [e(b"/a", 1), Deletion(b"/b")])
        last = self.write_log(d, LogHeader(snapshot="s3", kind="incremental", parent="s2"),
                              [e(b"/b", 2), Deletion(b"/c")])
        with chain.open_chain(last) as (header, entries):
            self.assertEqual(header.snapshot, "s3")
            self.assertEqual(list(entries), [e(b"/a", 1), e(b"/b", 2)])
        self.assertEqual(chain.chain_length(last), 3)

        # A parent that is missing, and a chain that loops.
        os.unlink(os.path.join(d, "s1.log"))
        self.assertRaises(chain.ChainError, chain.chain_paths, last)
        self.write_log(d, LogHeader(snapshot="s1", kind="incremental", parent="s3"), [])
        self.assertRaises(chain.ChainError, chain.chain_paths, last)

    def test_deletion_of_a_missing_path_is_an_error(self):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        self.write_log(d, LogHeader(snapshot="s1", kind="full"), [])
        last = self.write_log(d, LogHeader(snapshot="s2", kind="incremental", parent="s1"),
                              [Deletion(b"/nope")])
        with chain.open_chain(last) as (_, entries):
            self.assertRaises(LogFormatError, list, entries)


class ErrorsAndStatusTests(SynchronousTestCase):
    def test_errors_are_recorded_in_the_snapshot(self):
        import json

        f = Fixture(self)
        write(os.path.join(f.tree, "ok"), b"o" * 300)
        write(os.path.join(f.tree, "locked"), b"l" * 300)
        def deny(path):
            if path.endswith(b"/locked"):
                raise PermissionError(13, "Permission denied")

        self.patch(reader, "before_open", deny)
        snapshot_id = f.backup()
        files, errors = f.conn.execute(
            "SELECT files, errors FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        self.assertEqual(files, 2)
        self.assertEqual(json.loads(errors), [
            {"path": os.path.join(f.tree, "locked"), "reason": "cannot open: permission denied"}])

    def test_status_while_scanning(self):
        f = Fixture(self)
        self.assertEqual(f.jobs.status(), {"running": False, "last_error": None, "last_scan": None})
        seen = []
        real_scan = scan_to_log

        def spy(*args):
            seen.append(f.jobs.status())
            return real_scan(*args)

        self.patch(jobsmod, "scan_to_log", spy)
        f.backup()
        status = seen[0]
        self.assertEqual(status["running"], True)
        self.assertEqual(status["kind"], "full")
        for key in ("entries", "files", "bytes", "bytes_hashed", "current_path",
                    "entries_per_second", "bytes_hashed_per_second", "errors", "excluded"):
            self.assertIn(key, status)
        status = f.jobs.status()
        self.assertEqual((status["running"], status["last_error"]), (False, None))
        self.assertEqual((status["last_scan"]["scan"], status["last_scan"]["visited"]), ("full", 1))


KILL_CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from gridbackupd.scan import checkpoints
from gridbackupd.model import LogHeader
from gridbackupd.scan.tolog import LogScan, scan_to_log
from gridbackupd.scan.values import ScanOptions, ScanProgress
db_path, log_path, root, kill_after = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
real_take = checkpoints.Checkpoints.take
taken = []
def take(self, *args):
    real_take(self, *args)
    taken.append(1)
    if len(taken) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoints.Checkpoints.take = take
header = LogHeader(snapshot="s1", kind="full", paths=(os.fsencode(root),), started=1.0)
scan_to_log(LogScan(db_path=db_path, snapshot_id="s1", header=header, options=ScanOptions(roots=(root,)),
                    log_path=log_path, checkpoint_every=0), ScanProgress())
"""


class ResumeTests(SynchronousTestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        self.tree = os.path.join(self.base, "tree")
        self.logs = os.path.join(self.base, "logs")
        os.makedirs(self.logs)
        for d in range(20):
            for i in range(100):
                write(os.path.join(self.tree, f"d{d:02d}", f"f{i:03d}"), b"%d-%d" % (d, i) * 60)
        # A hard link whose two names fall on both sides of a checkpoint.
        os.link(os.path.join(self.tree, "d00", "f000"), os.path.join(self.tree, "d19", "link"))
        self.db_path = os.path.join(self.base, "state.sqlite")
        dbmod.open_database(self.db_path).close()
        self.log_path = os.path.join(self.logs, "s1.log")
        self.header = LogHeader(snapshot="s1", kind="full", paths=(os.fsencode(self.tree),),
                                started=1.0)

    def kill_scan_at(self, suffix):
        """A scan (checkpointing at every chance) killed as it opens the file ending in ``suffix``."""
        def crash(path):
            if path.endswith(suffix):
                raise KeyboardInterrupt("killed")

        self.patch(reader, "before_open", crash)
        self.assertRaises(KeyboardInterrupt, self.scan, checkpoint_every=0)
        self.patch(reader, "before_open", None)

    def scan(self, progress=None, **kw):
        progress = progress or ScanProgress()
        counts = scan_to_log(LogScan(db_path=self.db_path, snapshot_id="s1", header=self.header,
                                     options=ScanOptions(roots=(self.tree,)), log_path=self.log_path,
                                     **kw), progress)
        return counts, progress

    def reference(self):
        return full_scan(self, [self.tree])

    def test_kill_9_then_resume(self):
        import subprocess
        import sys

        src = os.path.join(REPO, "src")
        child = subprocess.run(
            [sys.executable, "-c", KILL_CHILD, src, self.db_path, self.log_path, self.tree, "3"],
            capture_output=True)
        self.assertEqual(child.returncode, -9, child.stderr.decode())
        self.assertFalse(os.path.exists(self.log_path))
        conn = sqlite3.connect(self.db_path)
        state = load_checkpoint(conn)
        self.assertEqual(state["records"], 3 * 256)
        # The blobs of the files before the checkpoint were committed with it.
        queued = conn.execute("SELECT count(*) FROM snapshot_blobs WHERE snapshot = 's1'").fetchone()[0]
        self.assertGreaterEqual(queued, 3 * 256 - 40)  # less the directory entries
        conn.close()

        counts, progress = self.scan()
        self.assertEqual(counts["resumes"], 1)
        self.assertEqual(counts["files"], 2001)
        # Each file was read once, in one run or the other: the counters
        # went on from the checkpoint, and nothing before it was read again.
        total = sum(os.path.getsize(os.path.join(d, n))
                    for d, _, names in os.walk(self.tree) for n in names if n != "link")
        self.assertEqual(progress.bytes_hashed, total)
        header, records = read_records(self.log_path)
        self.assertEqual(header.started, 1.0)
        self.assertEqual(records, self.reference())
        link = [r for r in records if r.path.endswith(b"/d19/link")][0]
        self.assertEqual(link.kind, "hardlink")
        # The snapshot says that it was resumed.
        self.assertIn("interrupted and resumed", progress.errors[-1]["reason"])
        # No checkpoint and no leftovers remain.
        conn = sqlite3.connect(self.db_path)
        self.assertIsNone(load_checkpoint(conn))
        conn.close()
        self.assertEqual(sorted(os.listdir(self.logs)), ["s1.log"])

    def test_interrupted_twice(self):
        opened = []

        def crash_after(n):
            def patched(path):
                opened.append(path)
                if len(opened) == n:
                    raise KeyboardInterrupt("killed")
            return patched

        self.patch(reader, "before_open", crash_after(700))
        self.assertRaises(KeyboardInterrupt, self.scan, checkpoint_every=0)
        opened.clear()
        self.patch(reader, "before_open", crash_after(700))
        self.assertRaises(KeyboardInterrupt, self.scan, checkpoint_every=0)
        opened.clear()
        self.patch(reader, "before_open", None)
        counts, progress = self.scan(checkpoint_every=0)
        self.assertEqual(counts["resumes"], 2)
        self.assertEqual(read_records(self.log_path)[1], self.reference())

    def test_stop_takes_a_checkpoint_and_resumes(self):
        progress = ScanProgress()
        opened = []

        def stop_after_100(path):
            opened.append(path)
            if len(opened) == 100:
                progress.stop_requested = True  # as BackupJobs.stop does, from the reactor

        self.patch(reader, "before_open", stop_after_100)
        self.assertRaises(ScanStopped, self.scan, progress)  # default: 15 s checkpoints
        conn = sqlite3.connect(self.db_path)
        state = load_checkpoint(conn)
        conn.close()
        self.assertEqual(state["progress"]["files"], 100)
        self.patch(reader, "before_open", None)
        counts, progress = self.scan()
        self.assertEqual((counts["resumes"], counts["files"]), (1, 2001))
        self.assertEqual(read_records(self.log_path)[1], self.reference())

    def test_a_checkpoint_of_other_settings_is_not_resumed(self):
        self.kill_scan_at(b"d10/f000")
        self.header = LogHeader(snapshot="s1", kind="full", paths=(os.fsencode(self.tree),),
                                tags=("other",), started=1.0)
        counts, progress = self.scan()
        self.assertEqual(counts["resumes"], 0)
        self.assertEqual(progress.errors, [])
        self.assertEqual(read_records(self.log_path)[1], self.reference())
        # A scan from the start writes beside its log what to look at again.
        self.assertEqual(sorted(os.listdir(self.logs)), ["s1.log", "s1.log.revisit"])

    def test_a_damaged_checkpoint_starts_over(self):
        self.kill_scan_at(b"d10/f000")
        partial = [n for n in os.listdir(self.logs) if n.endswith(".tmp0")][0]
        with open(os.path.join(self.logs, partial), "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 50)
        counts, progress = self.scan()
        self.assertEqual(counts["resumes"], 0)
        self.assertEqual(read_records(self.log_path)[1], self.reference())


def load_checkpoint(conn):
    return checkpoints.load(conn, "s1")


class CommandTests(SynchronousTestCase):
    def fixture(self, pre=None, post=None, timeout=3600.0):
        f = Fixture(self)
        f.config = attr_evolve(f.config, backup=attr_evolve(f.config.backup, pre_command=pre,
                                                            post_command=post, command_timeout=timeout))
        f.jobs.backup = f.config.backup
        write(os.path.join(f.tree, "x"), b"x" * 300)
        return f

    def test_failing_pre_command_skips_the_scan(self):
        f = self.fixture(pre="echo starting; echo no database >&2; exit 3",
                         post="touch " + os.path.abspath(self.mktemp()))
        snapshot_id = f.jobs.request()
        state, errors, log_path = f.conn.execute(
            "SELECT state, errors, log_path FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        self.assertEqual(state, "failed")
        self.assertIsNone(log_path)
        import json

        self.assertEqual(json.loads(errors), [
            {"path": None, "reason": "pre_command failed (exit status 3): no database"}])

    def test_a_pre_command_past_its_time_fails_the_snapshot(self):
        f = self.fixture(pre="sleep 600", timeout=0.2)
        snapshot_id = f.jobs.request()
        state, errors = f.conn.execute(
            "SELECT state, errors FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        self.assertEqual(state, "failed")
        import json

        self.assertEqual(json.loads(errors), [{"path": None, "reason": (
            "pre_command did not finish within 0.2 s (its process group was killed)")}])

    def test_commands_run_around_the_scan(self):
        marks = os.path.abspath(self.mktemp())
        f = self.fixture(pre=f'echo "pre $GRIDBACKUP_SNAPSHOT" >> {marks}',
                         post=f'echo post >> {marks}; exit 1')
        snapshot_id = f.backup()
        with open(marks) as m:
            self.assertEqual(m.read(), f"pre {snapshot_id}\npost\n")
        import json

        errors = json.loads(f.conn.execute(
            "SELECT errors FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()[0])
        self.assertEqual(errors, [{"path": None, "reason": "post_command failed (exit status 1)"}])


def attr_evolve(obj, **changes):
    import attr

    return attr.evolve(obj, **changes)


class RecoverTests(SynchronousTestCase):
    def test_daemon_restart_resumes_the_interrupted_scan(self):
        import json

        f = Fixture(self)
        for d in range(6):
            for i in range(100):
                write(os.path.join(f.tree, f"d{d}", f"f{i:03d}"), b"%d.%d" % (d, i) * 100)
        real_scan = jobsmod.scan_to_log
        opened = []

        class Killed(Exception):
            pass

        def dies(path):
            opened.append(path)
            if len(opened) == 400:
                raise Killed("kill -9")

        def scan_often(scan, progress):
            return real_scan(attr_evolve(scan, checkpoint_every=0), progress)

        self.patch(jobsmod, "scan_to_log", scan_often)
        self.patch(reader, "before_open", dies)
        snapshot_id = f.jobs.request()
        self.assertEqual(len(self.flushLoggedErrors(Killed)), 1)
        # What a kill -9 leaves: the row still says scanning.
        f.conn.execute("UPDATE snapshots SET state = 'scanning' WHERE id = ?", (snapshot_id,))
        queued_before = f.conn.execute(
            "SELECT count(*) FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,)).fetchone()[0]
        self.assertGreater(queued_before, 200)  # those of the first checkpoint at least

        self.patch(reader, "before_open", None)
        jobs = BackupJobs(ThreadlessReactor(), f.conn, StateDir(f.state), InlinePool(), f.config.backup,
                          f.config.hostname, f.scanned.append, Waiters())
        self.assertEqual(jobs.recover_interrupted(), [snapshot_id])
        self.assertEqual(f.conn.execute(
            "SELECT count(*) FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,)).fetchone()[0],
            queued_before)
        jobs.kick()
        state, files, errors, log_path = f.conn.execute(
            "SELECT state, files, errors, log_path FROM snapshots WHERE id = ?",
            (snapshot_id,)).fetchone()
        self.assertEqual((state, files), ("uploading", 600))
        self.assertIn("resumed", json.loads(errors)[-1]["reason"])
        self.assertEqual(read_records(log_path)[1], full_scan(self, [f.tree]))
        distinct = {b"%d.%d" % (d, i) * 100 for d in range(6) for i in range(100)}
        self.assertEqual(f.conn.execute(
            "SELECT count(*) FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,)).fetchone()[0],
            len(distinct))


class DaemonIncrementalTests(TestCase):
    """The whole daemon on the shared real grid: an incremental snapshot restores whole."""

    timeout = 240

    async def test_restore_of_an_incremental_snapshot(self):
        import shutil

        from twisted.internet import reactor

        from gridbackupd.config import parse_config
        from gridbackupd.service import from_config
        from tests.support.daemoncase import api_client, write_config
        from tests.support.sharedgrid import shared_node_url
        from tests.support.trees import make_tree, tree_listing

        node_url = await shared_node_url()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        tree = os.path.join(base, "data")
        make_tree(tree, files=40)
        config = parse_config(write_config(base, node_url, [tree]))
        daemon = from_config(reactor, config)
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        api = api_client(self, daemon)

        async def backup():
            code, body = await api.call("POST", "/v1/backups")
            self.assertEqual(code, 202, body)
            self.assertEqual(await daemon.wait_for_snapshot(body["id"]), "complete")
            return body["id"]

        first = await backup()
        with open(os.path.join(tree, "docs", "letter.txt"), "wb") as f:
            f.write(b"a changed letter\n" * 40)
        with open(os.path.join(tree, "new.txt"), "wb") as f:
            f.write(b"new\n" * 100)
        shutil.rmtree(os.path.join(tree, "src"))
        second = await backup()
        code, listing = await api.call("GET", "/v1/snapshots")
        kinds = {s["id"]: s["kind"] for s in listing["snapshots"]}
        self.assertEqual((kinds[first], kinds[second]), ("full", "incremental"))

        target = os.path.join(base, "restored")
        code, body = await api.call("POST", "/v1/restores", {"snapshot": "latest", "target": target})
        self.assertEqual(code, 202, body)
        self.assertEqual(await daemon.wait_for_restore(body["id"]), "done")
        self.assertEqual(tree_listing(os.path.join(target, tree.lstrip("/"))), tree_listing(tree))
