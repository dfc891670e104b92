"""
The restore engine against a fake grid: request options, cancelling,
metadata, and snapshot data that tries to do harm.

Each test builds its backup set by hand (packs in a FakeTahoe, rows in a
fresh database, a log written with the log writer or, for hostile cases,
byte by byte), so that what the restorer is given is exactly what the test
says.
"""

import hashlib
import json
import os
import stat
import time

import zstandard
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from gridbackupd.api.errors import answer
from gridbackupd.errors import Conflict, NotFound, TahoeUnavailable, Unavailable
from gridbackupd.format.logpaths import path_key
from gridbackupd.format.logwriter import write_log
from gridbackupd.format.pack import PackedBlob, encode_blob, encode_trailer
from gridbackupd.model import CHARDEV, DIR, FIFO, FILE, HARDLINK, SOCKET, SYMLINK, Entry, LogHeader
from gridbackupd.restore import engine as restore
from gridbackupd.restore.requests import Restorer
from gridbackupd.state import db as dbmod
from gridbackupd.state.snapshots import parse_time
from gridbackupd.testing.fake_tahoe import fake_client

T0 = 1_700_000_000_000_000_000


def sha(data):
    return hashlib.sha256(data).hexdigest()


class BackupSet:
    """A hand-made backup set: packs on a fake grid, rows in a database, logs on disk."""

    def __init__(self, testcase):
        self.base = os.path.abspath(testcase.mktemp())
        os.makedirs(self.base)
        self.conn = dbmod.open_database(os.path.join(self.base, "state.sqlite"))
        testcase.addCleanup(self.conn.close)
        self.client, self.fake = fake_client()
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-restore")
        self.pool.start()
        testcase.addCleanup(self.pool.stop)
        self.packs = []

    def add_pack(self, blobs):
        """Store ``blobs`` (bytes each) as one pack; return its cap."""
        body = b""
        packed = []
        for data in blobs:
            stored, compression = encode_blob(data)
            packed.append(PackedBlob(sha(data), len(body), len(stored), len(data), compression))
            body += stored
        pack = body + encode_trailer(packed)
        cap = self.fake.add_file(pack)
        name = "pack-" + sha(pack)
        with dbmod.transaction(self.conn):
            pack_id = self.conn.execute(
                "INSERT INTO packs (name, cap, size, commit_name) VALUES (?, ?, ?, 'c')",
                (name, cap, len(pack)),
            ).lastrowid
            for b in packed:
                self.conn.execute(
                    "INSERT OR IGNORE INTO blobs (hash, size, state, pack_id, offset, length, "
                    "compression) VALUES (?, ?, 'committed', ?, ?, ?, ?)",
                    (b.hash, b.size, pack_id, b.offset, b.length, b.compression),
                )
        self.packs.append((cap, packed))
        return cap

    def add_inline(self, data):
        """A very small blob that the index holds inline (no pack)."""
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO blobs (hash, size, state, inline_data) VALUES (?, ?, 'committed', ?)",
                (sha(data), len(data), data),
            )

    def add_snapshot(self, snapshot_id, entries, started=None, raw_log=None, complete=True):
        log_path = os.path.join(self.base, snapshot_id + ".log")
        if raw_log is not None:
            with open(log_path, "wb") as f:
                f.write(raw_log)
        else:
            header = LogHeader(snapshot=snapshot_id, kind="full", host="h", paths=(b"/",),
                               started=started or time.time())
            with open(log_path, "wb") as f:
                write_log(f, header, sorted(entries, key=lambda e: path_key(e.path)))
        with dbmod.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO snapshots (id, state, kind, host, requested, started, log_path, complete) "
                "VALUES (?, ?, 'full', 'h', ?, ?, ?, ?)",
                (snapshot_id, "complete" if complete else "uploading", started or time.time(),
                 started or time.time(), log_path, int(complete)),
            )

    def restorer(self, client=None):
        client = client or self.client
        return Restorer(reactor, self.conn, lambda: client, self.pool, os.path.join(self.base, "tmp"))


def file_entry(path, data, mode=0o644, mtime_ns=T0, blob_sizes=None, **kw):
    """A file entry whose content is one blob, or blobs cut at ``blob_sizes``."""
    if len(data) <= 16 and blob_sizes is None:
        return Entry(path=path, kind=FILE, mode=stat.S_IFREG | mode, size=len(data),
                     mtime_ns=mtime_ns, inline=data, sha256=sha(data), **kw)
    sizes = blob_sizes or [len(data)]
    blobs, offset = [], 0
    for n in sizes:
        blobs.append((sha(data[offset:offset + n]), n))
        offset += n
    return Entry(path=path, kind=FILE, mode=stat.S_IFREG | mode, size=len(data),
                 mtime_ns=mtime_ns, blobs=tuple(blobs), sha256=sha(data), **kw)


