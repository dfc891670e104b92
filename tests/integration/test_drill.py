"""
Restore drills (gridbackupd.drill): a daemon on the shared real grid backs
up a small tree of unique content; drills restore samples of it, find
corruption planted in the storage servers' shares, and clean up after
themselves.
"""

import hashlib
import os
import random

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.chain import snapshot_entries
from gridbackupd.maintenance import drill
from gridbackupd.model import DIR, FILE, Entry
from gridbackupd.state.blobs import locate
from gridbackupd.state.snapshots import log_resolver
from tests.support.daemoncase import DaemonTestCase
from tests.support.gridshares import corrupt_shares
from tests.support.sharedgrid import shared_grid

# Files of this size in packs of at most 64 KiB: one or two files a pack,
# so that corrupting one pack spares the other files.
GRID_FILE_SIZE = 40_000
GRID_FILES = 8


def make_drill_tree(root):
    """Random (so unique, so unshared) content: packs of these files are
    this test's own, whatever other tests store on the grid."""
    for sub in ("a", "b/c"):
        os.makedirs(os.path.join(root, sub))
    for i in range(GRID_FILES):
        sub = ("", "a", "b/c")[i % 3]
        with open(os.path.join(root, sub, f"f{i}.bin"), "wb") as f:
            f.write(os.urandom(GRID_FILE_SIZE + i))
    with open(os.path.join(root, "tiny"), "wb") as f:
        f.write(os.urandom(16))  # inline in the log
    with open(os.path.join(root, "small"), "wb") as f:
        f.write(os.urandom(1000))  # inline in the index
    open(os.path.join(root, "empty"), "wb").close()
    os.symlink("a", os.path.join(root, "link"))


