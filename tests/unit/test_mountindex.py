"""
The mount's index and reads without FUSE: listings built from a snapshot's
entries into a real index file, and blob reads from a pack held by a
stand-in of the Tahoe node (the real one is in tests/integration/test_mount.py).
"""

import hashlib
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.config import parse_config
from gridbackupd.errors import ConfigError
from gridbackupd.model import DIR, FILE, HARDLINK, SYMLINK, Entry
from gridbackupd.mount import listing
from gridbackupd.mount.blobcache import BlobCache
from gridbackupd.mount.content import ContentError, ContentReader, CorruptBlob, FileContent
from gridbackupd.mount.listing import KIND, MODE, NAME, PENDING, SIZE, TARGET
from gridbackupd.state import mountindex


def d(path, mtime=1):
    return Entry(path=path, kind=DIR, mode=stat.S_IFDIR | 0o750, mtime_ns=mtime)


def f(path, data=b"x", blobs=None):
    h = hashlib.sha256(data).hexdigest()
    return Entry(path=path, kind=FILE, mode=stat.S_IFREG | 0o640, size=len(data), mtime_ns=123456789,
                 blobs=blobs if blobs is not None else ((h, len(data)),))


class IndexTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "index.sqlite")
        self.conn = mountindex.open_index(self.path)
        self.addCleanup(self.conn.close)

    def write(self, snapshot_id, entries, pending=None, complete=True):
        with mountindex.writing_snapshot(self.conn, snapshot_id) as w:
            count = listing.build(iter(entries), w, 5_000_000_000, pending)
            w.finish("host", 5.0, complete, count)
        return count

    def rows(self, snapshot_id, path):
        data = mountindex.listing(self.conn, snapshot_id, path)
        return None if data is None else {row[NAME]: row for row in listing.decode(data)}

    def test_listings_virtual_dirs_links_pending(self):
        entries = [d(b"/home/ann"), f(b"/home/ann/a", b"aa"), d(b"/home/ann/sub"),
                   f(b"/home/ann/sub/\xff", b"raw name"),
                   Entry(path=b"/home/ann/sub/z", kind=HARDLINK, target=b"/home/ann/a"),
                   Entry(path=b"/home/ann/t", kind=SYMLINK, mode=stat.S_IFLNK | 0o777, target=b"a", size=1),
                   d(b"/srv"), f(b"/srv/late", b"never uploaded")]
        pending = {b"/srv/late"}
        self.assertEqual(self.write("s1", entries, lambda e: e.path in pending, complete=False), 8)
        self.assertEqual(mountindex.snapshots(self.conn), [("s1", "host", 5.0, 0)])
        root = self.rows("s1", b"/")
        self.assertEqual(sorted(root), [b"home", b"srv"])
        # /home is above the backed-up path: a directory the backup did not record.
        self.assertEqual(root[b"home"][KIND], DIR)
        self.assertEqual(root[b"home"][MODE], stat.S_IFDIR | 0o755)
        self.assertEqual(sorted(self.rows("s1", b"/home")), [b"ann"])
        ann = self.rows("s1", b"/home/ann")
        self.assertEqual(sorted(ann), [b"a", b"sub", b"t"])
        self.assertEqual(ann[b"sub"][MODE], stat.S_IFDIR | 0o750)
        self.assertEqual(ann[b"t"][TARGET], b"a")
        sub = self.rows("s1", b"/home/ann/sub")
        self.assertEqual(sorted(sub), [b"z", b"\xff"])
        self.assertEqual(sub[b"z"][KIND], HARDLINK)
        self.assertEqual(mountindex.links(self.conn, "s1", b"/home/ann"), {b"a": 2})
        self.assertEqual(mountindex.links(self.conn, "s1", b"/home/ann/sub"), {b"z": 2})
        self.assertTrue(self.rows("s1", b"/srv")[b"late"][PENDING])
        self.assertFalse(ann[b"a"][PENDING])
        self.assertEqual(ann[b"a"][SIZE], 2)
        self.assertIsNone(self.rows("s1", b"/home/ann/a"))

    def test_unchanged_directories_are_stored_once(self):
        tree = [d(b"/a"), f(b"/a/1", b"one"), d(b"/b"), f(b"/b/2", b"two")]
        self.write("s1", tree)
        self.write("s2", tree[:3] + [f(b"/b/2", b"changed")])
        count = self.conn.execute("SELECT count(*) FROM listings").fetchone()[0]
        # s1: /, /a, /b; s2: the same / and /a, a new /b.
        self.assertEqual(count, 4)
        mountindex.drop_snapshots(self.conn, ["s1"])
        self.assertEqual([r[0] for r in mountindex.snapshots(self.conn)], ["s2"])
        self.assertEqual(self.conn.execute("SELECT count(*) FROM listings").fetchone()[0], 3)
        self.assertEqual(sorted(self.rows("s2", b"/a")), [b"1"])

    def test_a_failed_build_leaves_nothing(self):
        def broken():
            yield d(b"/a")
            raise OSError("the log went away")

        with self.assertRaises(OSError):
            with mountindex.writing_snapshot(self.conn, "s1") as w:
                listing.build(broken(), w, 0)
        self.assertEqual(mountindex.snapshots(self.conn), [])
        self.assertEqual(self.conn.execute("SELECT count(*) FROM dirs").fetchone()[0], 0)

    def write_chain(self, snapshots, roots=(b"/home/ann",)):
        """``[(id, path)]`` of logs of ``snapshots`` (``[records]``): a full log, then increments."""
        from gridbackupd.format.logwriter import write_log
        from gridbackupd.model import LogHeader

        base = os.path.dirname(self.path)
        logs = []
        for n, records in enumerate(snapshots):
            sid = f"s{n + 1}"
            path = os.path.join(base, sid + ".log")
            with open(path, "wb") as out:
                write_log(out, LogHeader(snapshot=sid, kind="incremental" if n else "full",
                                         parent=f"s{n}" if n else None, host="h", paths=roots), records)
            logs.append((sid, path))
        return logs

    def everything(self, conn, snapshot_id):
        """Every listing, link count and the snapshot's row in an index."""
        dirs = {bytes(p): listing.decode(mountindex.listing(conn, snapshot_id, bytes(p)))
                for (p,) in conn.execute("SELECT path FROM dirs WHERE snapshot = ?", (snapshot_id,))}
        links = sorted(conn.execute("SELECT dir, name, nlink FROM links WHERE snapshot = ?", (snapshot_id,)))
        return dirs, links, conn.execute("SELECT * FROM snaps WHERE id = ?", (snapshot_id,)).fetchall()

    def read_anew(self, snapshot_id, logs, time):
        """What reading the chain gives, in an index of its own."""
        from gridbackupd.mount import indexer

        other = mountindex.open_index(os.path.join(self.mktemp(), "other.sqlite"))
        self.addCleanup(other.close)
        indexer.index_snapshot(other, None, snapshot_id, logs, "h", time, True)
        return self.everything(other, snapshot_id)

    def test_an_unchanged_rescan_is_indexed_as_a_copy(self):
        """
        A snapshot whose log is an empty increment is indexed by copying its
        parent's rows: the same listings and links as reading its chain,
        with the directories above the backed-up path at its own time.
        """
        from gridbackupd.mount import indexer

        entries = [d(b"/home/ann"), f(b"/home/ann/a", b"aa"), d(b"/home/ann/sub"),
                   Entry(path=b"/home/ann/sub/z", kind=HARDLINK, target=b"/home/ann/a")]
        logs = self.write_chain([entries, [], [Entry(path=b"/home/ann/b", kind=HARDLINK, target=b"/home/ann/a")]])
        self.assertEqual(indexer.index_snapshot(self.conn, None, "s1", logs[:1], "h", 5.0, True), 4)
        # Not from the parent: the first, an incomplete one, one with a hard link among its changes.
        self.assertIsNone(indexer.index_from_parent(self.conn, "s1", logs[:1], "h", 5.0, True))
        self.assertIsNone(indexer.index_from_parent(self.conn, "s2", logs[:2], "h", 6.0, False))
        self.assertIsNone(indexer.index_from_parent(self.conn, "s3", logs, "h", 7.0, True))
        self.assertEqual(indexer.index_from_parent(self.conn, "s2", logs[:2], "h", 6.0, True), 4)
        copied = self.everything(self.conn, "s2")
        self.assertEqual(copied, self.read_anew("s2", logs[:2], 6.0))
        self.assertEqual(copied[0][b"/"][0][listing.MTIME], 6_000_000_000)
        self.assertEqual(self.rows("s1", b"/")[b"home"][listing.MTIME], 5_000_000_000)

    def test_changes_are_applied_to_the_parents_rows(self):
        """
        A snapshot whose increment has records is indexed from its parent's
        rows with them applied (files and directories added, changed,
        deleted, replaced by one of another kind): the same index as reading
        its chain, over random changes and a chain of increments.
        """
        import random

        from gridbackupd.format.logpaths import path_key
        from gridbackupd.model import Deletion
        from gridbackupd.mount import indexer

        for seed in range(25):
            rnd = random.Random(seed)
            current = {b"/home/ann": d(b"/home/ann")}
            counter = iter(range(10**6))

            def change(current):
                dirs = [p for p, e in current.items() if e.kind == DIR]
                files = [p for p, e in current.items() if e.kind != DIR]
                op = rnd.choice(["file", "dir", "write", "touch_dir", "delete", "to_dir", "to_file"])
                if op in ("file", "dir"):
                    path = rnd.choice(dirs) + b"/%s%d" % (rnd.choice([b"a", b"b", b"\xff"]), next(counter))
                    current[path] = f(path, path) if op == "file" else d(path, next(counter))
                elif op == "write" and files:
                    path = rnd.choice(files)
                    current[path] = f(path, b"%d" % next(counter))
                elif op == "touch_dir":
                    path = rnd.choice(dirs)  # the backed-up path itself too: a row of a virtual directory
                    current[path] = d(path, next(counter))
                elif op in ("delete", "to_file") and len(current) > 1:
                    path = rnd.choice([p for p in current if p != b"/home/ann"])
                    for below in [p for p in current if p == path or p.startswith(path + b"/")]:
                        del current[below]
                    if op == "to_file":
                        current[path] = f(path, b"now a file")
                elif op == "to_dir" and files:
                    path = rnd.choice(files)
                    current[path] = d(path, next(counter))

            for _ in range(30):
                change(current)
            snapshots = [[current[p] for p in sorted(current, key=path_key)]]
            for _ in range(3):
                before = dict(current)
                for _ in range(rnd.randrange(0, 12)):
                    change(current)
                records = []
                for path in sorted(set(before) | set(current), key=path_key):
                    if path not in current:
                        records.append(Deletion(path))
                    elif before.get(path) != current[path]:
                        records.append(current[path])
                snapshots.append(records)
            logs = self.write_chain(snapshots)
            conn = mountindex.open_index(os.path.join(self.mktemp(), "index.sqlite"))
            self.addCleanup(conn.close)
            indexer.index_snapshot(conn, None, "s1", logs[:1], "h", 1.0, True)
            for n in range(2, len(logs) + 1):
                sid = f"s{n}"
                count = indexer.index_from_parent(conn, sid, logs[:n], "h", float(n), True)
                self.assertIsNotNone(count, (seed, sid))
                self.assertEqual(self.everything(conn, sid), self.read_anew(sid, logs[:n], float(n)),
                                 (seed, sid))

    def test_read_only_open_of_a_missing_index(self):
        self.assertRaises(mountindex.IndexMissing, mountindex.open_index,
                          os.path.join(self.mktemp(), "nothing.sqlite"), readonly=True)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)