def dir_entry(path, mode=0o755, mtime_ns=T0):
    return Entry(path=path, kind=DIR, mode=stat.S_IFDIR | mode, mtime_ns=mtime_ns)


def raw_log(lines):
    """A log made of the given JSON lines, compressed as the format says (no checks)."""
    text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(text)


def header_line(snapshot_id):
    return {"format": "gridbackup-log", "version": 1, "snapshot": snapshot_id, "kind": "full",
            "parent": None, "host": "h", "paths": ["/"], "tags": [], "started": 1.0, "finished": 2.0}


def entry_line(path, kind="file", **extra):
    line = {"t": "e", "path": path, "kind": kind, "mode": 0o100644 if kind == "file" else 0o40755,
            "uid": 0, "gid": 0, "user": None, "group": None, "size": 0, "mtime_ns": 0,
            "ctime_ns": 0, "ino": 0, "dev": 0, "rdev": 0}
    line.update(extra)
    return line


class RestoreTests(TestCase):
    timeout = 60

    def setUp(self):
        self.set = BackupSet(self)
        self.target = os.path.join(self.set.base, "target")
        self.outside = os.path.join(self.set.base, "outside")
        os.makedirs(self.outside)

    def restorer(self, client=None):
        restorer = self.set.restorer(client)
        self.addCleanup(restorer.stop)
        return restorer

    def out(self, path):
        return os.path.join(os.fsencode(self.target), path.lstrip(b"/"))

    async def restore(self, restorer=None, snapshot="s1", paths=(), **options):
        restorer = restorer or self.restorer()
        restore_id = restorer.request(snapshot, list(paths), self.target, **options)
        state = await restorer.wait(restore_id)
        return state, restorer.status(restore_id)

    def standard_set(self):
        big = os.urandom(300_000)
        text = b"hello world\n" * 5000
        shared = os.urandom(1000)
        self.set.add_pack([big[:200_000], big[200_000:], text, shared])
        entries = [
            dir_entry(b"/"),
            dir_entry(b"/home", mode=0o750, mtime_ns=T0 + 5),
            dir_entry(b"/home/empty", mode=0o700, mtime_ns=T0 + 7),
            file_entry(b"/home/big", big, blob_sizes=[200_000, 100_000], mode=0o600),
            file_entry(b"/home/text", text, mode=0o4755,
                       xattrs=((b"user.comment", b"kept"), (b"user.empty", b""))),
            file_entry(b"/home/shared-1", shared),
            file_entry(b"/home/shared-2", shared, mtime_ns=T0 + 11),
            file_entry(b"/home/tiny", b"tiny\n"),
            file_entry(b"/home/zero", b""),
            file_entry(b"/home/\xffname", b"latin"),
            Entry(path=b"/home/link", kind=SYMLINK, mode=stat.S_IFLNK | 0o777, target=b"text",
                  mtime_ns=T0 + 3),
            Entry(path=b"/home/text-again", kind=HARDLINK, mode=stat.S_IFREG | 0o4755,
                  target=b"/home/text"),
            Entry(path=b"/home/fifo", kind=FIFO, mode=stat.S_IFIFO | 0o640, mtime_ns=T0 + 9),
            Entry(path=b"/home/socket", kind=SOCKET, mode=stat.S_IFSOCK | 0o755),
        ]
        if os.geteuid() == 0:
            entries.append(Entry(path=b"/home/null", kind=CHARDEV, mode=stat.S_IFCHR | 0o666,
                                 rdev=os.makedev(1, 3), mtime_ns=T0 + 13))
        self.set.add_snapshot("s1", entries)
        return {"big": big, "text": text, "shared": shared}

    # -- round trips and options ----------------------------------------------

    async def test_round_trip_with_metadata(self):
        data = self.standard_set()
        state, status = await self.restore(verify=True)
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(status["files_done"], status["files_total"])
        self.assertEqual(status["files_total"], 7)
        self.assertEqual(status["files_verified"], 7)
        self.assertEqual(status["bytes_done"], status["bytes_total"])
        for name, content in ((b"big", data["big"]), (b"text", data["text"]),
                              (b"shared-2", data["shared"]), (b"tiny", b"tiny\n"), (b"zero", b""),
                              (b"\xffname", b"latin")):
            with open(self.out(b"/home/" + name), "rb") as f:
                self.assertEqual(f.read(), content, name)
        st = os.lstat(self.out(b"/home/text"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o4755)  # set-uid survives (chmod after chown)
        self.assertEqual(st.st_mtime_ns, T0)
        self.assertEqual(os.getxattr(self.out(b"/home/text"), b"user.comment"), b"kept")
        self.assertEqual(os.getxattr(self.out(b"/home/text"), b"user.empty"), b"")
        self.assertEqual(os.lstat(self.out(b"/home/text-again")).st_ino, st.st_ino)
        self.assertEqual(os.lstat(self.out(b"/home/shared-2")).st_mtime_ns, T0 + 11)
        self.assertEqual(stat.S_IMODE(os.lstat(self.out(b"/home/big")).st_mode), 0o600)
        link = os.lstat(self.out(b"/home/link"))
        self.assertTrue(stat.S_ISLNK(link.st_mode))
        self.assertEqual(os.readlink(self.out(b"/home/link")), b"text")
        self.assertEqual(link.st_mtime_ns, T0 + 3)
        fifo = os.lstat(self.out(b"/home/fifo"))
        self.assertTrue(stat.S_ISFIFO(fifo.st_mode))
        self.assertEqual((stat.S_IMODE(fifo.st_mode), fifo.st_mtime_ns), (0o640, T0 + 9))
        self.assertFalse(os.path.lexists(self.out(b"/home/socket")))
        if os.geteuid() == 0:
            null = os.lstat(self.out(b"/home/null"))
            self.assertTrue(stat.S_ISCHR(null.st_mode))
            self.assertEqual(null.st_rdev, os.makedev(1, 3))
        # Directory metadata is set after the contents, empty directories too.
        home = os.lstat(self.out(b"/home"))
        self.assertEqual((stat.S_IMODE(home.st_mode), home.st_mtime_ns), (0o750, T0 + 5))
        empty = os.lstat(self.out(b"/home/empty"))
        self.assertEqual((stat.S_IMODE(empty.st_mode), empty.st_mtime_ns), (0o700, T0 + 7))
        self.assertEqual(os.listdir(self.out(b"/home/empty")), [])
        # One ranged GET for the one pack, whatever the number of files.
        gets = [r for r in self.set.fake.requests if r.method == "GET" and "range" in r.headers]
        self.assertEqual(len(gets), 1)

    async def test_one_path(self):
        data = self.standard_set()
        state, status = await self.restore(paths=["/home/shared-1"])
        self.assertEqual((state, status["files_total"], status["files_done"]), ("done", 1, 1))
        self.assertEqual(os.listdir(self.out(b"/home")), [b"shared-1"])
        # The directory on the way has the snapshot's mode and time.
        home = os.lstat(self.out(b"/home"))
        self.assertEqual((stat.S_IMODE(home.st_mode), home.st_mtime_ns), (0o750, T0 + 5))
        with open(self.out(b"/home/shared-1"), "rb") as f:
            self.assertEqual(f.read(), data["shared"])

    async def test_paths_not_in_the_snapshot_are_errors(self):
        """The engine's own check (a log fetched from the grid is not checked by the API first)."""
        self.standard_set()
        state, status = await self.restore(paths=["/home/shared-1", "/home/typo", "/elsewhere"])
        self.assertEqual((state, status["files_done"]), ("failed", 1))
        self.assertEqual([(e["path"], e["reason"]) for e in status["errors"]],
                         [("/home/typo", "not in this snapshot"), ("/elsewhere", "not in this snapshot")])

    async def test_hard_link_whose_target_is_not_restored(self):
        self.standard_set()
        state, status = await self.restore(paths=["/home/text-again"])
        self.assertEqual(state, "failed")
        [error] = status["errors"]
        self.assertEqual(error["path"], "/home/text-again")
        self.assertIn("/home/text, which this restore does not include", error["reason"])
        state, status = await self.restore(paths=["/home/text-again", "/home/text"])
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(os.lstat(self.out(b"/home/text-again")).st_ino, os.lstat(self.out(b"/home/text")).st_ino)

    async def test_dry_run_writes_nothing(self):
        self.standard_set()
        state, status = await self.restore(dry_run=True)
        self.assertEqual(state, "done", status["errors"])
        self.assertFalse(os.path.exists(self.target))
        plan = status["plan"]
        self.assertEqual((plan["files"], plan["packs"], plan["gets"], plan["inline_files"]), (7, 1, 1, 3))
        self.assertEqual(plan["bytes"], status["bytes_total"])
        self.assertGreater(plan["fetch_bytes"], 0)
        self.assertEqual(plan["entries"]["dir"], 3)
        self.assertTrue(status["dry_run"])
        self.assertEqual(status["files_done"], 0)
        self.assertFalse([r for r in self.set.fake.requests if "range" in r.headers])

    async def test_existing_files_kept_and_reported(self):
        self.standard_set()
        os.makedirs(self.out(b"/home"))
        with open(self.out(b"/home/tiny"), "wb") as f:
            f.write(b"mine")
        state, status = await self.restore()
        self.assertEqual(state, "failed")
        self.assertEqual([(e["path"], e["reason"]) for e in status["errors"]],
                         [("/home/tiny", "exists in the target (overwrite is off)")])
        with open(self.out(b"/home/tiny"), "rb") as f:
            self.assertEqual(f.read(), b"mine")
        state, status = await self.restore(overwrite=True)
        self.assertEqual(state, "done", status["errors"])
        with open(self.out(b"/home/tiny"), "rb") as f:
            self.assertEqual(f.read(), b"tiny\n")
        # Run again without overwrite (a restore resumed after a restart):
        # files already there as the snapshot has them are not errors.
        state, status = await self.restore()
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(status["files_done"], status["files_total"])

    async def test_files_and_directories_synced_before_done(self):
        """Every restored file is fsynced, and every directory after the renames into it, before the state is done."""
        self.standard_set()
        real_fsync = os.fsync
        synced = []  # (st_dev, st_ino) in call order

        def fsync(fd):
            st = os.fstat(fd)
            synced.append((st.st_dev, st.st_ino))
            return real_fsync(fd)

        self.patch(os, "fsync", fsync)
        restorer = self.restorer()
        restore_id = restorer.request("s1", [], self.target)
        at_done = []
        d = restorer.wait(restore_id)
        d.addCallback(lambda state: at_done.append((state, list(synced))) or state)
        await d
        [(state, calls)] = at_done
        self.assertEqual(state, "done", restorer.status(restore_id)["errors"])

        def last(path):
            st = os.lstat(path)
            key = (st.st_dev, st.st_ino)
            self.assertIn(key, calls, f"{path!r} was not synced")
            return max(i for i, k in enumerate(calls) if k == key)

        files = 0
        for top, dirs, names in os.walk(os.fsencode(self.target)):
            synced_dir = last(top)
            for name in names:
                path = os.path.join(top, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    files += 1
                    self.assertLess(last(path), synced_dir, f"{path!r} synced after its directory")
            for name in dirs:
                self.assertLess(last(os.path.join(top, name)), synced_dir)
        self.assertEqual(files, 8)  # 7 files and a hard link to one of them
        last(os.path.dirname(self.target))  # the target was made by the restore: its parent too

    async def test_resumed_restore_checks_content_not_just_size_and_time(self):
        """A file in place with the right size and time but other bytes (torn by a crash) is not taken as restored."""
        data = self.standard_set()
        state, status = await self.restore()
        self.assertEqual(state, "done", status["errors"])
        gets_before = len([r for r in self.set.fake.requests if "range" in r.headers])
        # Again: everything is in place, checked by content; nothing is fetched.
        state, status = await self.restore()
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(status["files_done"], status["files_total"])
        self.assertEqual(len([r for r in self.set.fake.requests if "range" in r.headers]), gets_before)
        # A torn file: same size, same mtime, zeros where its content was.
        big = self.out(b"/home/big")
        with open(big, "r+b") as f:
            f.seek(100_000)
            f.write(b"\0" * 4096)
        os.utime(big, ns=(T0, T0))
        state, status = await self.restore()
        self.assertEqual(state, "failed")
        self.assertEqual([(e["path"], e["reason"]) for e in status["errors"]],
                         [("/home/big", "exists in the target (overwrite is off)")])
        with open(big, "rb") as f:
            self.assertNotEqual(f.read(), data["big"])  # kept: overwrite is off
        state, status = await self.restore(overwrite=True)
        self.assertEqual(state, "done", status["errors"])
        with open(big, "rb") as f:
            self.assertEqual(f.read(), data["big"])

    async def test_as_of(self):
        self.set.add_snapshot("s1", [file_entry(b"/f", b"one")], started=parse_time("2026-01-01T00:00:00Z"))
        self.set.add_snapshot("s2", [file_entry(b"/f", b"two")], started=parse_time("2026-02-01T00:00:00Z"))
        self.set.add_snapshot("s3", [file_entry(b"/f", b"three")], complete=False,
                              started=parse_time("2026-03-01T00:00:00Z"))
        restorer = self.restorer()
        self.assertEqual(restorer.resolve_snapshot({"as_of": "2026-01-15T00:00:00Z"})[0], "s1")
        self.assertEqual(restorer.resolve_snapshot({"as_of": "2026-02-01T00:00:00Z"})[0], "s2")
        self.assertEqual(restorer.resolve_snapshot({"as_of": "2027-01-01T00:00:00+02:00"})[0], "s2")
        self.assertEqual(restorer.resolve_snapshot("latest")[0], "s2")
        # 'latest' is this host's newest; another host's only when this one has none.
        self.set.add_snapshot("s4", [file_entry(b"/f", b"four")], started=parse_time("2026-04-01T00:00:00Z"))
        with dbmod.transaction(self.set.conn):
            self.set.conn.execute("UPDATE snapshots SET host = 'other' WHERE id = 's4'")
        restorer.hostname = "h"
        self.assertEqual(restorer.resolve_snapshot("latest")[0], "s2")
        restorer.hostname = "new-machine"
        self.assertEqual(restorer.resolve_snapshot("latest")[0], "s4")
        e = self.assertRaises(NotFound, restorer.resolve_snapshot, {"as_of": "2025-12-31T00:00:00Z"})
        self.assertEqual((answer(e).status, e.code), (404, "unknown_snapshot"))
        e = self.assertRaises(NotFound, restorer.resolve_snapshot, "nope")
        self.assertEqual((answer(e).status, e.code), (404, "unknown_snapshot"))
        state, status = await self.restore(restorer, snapshot={"as_of": "2026-01-20T10:00:00Z"})
        self.assertEqual((state, status["snapshot"]), ("done", "s1"))
        with open(self.out(b"/f"), "rb") as f:
            self.assertEqual(f.read(), b"one")

    async def test_pending_content(self):
        uploaded = os.urandom(5000)
        self.set.add_pack([uploaded])
        self.set.add_snapshot("s1", [file_entry(b"/up", uploaded), file_entry(b"/not-yet", os.urandom(4000))],
                              complete=False)
        state, status = await self.restore()
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual(status["pending"], [{"path": "/not-yet", "reason": "content not uploaded yet"}])
        self.assertEqual(status["files_done"], 1)
        self.assertTrue(os.path.exists(self.out(b"/up")))
        self.assertFalse(os.path.exists(self.out(b"/not-yet")))

    async def test_index_inline_blobs(self):
        small, big = os.urandom(900), os.urandom(70_000)
        self.set.add_inline(small)
        self.set.add_pack([big])
        self.set.add_snapshot("s1", [
            file_entry(b"/small", small),
            file_entry(b"/mixed", small + big + small, blob_sizes=[900, 70_000, 900]),
        ])
        state, status = await self.restore(verify=True)
        self.assertEqual(state, "done", status["errors"])
        self.assertEqual((status["files_done"], status["files_verified"]), (2, 2))
        with open(self.out(b"/mixed"), "rb") as f:
            self.assertEqual(f.read(), small + big + small)
        with open(self.out(b"/small"), "rb") as f:
            self.assertEqual(f.read(), small)

    # -- cancelling -------------------------------------------------------------

    async def test_cancel_queued(self):
        self.standard_set()
        restorer = self.restorer()
        first = restorer.request("s1", [], self.target)
        second = restorer.request("s1", [], os.path.join(self.set.base, "second"))
        self.assertEqual(restorer.status(second)["state"], "queued")
        self.assertEqual(restorer.cancel(second)["state"], "cancelled")
        self.assertEqual(await restorer.wait(second), "cancelled")
        self.assertEqual(await restorer.wait(first), "done")
        self.assertFalse(os.path.exists(os.path.join(self.set.base, "second")))
        self.assertEqual(restorer.cancel(second)["state"], "cancelled")  # again: a no-op
        e = self.assertRaises(Conflict, restorer.cancel, first)
        self.assertEqual((answer(e).status, e.code), (409, "restore_finished"))
        e = self.assertRaises(NotFound, restorer.cancel, "r-nope")
        self.assertEqual((answer(e).status, e.code), (404, "unknown_restore"))

    async def test_cancel_running_between_spans(self):
        one, two = os.urandom(50_000), os.urandom(60_000)
        self.set.add_pack([one])
        self.set.add_pack([two])
        self.set.add_snapshot("s1", [file_entry(b"/one", one), file_entry(b"/two", two)])
        self.patch(restore, "PARALLEL_SPANS", 1)
        gate = Deferred()
        client = self.set.client

        class Gated:
            calls = 0

            async def download(self, cap, offset=None, length=None):
                Gated.calls += 1
                if Gated.calls == 1:
                    await gate
                return await client.download(cap, offset, length)

        restorer = self.restorer(Gated())
        restore_id = restorer.request("s1", [], self.target)
        while Gated.calls == 0:
            await deferLater(0.01)
        status = restorer.cancel(restore_id)
        self.assertEqual((status["state"], status["cancel_requested"]), ("running", True))
        gate.callback(None)
        self.assertEqual(await restorer.wait(restore_id), "cancelled")
        status = restorer.status(restore_id)
        self.assertEqual(status["state"], "cancelled")
        self.assertEqual(Gated.calls, 1)  # the second span was never fetched
        self.assertEqual(status["files_done"], 1)
        # The file of the fetched span is whole; nothing else, no temporary file.
        self.assertEqual(len(os.listdir(self.target)), 1)

    # -- hostile snapshot data ----------------------------------------------------

    async def test_hostile_paths_refused(self):
        for n, bad in enumerate(["/a/../../outside/x", "relative", "/a/\u0000b", "/a//b", "/./x"]):
            log = raw_log([header_line(f"bad{n}"), entry_line("/ok", inline="", sha256=sha(b"")),
                           entry_line(bad, inline="", sha256=sha(b"")),
                           {"t": "end", "records": 2}])
            self.set.add_snapshot(f"bad{n}", [], raw_log=log)
            state, status = await self.restore(snapshot=f"bad{n}")
            self.assertEqual(state, "failed", bad)
            self.assertEqual(len(status["errors"]), 1)
            self.assertIn("line 3", status["errors"][0]["reason"])
        self.assertEqual(os.listdir(self.outside), [])
        self.assertFalse(os.path.exists(os.path.join(self.set.base, "x")))

    async def test_symlink_to_root_then_file_under_it(self):
        payload = os.fsencode(self.outside).lstrip(b"/") + b"/payload"
        self.set.add_snapshot("s1", [
            Entry(path=b"/evil", kind=SYMLINK, target=b"/"),
            file_entry(b"/evil/" + payload, b"owned"),
            Entry(path=b"/rel", kind=SYMLINK, target=b"../../../../../../.."),
            file_entry(b"/rel/" + payload, b"owned"),
        ])
        state, status = await self.restore(overwrite=True)
        self.assertEqual(os.listdir(self.outside), [])
        # Neither symlink leads out of the target: each path holds what the
        # first object written there made, a real directory.
        for name in (b"/evil", b"/rel"):
            self.assertTrue(stat.S_ISDIR(os.lstat(self.out(name)).st_mode))
        self.assertEqual(state, "failed")
        self.assertEqual(sorted(e["path"] for e in status["errors"]), ["/evil", "/rel"])

    async def test_symlink_already_in_target(self):
        self.set.add_snapshot("s1", [dir_entry(b"/etc"), file_entry(b"/etc/passwd", b"root::0:0")])
        os.makedirs(self.target)
        os.symlink(self.outside, os.path.join(self.target, "etc"))
        state, status = await self.restore(overwrite=True)
        self.assertEqual(state, "failed")
        self.assertEqual(os.listdir(self.outside), [])
        self.assertTrue(any("not a directory" in e["reason"] for e in status["errors"]), status["errors"])

    async def test_corrupt_pack_fails_that_file_only(self):
        good, bad = os.urandom(20_000), os.urandom(30_000)
        cap = self.set.add_pack([good, bad])
        self.set.add_snapshot("s1", [file_entry(b"/good", good), file_entry(b"/bad", bad)])
        stored = bytearray(self.set.fake.files[cap])
        stored[len(good) + 100] ^= 0xFF  # one byte of the second blob
        self.set.fake.files[cap] = bytes(stored)
        state, status = await self.restore()
        self.assertEqual(state, "failed")
        [error] = status["errors"]
        self.assertEqual(error["path"], "/bad")
        self.assertIn("does not match its SHA-256", error["reason"])
        self.assertEqual(status["files_done"], 1)
        with open(self.out(b"/good"), "rb") as f:
            self.assertEqual(f.read(), good)
        self.assertEqual(os.listdir(self.target), [b"good"] if isinstance(self.target, bytes) else ["good"])

    def test_verify_catches_a_changed_file(self):
        data = os.urandom(10_000)
        entry = file_entry(b"/f", data)
        from gridbackupd.restore.targetfs import TargetWriter, VerifyFailed
        writer = TargetWriter(self.target)
        self.addCleanup(writer.close)
        out = writer.open_file(entry)
        out.write(0, data[:-1] + bytes([data[-1] ^ 0xFF]))  # "!" would be no change 1 time in 256
        out.commit()
        e = self.assertRaises(VerifyFailed, writer.verify_file, entry)
        self.assertIn("SHA-256", str(e))
        out = writer.open_file(Entry(path=b"/g", kind=FILE, size=3))
        out.write(0, b"abc")
        out.commit()
        writer.verify_file(Entry(path=b"/g", kind=FILE, size=3, inline=b"abc"))
        self.assertRaises(VerifyFailed, writer.verify_file, Entry(path=b"/g", kind=FILE, size=2, inline=b"ab"))


def deferLater(seconds):
    from twisted.internet.task import deferLater as later
    return later(reactor, seconds, lambda: None)


def metadata_listing(root):
    """Everything a restore must bring back, per entry under ``root``: kind, mode,
    owner, mtime, size, content hash, xattrs, link target, hard-link group, sparseness."""
    result = []
    broot = os.fsencode(root)
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, broot)
            row = [rel, stat.S_IFMT(st.st_mode), st.st_uid, st.st_gid]
            if stat.S_ISLNK(st.st_mode):
                row.append(os.readlink(path))
            else:
                row += [stat.S_IMODE(st.st_mode), st.st_mtime_ns]
                row.append(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in os.listxattr(path, follow_symlinks=False)))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    row += [st.st_size, sha(f.read()), st.st_blocks * 512 < st.st_size // 2]
                if st.st_nlink > 1:
                    row.append(inodes.setdefault(st.st_ino, rel))
            if stat.S_ISCHR(st.st_mode):
                row.append(st.st_rdev)
            result.append(tuple(row))
    return sorted(result, key=repr)


class _GridAway:
    """A client getter that says the grid is not connected yet (as the daemon does at start) until ``back``."""

    def __init__(self, client):
        self.client = client
        self.back = False
        self.refused = 0

    def __call__(self):
        if not self.back:
            self.refused += 1
            raise Unavailable("grid_unavailable", "the grid is not connected yet")
        return self.client


class _NodeDown:
    """A client whose downloads fail as a restarting client node does (connection refused), ``times`` times."""

    def __init__(self, client, times):
        self.client = client
        self.times = times

    def download(self, cap, offset=None, length=None):
        if self.times > 0:
            self.times -= 1
            raise TahoeUnavailable("download", detail="connection refused", cap=cap)
        return self.client.download(cap, offset, length)


class WaitForGridTests(TestCase):
    """A restore asked for while the grid is away waits for it, says so, and gives up with one line."""

    timeout = 60

    def setUp(self):
        from gridbackupd.grid.retry import Backoff
        from gridbackupd.restore import gridwait

        self.patch(gridwait, "RETRY", Backoff(base=0.01, cap=0.05))
        self.set = BackupSet(self)
        self.target = os.path.join(self.set.base, "target")
        self.data = os.urandom(50_000)
        self.set.add_pack([self.data])
        self.set.add_snapshot("s1", [dir_entry(b"/"), file_entry(b"/f", self.data)])

    def restorer(self, getter, grid_wait=30.0):
        restorer = Restorer(reactor, self.set.conn, getter, self.set.pool,
                            os.path.join(self.set.base, "tmp"), grid_wait=grid_wait)
        self.addCleanup(restorer.stop)
        return restorer

    async def until(self, predicate):
        for _ in range(500):
            if predicate():
                return
            await deferLater(0.01)
        self.fail("condition not reached")

    async def test_waits_while_the_grid_is_connecting(self):
        getter = _GridAway(self.set.client)
        restorer = self.restorer(getter)
        before = time.time()
        restore_id = restorer.request("s1", [], self.target)
        await self.until(lambda: getter.refused >= 2)
        status = restorer.status(restore_id)
        self.assertEqual((status["state"], status["waiting_for"]), ("running", "grid"))
        self.assertGreaterEqual(status["waiting_since"], before)
        self.assertEqual(status["errors"], [])
        getter.back = True
        self.assertEqual(await restorer.wait(restore_id), "done", restorer.status(restore_id)["errors"])
        status = restorer.status(restore_id)
        self.assertEqual((status["waiting_for"], status["waiting_since"]), (None, None))
        with open(os.path.join(self.target, "f"), "rb") as f:
            self.assertEqual(f.read(), self.data)

    async def test_gives_up_after_the_time_out_with_one_line(self):
        restorer = self.restorer(_GridAway(self.set.client), grid_wait=0.3)
        restore_id = restorer.request("s1", [], self.target)
        self.assertEqual(await restorer.wait(restore_id), "failed")
        status = restorer.status(restore_id)
        [error] = status["errors"]
        self.assertEqual(error, {"path": None, "reason": "gave up after waiting 0.3 s for the grid "
                                 "([tahoe] grid_wait): the grid is not connected yet"})
        self.assertEqual(status["waiting_for"], None)

    async def test_waits_for_a_client_node_that_restarts(self):
        client = _NodeDown(self.set.client, times=3)
        restorer = self.restorer(lambda: client)
        restore_id = restorer.request("s1", [], self.target)
        self.assertEqual(await restorer.wait(restore_id), "done", restorer.status(restore_id)["errors"])
        self.assertEqual(client.times, 0)

    async def test_cancel_while_waiting(self):
        getter = _GridAway(self.set.client)
        restorer = self.restorer(getter)
        restore_id = restorer.request("s1", [], self.target)
        await self.until(lambda: getter.refused >= 1)
        restorer.cancel(restore_id)
        self.assertEqual(await restorer.wait(restore_id), "cancelled")


class RealGridRoundTripTests(TestCase):
    """A tree with every kind of metadata, backed up by a whole daemon and restored."""

    timeout = 240

    async def test_metadata_round_trip(self):
        from gridbackupd.config import parse_config
        from gridbackupd.service import from_config
        from tests.support.daemoncase import api_client, write_config
        from tests.support.sharedgrid import shared_node_url

        base = os.path.abspath(self.mktemp())
        tree = os.path.join(base, "data")
        os.makedirs(os.path.join(tree, "empty-dir"))
        os.makedirs(os.path.join(tree, "sub"))
        with open(os.path.join(tree, "sub", "attrs"), "wb") as f:
            f.write(os.urandom(3000))
        os.setxattr(os.path.join(tree, "sub", "attrs"), "user.comment", b"restored too")
        os.link(os.path.join(tree, "sub", "attrs"), os.path.join(tree, "hard-link"))
        with open(os.path.join(tree, "sparse"), "wb") as f:
            f.write(b"head")
            f.seek(8 * 1024 * 1024)
            f.write(b"tail")
        os.mkfifo(os.path.join(tree, "fifo"), 0o620)
        with open(os.path.join(tree, "setuid"), "wb") as f:
            f.write(b"#!/bin/sh\n")
        os.chmod(os.path.join(tree, "setuid"), 0o4755)
        os.symlink("/etc/passwd", os.path.join(tree, "abs-link"))
        root = os.geteuid() == 0
        if root:
            os.chown(os.path.join(tree, "setuid"), 4321, 8765)  # owners without names: by number
            os.lchown(os.path.join(tree, "abs-link"), 4321, 8765)
            os.mknod(os.path.join(tree, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        for dirpath, dirnames, filenames in os.walk(tree, topdown=False):
            for name in filenames + dirnames:
                os.utime(os.path.join(dirpath, name), ns=(T0, T0 + len(name)), follow_symlinks=False)
        os.utime(tree, ns=(T0, T0))

        daemon = from_config(reactor, parse_config(write_config(base, await shared_node_url(), [tree])))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        api = api_client(self, daemon)
        code, body = await api.call("POST", "/v1/backups")
        self.assertEqual(await daemon.wait_for_snapshot(body["id"]), "complete")

        target = os.path.join(base, "restored")
        code, body = await api.call("POST", "/v1/restores",
                                    {"snapshot": "latest", "target": target, "verify": True})
        self.assertEqual(code, 202, body)
        self.assertEqual(await daemon.wait_for_restore(body["id"]), "done")
        code, status = await api.call("GET", f"/v1/restores/{body['id']}")
        self.assertEqual(status["errors"], [])
        self.assertEqual(status["files_verified"], status["files_done"])
        restored = os.path.join(target, tree.lstrip("/"))
        self.assertEqual(metadata_listing(restored), metadata_listing(tree))

        # Bad requests: an unknown snapshot is a 404, a malformed one a 400;
        # a dry run writes nothing; DELETE of a finished restore is a 409.
        code, doc = await api.call("POST", "/v1/restores", {"snapshot": {"as_of": "1999-01-01T00:00:00Z"},
                                                            "target": target})
        self.assertEqual(code, 404, doc)
        for bad in ({"snapshot": {"as_of": "soon"}, "target": target},
                    {"snapshot": 7, "target": target},
                    {"target": target, "dry_run": "yes"}):
            code, doc = await api.call("POST", "/v1/restores", bad)
            self.assertEqual(code, 400, (bad, doc))
        code, body2 = await api.call("POST", "/v1/restores", {
            "snapshot": {"as_of": "2999-01-01T00:00:00Z"}, "target": base + "/dry", "dry_run": True})
        self.assertEqual(code, 202, body2)
        self.assertEqual(await daemon.wait_for_restore(body2["id"]), "done")
        code, status = await api.call("GET", f"/v1/restores/{body2['id']}")
        self.assertEqual(status["plan"]["files"], status["files_total"])
        self.assertFalse(os.path.exists(base + "/dry"))
        code, doc = await api.call("DELETE", f"/v1/restores/{body['id']}")
        self.assertEqual((code, doc["error"]["code"]), (409, "restore_finished"))
        code, doc = await api.call("DELETE", "/v1/restores/r-nope")
        self.assertEqual(code, 404)