class DrillTests(DaemonTestCase):

    def make_tree(self):
        make_drill_tree(self.tree)

    async def start_daemon(self, config_path):
        with open(config_path, "a") as f:
            f.write("[upload]\npack_size = 64KiB\n")
        await super().start_daemon(config_path)

    def context(self, job_id="drill-1", **options):
        return self.daemon.maintenance.context(job_id, options)

    def drill_dir(self):
        return os.path.join(self.daemon.config.state_dir, "drill")

    def tree_files(self):
        """{snapshot path: content} of the regular files with content."""
        found = {}
        for dirpath, _, names in os.walk(self.tree):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path):
                    with open(path, "rb") as f:
                        found[os.path.abspath(path)] = f.read()
        return found

    async def test_healthy_snapshot(self):
        snapshot = await self.backup()
        ctx = self.context(files=5)
        result = await drill.restore_drill(ctx)
        self.assertEqual(result["snapshot"], snapshot)
        self.assertEqual((result["files"], result["ok"], result["failed"]), (5, 5, []))
        # Eight files in packs to choose from: the log-inline one is not needed.
        self.assertEqual((result["grid_files"], result["inline_files"]), (5, 0))
        self.assertEqual(result["candidates"], GRID_FILES + 2)
        self.assertGreaterEqual(result["bytes"], 4 * GRID_FILE_SIZE)  # one may be "small"
        self.assertEqual(ctx.progress["snapshot"], snapshot)
        self.assertEqual((ctx.progress["done"], ctx.progress["total"], ctx.progress["errors"]),
                         (5, 5, 0))
        self.assertFalse(os.path.exists(self.drill_dir()))

        # A sample larger than the snapshot takes every file, the inline ones too.
        result = await drill.restore_drill(self.context("drill-2", files=100, snapshot=snapshot))
        content = self.tree_files()
        self.assertEqual(result["files"], len(content))
        self.assertEqual(result["ok"], len(content), result["failed"])
        self.assertEqual(result["bytes"], sum(len(v) for v in content.values()))
        self.assertEqual(result["inline_files"], 1)
        self.assertFalse(os.path.exists(self.drill_dir()))

    async def test_corrupt_pack_is_found(self):
        grid = shared_grid()
        if grid is None:
            self.skipTest("the grid is not this process's LocalGrid: its shares are out of reach")
        snapshot = await self.backup()
        logs = os.path.join(self.daemon.config.state_dir, "logs")
        packs_of = {}  # path -> the caps of the packs holding its blobs
        for entry in snapshot_entries(snapshot, log_resolver(self.daemon.conn, logs)):
            if entry.kind == FILE and entry.blobs:
                where = [locate(self.daemon.conn, h) for h, _ in entry.blobs]
                packs_of[os.fsdecode(entry.path)] = {w[0] for w in where if isinstance(w, tuple)}
        caps = sorted(set().union(*packs_of.values()))
        self.assertGreater(len(caps), 1, "the tree should fill several packs")
        victim = caps[0]
        damaged = sorted(p for p, c in packs_of.items() if victim in c)
        self.assertTrue(damaged)
        self.assertTrue(corrupt_shares(grid, victim))

        ctx = self.context(files=1000)
        result = await drill.restore_drill(ctx)
        total = len(self.tree_files())
        self.assertEqual(result["snapshot"], snapshot)
        self.assertEqual(result["files"], total)
        self.assertEqual(sorted(f["path"] for f in result["failed"]), damaged)
        self.assertEqual(result["ok"], total - len(damaged))
        self.assertGreater(result["ok"], 0)
        for failure in result["failed"]:
            self.assertIn("grid", failure["reason"])
            self.assertNotIn(victim, failure["reason"])  # a cap is a secret
            self.assertNotIn(victim.split(":")[2], failure["reason"])
        self.assertEqual(ctx.progress["errors"], len(damaged))
        self.assertEqual(ctx.progress["done"], total)
        self.assertFalse(os.path.exists(self.drill_dir()))

    async def test_no_complete_snapshot(self):
        result = await drill.restore_drill(self.context())
        self.assertEqual(result["snapshot"], None)
        self.assertEqual((result["files"], result["ok"], result["failed"]), (0, 0, []))
        self.assertEqual(result["skipped"], "no complete snapshot to drill")
        result = await drill.restore_drill(self.context(snapshot="20990101T000000Z-none"))
        self.assertEqual(result["snapshot"], None)
        self.assertIn("20990101T000000Z-none", result["skipped"])

    async def test_leftover_scratch_removed(self):
        snapshot = await self.backup()
        left = os.path.join(self.drill_dir(), "drill-killed", "a", "deep")
        os.makedirs(left)
        with open(os.path.join(left, "half-restored"), "wb") as f:
            f.write(b"x" * 100)
        os.chmod(left, 0o500)
        os.chmod(os.path.dirname(left), 0o500)
        # This very job, killed with the daemon and now resumed.
        own = os.path.join(self.drill_dir(), "drill-new", "a")
        os.makedirs(own)
        with open(os.path.join(own, "f0.bin"), "wb") as f:
            f.write(b"stale")
        result = await drill.restore_drill(self.context("drill-new", files=3))
        self.assertEqual((result["snapshot"], result["ok"], result["failed"]), (snapshot, 3, []))
        self.assertFalse(os.path.exists(self.drill_dir()))

    async def test_log_not_readable(self):
        snapshot = await self.backup()
        [log_path] = self.daemon.conn.execute(
            "SELECT log_path FROM snapshots WHERE id = ?", (snapshot,)).fetchone()
        os.rename(log_path, log_path + ".away")
        result = await drill.restore_drill(self.context(files=3))
        self.assertEqual((result["snapshot"], result["files"], result["failed"]), (snapshot, 0, []))
        self.assertIn("cannot read the snapshot's log", result["error"])
        self.assertIn("no local log", result["error"])