class _Grid:
    """A Tahoe node holding one pack, counting its ranged reads."""

    def __init__(self, pack, where):
        self.pack = pack
        self.where = where  # hash -> (cap, offset, length, compression)
        self.reads = []

    def locate(self, blob_hash):
        return self.where.get(blob_hash)

    def read_range(self, cap, start, length):
        self.reads.append((start, length))
        return self.pack[start:start + length]


class ContentTests(SynchronousTestCase):
    def setUp(self):
        self.parts = [os.urandom(n) for n in (1000, 5000, 3000, 7000)]
        self.blobs = [(hashlib.sha256(p).hexdigest(), len(p)) for p in self.parts]
        where, at = {}, 0
        for (h, n) in self.blobs:
            where[h] = ("URI:CHK:pack", at, n, "none")
            at += n
        self.grid = _Grid(b"".join(self.parts), where)
        self.logged = []
        self.cache = BlobCache(self.mktemp(), limit=10_000, memory=6000)
        self.reader = ContentReader(self.grid, self.cache, self.logged.append, max_run=9000)
        self.addCleanup(self.reader.close)

    def content(self):
        return FileContent(self.reader, "/snapshots/s/f", self.blobs)

    def test_reads_across_blobs_in_runs(self):
        whole = b"".join(self.parts)
        content = self.content()
        self.assertEqual(content.read(900, 200), whole[900:1100])
        # The first run is the blobs that fit in max_run from the first one.
        self.assertEqual(self.grid.reads[0], (0, 9000))
        self.assertEqual(content.read(0, 100_000), whole)
        self.assertEqual(content.read(len(whole), 10), b"")

    def test_corrupt_blob_is_an_error_never_bytes(self):
        pack = bytearray(self.grid.pack)
        pack[1500] ^= 0xFF  # in the second blob
        self.grid.pack = bytes(pack)
        content = self.content()
        self.assertEqual(content.read(0, 1000), self.parts[0])
        self.assertRaises(CorruptBlob, content.read, 1000, 10)
        self.assertTrue(any("/snapshots/s/f" in line and "SHA-256" in line for line in self.logged))
        self.assertIsNone(self.cache.get(self.blobs[1][0]))
        # Unknown to the index: an error too.
        self.grid.where.clear()
        self.assertRaises(ContentError, FileContent(self.reader, "g", [("00" * 32, 5)]).read, 0, 5)

    def test_cache_is_bounded_and_checked(self):
        self.content().read(0, 100_000)
        self.assertLessEqual(self.cache.disk_size, 10_000)
        cached = os.listdir(self.cache.directory)
        self.assertTrue(cached)
        with open(os.path.join(self.cache.directory, cached[0]), "r+b") as out:
            out.write(b"\0")
        again = BlobCache(self.cache.directory, limit=10_000, memory=0)
        self.assertIsNone(again.get(cached[0]))
        self.assertFalse(os.path.exists(os.path.join(self.cache.directory, cached[0])))


class ConfigTests(SynchronousTestCase):
    def test_cache_size(self):
        path = os.path.join(self.mktemp(), "g.ini")
        os.makedirs(os.path.dirname(path))
        base = "[gridbackup]\nstate_dir = /tmp/x\n[tahoe]\nnode_url = embedded\n"
        with open(path, "w") as out:
            out.write(base)
        self.assertEqual(parse_config(path).mount.cache_size, 1024**3)
        with open(path, "w") as out:
            out.write(base + "[mount]\ncache_size = 2GiB\n")
        self.assertEqual(parse_config(path).mount.cache_size, 2 * 1024**3)
        with open(path, "w") as out:
            out.write(base + "[mount]\ncache_size = lots\n")
        e = self.assertRaises(ConfigError, parse_config, path)
        self.assertIn("[mount] cache_size", str(e))
        self.assertEqual(len(str(e).splitlines()), 1)
