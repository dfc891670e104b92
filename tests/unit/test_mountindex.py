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

    def test_an_unchanged_rescan_is_indexed_as_a_copy(self):
        """
        A snapshot whose log is an empty increment is indexed by copying its
        parent's rows: the same listings and links as reading its chain,
        with the directories above the backed-up path at its own time.
        """
        from gridbackupd.format.logwriter import write_log
        from gridbackupd.model import LogHeader
        from gridbackupd.mount import indexer

        base = os.path.dirname(self.path)
        entries = [d(b"/home/ann"), f(b"/home/ann/a", b"aa"), d(b"/home/ann/sub"),
                   Entry(path=b"/home/ann/sub/z", kind=HARDLINK, target=b"/home/ann/a")]
        logs = []
        for sid, kind, parent, records in (("s1", "full", None, entries), ("s2", "incremental", "s1", []),
                                           ("s3", "incremental", "s2", [f(b"/home/ann/b", b"new")])):
            path = os.path.join(base, sid + ".log")
            with open(path, "wb") as out:
                write_log(out, LogHeader(snapshot=sid, kind=kind, parent=parent, host="h",
                                         paths=(b"/home/ann",)), records)
            logs.append((sid, path))
        self.assertEqual(indexer.index_snapshot(self.conn, None, "s1", logs[:1], "h", 5.0, True), 4)
        # Not a copy: the first, an incomplete one, one with records.
        self.assertIsNone(indexer.copy_unchanged(self.conn, "s1", logs[:1], "h", 5.0, True))
        self.assertIsNone(indexer.copy_unchanged(self.conn, "s2", logs[:2], "h", 6.0, False))
        self.assertIsNone(indexer.copy_unchanged(self.conn, "s3", logs, "h", 7.0, True))
        self.assertEqual(indexer.copy_unchanged(self.conn, "s2", logs[:2], "h", 6.0, True), 4)
        other = mountindex.open_index(os.path.join(base, "other.sqlite"))
        self.addCleanup(other.close)
        indexer.index_snapshot(other, None, "s2", logs[:2], "h", 6.0, True)

        def everything(conn):
            dirs = {bytes(p): listing.decode(mountindex.listing(conn, "s2", bytes(p)))
                    for (p,) in conn.execute("SELECT path FROM dirs WHERE snapshot = 's2'")}
            links = sorted(conn.execute("SELECT dir, name, nlink FROM links WHERE snapshot = 's2'"))
            return dirs, links, conn.execute("SELECT * FROM snaps WHERE id = 's2'").fetchall()

        copied = everything(self.conn)
        self.assertEqual(copied, everything(other))
        self.assertEqual(copied[0][b"/"][0][listing.MTIME], 6_000_000_000)
        self.assertEqual(self.rows("s1", b"/")[b"home"][listing.MTIME], 5_000_000_000)

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