def file_entry(path, data, sha256=True, blob_size=None):
    blob_size = blob_size or max(len(data), 1)
    blobs = tuple((hashlib.sha256(data[i:i + blob_size]).hexdigest(), len(data[i:i + blob_size]))
                  for i in range(0, len(data), blob_size))
    return Entry(path=path, kind=FILE, size=len(data), blobs=blobs,
                 sha256=hashlib.sha256(data).hexdigest() if sha256 else None)


class SampleTests(SynchronousTestCase):

    def test_bounded_and_prefers_grid_files(self):
        sample = drill.Sample(20, random.Random(1))
        for i in range(10_000):
            sample.add(file_entry(b"/g%05d" % i, b"x"))
            sample.add(Entry(path=b"/i%05d" % i, kind=FILE, size=1, inline=b"y"))
        sample.add(Entry(path=b"/d", kind=DIR))
        sample.add(Entry(path=b"/empty", kind=FILE))
        chosen = sample.chosen
        self.assertEqual(len(chosen), 20)
        self.assertTrue(all(e.path.startswith(b"/g") for e in chosen))
        self.assertEqual(sample.candidates, 20_000)
        self.assertEqual(chosen, sorted(chosen, key=lambda e: e.path))
        # Not simply the first ones seen.
        self.assertGreater(max(e.path for e in chosen), b"/g00100")

    def test_inline_files_fill_up(self):
        sample = drill.Sample(5, random.Random(2))
        for i in range(3):
            sample.add(file_entry(b"/g%d" % i, b"x"))
        for i in range(10):
            sample.add(Entry(path=b"/i%d" % i, kind=FILE, size=1, inline=b"y"))
        paths = [e.path for e in sample.chosen]
        self.assertEqual(len(paths), 5)
        self.assertEqual(sum(p.startswith(b"/g") for p in paths), 3)
        self.assertEqual(sample.grid_files, 3)


class CheckFileTests(SynchronousTestCase):

    def setUp(self):
        self.target = self.mktemp()
        os.makedirs(os.path.join(self.target, "d"))

    def put(self, data):
        with open(os.path.join(self.target, "d", "f"), "wb") as f:
            f.write(data)

    def test_reasons(self):
        data = os.urandom(5000)
        entry = file_entry(b"/d/f", data, blob_size=1000)
        self.assertIs(drill.check_file(self.target, entry), drill.MISSING)
        self.put(data)
        self.assertIsNone(drill.check_file(self.target, entry))
        self.put(data[:-1])
        self.assertEqual(drill.check_file(self.target, entry),
                         "restored 4999 bytes, the snapshot says 5000")
        self.put(data[:2500] + bytes([data[2500] ^ 0xFF]) + data[2501:])  # a byte that surely differs
        self.assertEqual(drill.check_file(self.target, entry),
                         "the restored content does not match the snapshot's SHA-256")
        # Without a whole-file hash, the blobs' hashes say which bytes are wrong.
        entry = file_entry(b"/d/f", data, sha256=False, blob_size=1000)
        self.assertEqual(drill.check_file(self.target, entry),
                         "bytes 2000-3000 do not match their blob's SHA-256")
        self.assertIs(drill.check_file(self.target, Entry(path=b"/../x", kind=FILE, size=1, inline=b"x")),
                      drill.MISSING)

    def test_leftovers_spare_running_drills(self):
        root = os.path.join(self.target, "drill")
        for name in ("old", "running"):
            os.makedirs(os.path.join(root, name, "x"))
        drill.remove_leftovers(root, {os.path.join(root, "running")})
        self.assertEqual(os.listdir(root), ["running"])
        drill.remove_leftovers(root, set())
        self.assertFalse(os.path.exists(root))

    def test_remove_tree(self):
        os.makedirs(os.path.join(self.target, "d", "e"))
        os.chmod(os.path.join(self.target, "d"), 0o500)
        drill.remove_tree(self.target)
        self.assertFalse(os.path.exists(self.target))
        drill.remove_tree(self.target)  # gone already: nothing to do
