"""
On-grid layout version 2 on the fake grid: a fresh set is v2; a v1 set as
the v1 publisher lays it out converts in place, then recovers, restores and
forgets; day buckets seal across a day boundary (a clock stub); a publisher
that knows only v1 refuses a v2 set.
"""

import json
import os

from gridbackupd.format.index import UnknownLayoutVersion, parse_settings, settings_document
from gridbackupd.grid.layout import COMMIT_DAYS, COMMITS, SETTINGS, SNAPSHOT_DAYS, SNAPSHOTS
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import db as dbmod
from gridbackupd.upload.buckets import DAY, Buckets
from gridbackupd.upload.publisher import Publisher
from tests.integration.test_recover import RecoverFakeGridTests

DAY1 = 1_796_083_200  # 2026-12-01 00:00 UTC
SETTINGS_DOC = settings_document(ChunkParams(), 128, 1 << 20)
FIRST = "20260101T000000.000000Z-aaaaaaaa"
SECOND = "20260102T000000.000000Z-bbbbbbbb"


class LayoutTwoTests(RecoverFakeGridTests):
    """Reuses the recovery tests' fake grid, set builder, recovery and restore."""

    def publisher(self, version=2, now=None):
        # One writer's database: the same writer id, so the lock is its own.
        conn = dbmod.open_database(os.path.join(self.base, "publisher.sqlite"))
        self.addCleanup(conn.close)
        return Publisher(conn, self.client, SETTINGS_DOC, layout_version=version,
                         now=now or (lambda: DAY1 + 3600))

    async def settings_of(self, root):
        children = await self.client.list_dir(root)
        return parse_settings(await self.client.download(children[SETTINGS].cap)), children

    async def test_a_fresh_set_is_version_2(self):
        root = await self.client.mkdir()
        await self.publisher().ensure_layout(root)
        settings, children = await self.settings_of(root)
        self.assertEqual(settings["version"], 2)
        self.assertEqual(sorted(children), sorted([COMMIT_DAYS, SETTINGS, SNAPSHOT_DAYS, "lock"]))

    async def test_a_v1_only_publisher_refuses_a_v2_set(self):
        root = await self.client.mkdir()
        await self.publisher().ensure_layout(root)
        e = await self.assertFailure_(self.publisher(version=1).ensure_layout(root))
        self.assertIsInstance(e, UnknownLayoutVersion)
        self.assertIn("layout version 2, and this gridbackupd knows only version 1", str(e))

    async def assertFailure_(self, coro):
        try:
            await coro
        except Exception as e:
            return e
        self.fail("no error")

    async def build_v1(self):
        """The set of the recovery tests, in directories the v1 publisher made."""
        root = await self.client.mkdir()
        layout = await self.publisher(version=1).ensure_layout(root)
        self.grid.create = lambda: _noop()
        self.grid.root, self.grid.snapshots, self.grid.commits = root, layout.snapshots, layout.commits
        await self.build()
        settings, children = await self.settings_of(root)
        self.assertEqual(settings["version"], 1)
        self.assertIn(SNAPSHOTS, children)
        return root

    async def test_v1_converts_then_recovers_restores_and_forgets(self):
        root = await self.build_v1()
        v1_logs = await self.client.list_dir(self.grid.snapshots)
        publisher = self.publisher()
        await publisher.ensure_layout(root)
        settings, children = await self.settings_of(root)
        self.assertEqual(settings["version"], 2)
        self.assertEqual(sorted(children), sorted([COMMIT_DAYS, SETTINGS, SNAPSHOT_DAYS, "lock"]))
        buckets = await self.client.list_dir(children[SNAPSHOT_DAYS].cap)
        self.assertEqual(list(buckets), ["2026-11-30"])  # sealed: the day before the conversion
        self.assertIsNone(buckets["2026-11-30"].rw_uri)
        sealed = await self.client.list_dir(buckets["2026-11-30"].cap)
        self.assertEqual({n: c.ro_uri for n, c in sealed.items()},
                         {n: c.ro_uri for n, c in v1_logs.items()})
        # Converting again is a no-op.
        await self.publisher().ensure_layout(root)

        report = await self.recover(root)
        self.assertEqual((report.commits, report.packs, report.blobs, report.inline_blobs,
                          report.snapshots, report.errors), (2, 2, 3, 1, 2, []))
        target = os.path.join(self.base, "restored")
        state, status = await self.restore(FIRST, target)
        self.assertEqual(state, "done", status["errors"])
        with open(os.path.join(target, "data", "small"), "rb") as f:
            self.assertEqual(f.read(), self.data["three"])

        # A new log goes into today's open bucket; a forget rewrites the sealed one.
        cap = await self.client.upload_bytes(b"not read here")
        await publisher.layout.link_log(self.client, "20261201T010000.000000Z-cccccccc", cap)
        await publisher.unlink_snapshot_log(SECOND)
        buckets = await self.client.list_dir(children[SNAPSHOT_DAYS].cap)
        self.assertEqual(sorted(buckets), ["2026-11-30", "2026-12-01"])
        self.assertIsNotNone(buckets["2026-12-01"].rw_uri)
        self.assertEqual(sorted(await self.client.list_dir(buckets["2026-11-30"].cap)), [FIRST])
        self.conn.execute("DELETE FROM snapshots")
        report = await self.recover(root)
        self.assertEqual(sorted(r[0] for r in self.conn.execute("SELECT id FROM snapshots")),
                         [FIRST])

    async def test_a_conversion_cut_short_after_the_settings_is_finished(self):
        root = await self.build_v1()
        # As if a start had died at convert.settings_written: v2 whole, v1 still linked.
        publisher = self.publisher()
        await publisher.ensure_layout(root)
        children = await self.client.list_dir(root)
        await self.client.set_children(root, {SNAPSHOTS: self.grid.snapshots, COMMITS: self.grid.commits})
        report = await self.recover(root)  # a reader takes v2, as the settings say
        self.assertEqual(report.snapshots, 2)
        await self.publisher().ensure_layout(root)
        self.assertEqual(sorted(await self.client.list_dir(root)), sorted(children))

    async def test_buckets_seal_across_a_day_boundary(self):
        now = [DAY1 + 23 * 3600]
        index = await self.client.mkdir()
        buckets = Buckets(self.client, index, lambda: now[0])
        one, two, three = [await self.client.upload_bytes(b"%d" % i) for i in range(3)]
        await buckets.link({"a": one, "b": two})
        listing = await self.client.list_dir(index)
        self.assertEqual(list(listing), ["2026-12-01"])
        self.assertIsNotNone(listing["2026-12-01"].rw_uri)
        now[0] += 2 * 3600  # past midnight
        await buckets.link({"c": three})
        listing = await self.client.list_dir(index)
        self.assertEqual(sorted(listing), ["2026-12-01", "2026-12-02"])
        self.assertIsNone(listing["2026-12-01"].rw_uri)  # sealed
        self.assertEqual(sorted(await self.client.list_dir(listing["2026-12-01"].cap)), ["a", "b"])
        self.assertEqual(sorted(await self.client.list_dir(listing["2026-12-02"].cap)), ["c"])
        # A child of a sealed bucket replaced, another removed: a new sealed bucket.
        await buckets.change({"a": three, "b": None})
        listing = await self.client.list_dir(index)
        self.assertIsNone(listing["2026-12-01"].rw_uri)
        sealed = await self.client.list_dir(listing["2026-12-01"].cap)
        self.assertEqual({n: c.ro_uri for n, c in sealed.items()}, {"a": three})
        # The last child gone: the bucket goes.
        await buckets.change({"a": None})
        self.assertEqual(sorted(await self.client.list_dir(index)), ["2026-12-02"])
        # A day with no write makes no bucket; the next write seals the open one.
        now[0] += 2 * DAY
        await buckets.link({"d": one})
        listing = await self.client.list_dir(index)
        self.assertEqual(sorted(listing), ["2026-12-02", "2026-12-04"])
        self.assertIsNone(listing["2026-12-02"].rw_uri)
        self.assertEqual(json.dumps(sorted(await buckets.children())), '["c", "d"]')


async def _noop():
    return None


del RecoverFakeGridTests
