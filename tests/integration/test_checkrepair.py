"""
Tests of gridbackupd.checkrepair.

``UnhealthyAnswerTests`` (shared grid): the real client, except that the
check of chosen objects answers 200 with a JSON that says the object is not
healthy or not recoverable: that must count as a failure, and the report
must name what is lost.  ``RepairTests`` (a grid of its own, since it stops
a storage node): a real repair after a storage node is gone.
"""

import hashlib
import os
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gridbackupd.errors import TahoeBadResponse, TahoeError
from gridbackupd.grid.client import TahoeClient
from gridbackupd.grid.layout import COMMIT_DAYS, log_path
from gridbackupd.grid.localgrid import LocalGrid
from gridbackupd.grid.retry import RetryPolicy
from gridbackupd.maintenance.checkrepair import check_and_repair, classify
from gridbackupd.maintenance.jobs import JobContext
from gridbackupd.maintenance.reachable import ROOT
from gridbackupd.state.db import open_database
from gridbackupd.statedir import StateDir
from tests.support.daemoncase import DaemonTestCase, write_config
from tests.support.gridshares import corrupt_shares, nodes_holding, share_files, storage_node_names
from tests.support.maintenance import make_context, reachable_objects
from tests.support.sharedgrid import shared_grid, shared_node_url
from tests.support.trees import tree_listing


def write_files(root, count=6, size=20_000):
    """``count`` files, each one blob (above inline size, below chunking): name -> sha256."""
    os.makedirs(os.path.join(root, "sub"))
    digests = {}
    for i in range(count):
        path = os.path.join(root, "sub" if i % 2 else "", f"file-{i}")
        data = os.urandom(size)
        with open(path, "wb") as f:
            f.write(data)
        digests[path] = hashlib.sha256(data).hexdigest()
    return digests


def check_answer(healthy, recoverable, summary="Not Healthy: some shares are gone"):
    return {
        "storage-index": "abcdefghijklmnopqrstuvwxyz",
        "summary": summary,
        "results": {"healthy": healthy, "recoverable": recoverable,
                    "count-shares-good": 1 if recoverable else 0, "count-shares-needed": 2,
                    "count-shares-expected": 3, "count-corrupt-shares": 0},
    }


def repair_answer(pre, post, attempted=True):
    return {"storage-index": "abcdefghijklmnopqrstuvwxyz", "repair-attempted": attempted,
            "repair-successful": post["results"]["healthy"],
            "pre-repair-results": pre, "post-repair-results": post}


class StubbedChecks:
    """The real client, but ``check`` of the caps in ``answers`` answers that JSON."""

    def __init__(self, real, answers):
        self.real = real
        self.answers = answers
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def check(self, cap, verify=False, add_lease=False, repair=False):
        self.calls.append((cap, verify, repair))
        if cap in self.answers:
            answer = self.answers[cap]
            return answer(repair) if callable(answer) else answer
        return await self.real.check(cap, verify=verify, add_lease=add_lease, repair=repair)


class ClassifyTests(SynchronousTestCase):
    def test_plain_answers(self):
        self.assertEqual(classify(check_answer(True, True), repair=False)["healthy"], True)
        state = classify(check_answer(False, True), repair=False)
        self.assertEqual((state["healthy"], state["repair_attempted"], state["recoverable_after"]),
                         (False, False, True))
        state = classify(check_answer(False, False), repair=True)  # a node that did not repair
        self.assertEqual((state["healthy"], state["healthy_after"], state["recoverable_after"]),
                         (False, False, False))
        # Literal objects: healthy, no "recoverable".
        literal = {"storage-index": "", "results": {"healthy": True}}
        self.assertTrue(classify(literal, repair=True)["healthy"])

    def test_repair_answers(self):
        state = classify(repair_answer(check_answer(False, True), check_answer(True, True)), True)
        self.assertEqual((state["healthy"], state["repair_attempted"], state["healthy_after"]),
                         (False, True, True))
        gone = check_answer(False, False)
        state = classify(repair_answer(gone, gone), repair=True)
        self.assertEqual((state["healthy_after"], state["recoverable_after"]), (False, False))

    def test_other_shapes_are_refused(self):
        for answer in ({}, {"results": {}}, {"results": {"healthy": "yes"}},
                       {"pre-repair-results": check_answer(True, True)}):
            with self.assertRaises(TahoeBadResponse):
                classify(answer, repair=True)


class UnhealthyAnswerTests(DaemonTestCase):
    def make_tree(self):
        self.digests = write_files(self.tree)

    async def objects_by_name(self):
        return {o.name: o for o in await reachable_objects(self.daemon)}

    async def test_unrecoverable_pack_and_log_are_failures_and_name_what_is_lost(self):
        first = await self.backup()
        changed = sorted(self.digests)[0]
        with open(changed, "ab") as f:
            f.write(b"more")
        second = await self.backup()
        objects = await self.objects_by_name()
        [log_name] = [n for n in objects if log_path(n) == first]

        def blobs_of(pack):
            return {row[0] for row in self.daemon.conn.execute(
                "SELECT b.hash FROM blobs b JOIN packs p ON p.id = b.pack_id WHERE p.name = ?",
                (pack.rsplit("/", 1)[1],))}

        # The pack of the first backup (the second one's holds only the change).
        packs = sorted((n for n in objects if "/pack-" in n), key=lambda n: -len(blobs_of(n)))
        self.assertTrue(packs)
        pack = packs[0]
        pack_hashes = blobs_of(pack)
        # The files of the tree (one blob each) whose blob is in that pack.
        commit = pack.rsplit("/", 1)[0]
        lost = {path for path, digest in self.digests.items() if digest in pack_hashes}
        self.assertTrue(lost, (len(packs), len(pack_hashes)))
        gone = check_answer(False, False, "Not Healthy: 0 shares (enc 2-of-3)")
        stub = StubbedChecks(self.daemon.client, {
            objects[pack].cap: lambda repair: repair_answer(gone, gone) if repair else gone,
            objects[log_name].cap: gone,  # a node that ignores repair=true
            objects[commit].cap: gone,
        })
        ctx = make_context(self.daemon)
        ctx.client = stub

        result = await check_and_repair(ctx)

        non_literal = [o for o in objects.values() if not o.literal]
        self.assertEqual(result["checked"], len(non_literal))
        self.assertEqual(result["failed"], 0)
        self.assertEqual((result["unhealthy"], result["still_unhealthy"], result["unrecoverable"],
                          result["repaired"]), (3, 3, 3, 0))
        self.assertEqual(result["healthy"], len(non_literal) - 3)
        self.assertEqual(ctx.progress["errors"], 3)
        self.assertEqual({o["name"] for o in result["unhealthy_objects"]},
                         {pack, commit, log_name})
        self.assertTrue(stub.calls, "the check ran on the grid")
        self.assertTrue(all(c[2] for c in stub.calls), "repair is asked for by default")
        # Unhealthy objects are not marked done: a resumed run looks again.
        self.assertNotIn(pack, ctx.done_items())
        self.assertIn(COMMIT_DAYS, ctx.done_items())

        reports = {r["name"]: r for r in result["unrecoverable_objects"]}
        self.assertEqual(set(reports), {pack, commit, log_name})
        report = reports[pack]
        self.assertEqual(report["kind"], "pack")
        self.assertEqual(report["blobs"], len(pack_hashes))
        self.assertEqual(report["snapshots_not_searched"], [])
        # Each lost file in each snapshot that holds it (the changed file's
        # old content only in the first one).
        expected = {(first, p) for p in lost} | {(second, p) for p in lost if p != changed}
        self.assertEqual({(f["snapshot"], f["path"]) for f in report["files"]}, expected)
        self.assertEqual(report["files_count"], len(expected))
        self.assertEqual(report["snapshots"], sorted({s for s, _ in expected},
                                                     key=[first, second].index))
        # The commit holds that pack (and maybe others): its loss covers the pack's.
        self.assertEqual(reports[commit]["kind"], "commit")
        self.assertGreaterEqual(reports[commit]["blobs"], len(pack_hashes))
        self.assertLessEqual(expected, {(f["snapshot"], f["path"])
                                        for f in reports[commit]["files"]})
        log = reports[log_name]
        self.assertEqual(log["kind"], "snapshot-log")
        self.assertEqual(log["snapshots"][0], first)
        parent = self.daemon.conn.execute(
            "SELECT parent FROM snapshots WHERE id = ?", (second,)).fetchone()[0]
        self.assertEqual(second in log["snapshots"], parent == first)
        # No cap anywhere in the result.
        text = repr(result)
        for obj in objects.values():
            self.assertNotIn(obj.cap, text)

    async def test_without_repair_an_unhealthy_object_stays_unhealthy(self):
        await self.backup()
        objects = await self.objects_by_name()
        stub = StubbedChecks(self.daemon.client, {
            objects[COMMIT_DAYS].cap: check_answer(False, True),
            objects[ROOT].cap: check_answer(False, False),
        })
        ctx = make_context(self.daemon, {"repair": False, "verify_fraction": 1.0})
        ctx.client = stub
        result = await check_and_repair(ctx)
        self.assertIs(result["repair"], False)
        self.assertEqual((result["unhealthy"], result["repaired"], result["still_unhealthy"],
                          result["unrecoverable"]), (2, 0, 2, 1))
        self.assertEqual(result["verified"], result["checked"])
        self.assertTrue(stub.calls and all(c[1] and not c[2] for c in stub.calls))
        [report] = result["unrecoverable_objects"]
        self.assertEqual((report["name"], report["kind"]), (ROOT, "directory"))
        self.assertIn("whole backup set", report["affects"])


class RepairTests(DaemonTestCase):
    """A backup on a grid of 4 storage nodes (2-of-3, happy 3); one node goes."""

    timeout = 300

    def make_tree(self):
        self.digests = write_files(self.tree, count=8)

    async def _start(self):
        self.grid = LocalGrid(reactor, os.path.abspath(self.mktemp()), storage_nodes=4,
                              needed=2, happy=3, total=3)
        self.grid.startService()
        self.addCleanup(self.grid.stopService)
        # What DaemonTestCase._start does, with our grid instead of the shared one.
        self.node_url = await self.grid.when_ready()
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.tree = os.path.join(self.base, "data")
        self.make_tree()
        self.config_path = write_config(self.base, self.node_url, [self.tree])
        await self.start_daemon(self.config_path)

    async def stop_node(self, name):
        """Stop one storage node and wait until the client node has seen it go."""
        await self.grid.stop_node(name)
        deadline = time.monotonic() + 60
        while await self.grid.connected_servers() > 3:
            self.assertLess(time.monotonic(), deadline, "the client still sees 4 servers")
            await deferLater(reactor, 0.2, lambda: None)

    async def test_repair_after_a_storage_node_is_gone(self):
        await self.backup()
        objects = [o for o in await reachable_objects(self.daemon) if not o.literal]
        holding = {name: sum(1 for o in objects if share_files(self.grid, o.cap, [name]))
                   for name in storage_node_names(self.grid)}
        victim = max(sorted(holding), key=holding.get)
        self.assertGreater(holding[victim], 0)
        await self.stop_node(victim)

        ctx = make_context(self.daemon, {"parallel": 4})
        result = await check_and_repair(ctx)

        self.assertEqual(result["failed"], 0, result["failures"])
        self.assertEqual(result["checked"], len(objects))
        self.assertEqual(result["unhealthy"], holding[victim], result["unhealthy_objects"])
        self.assertEqual(result["repaired"], result["unhealthy"], result["unhealthy_objects"])
        self.assertEqual((result["still_unhealthy"], result["unrecoverable"]), (0, 0))
        self.assertEqual(ctx.progress["repaired"], result["repaired"])
        self.assertEqual(ctx.progress["errors"], 0)
        # The storage servers agree: every object has shares on 3 live nodes.
        live = [n for n in storage_node_names(self.grid) if n != victim]
        for obj in objects:
            self.assertGreaterEqual(
                len(set(nodes_holding(self.grid, obj.cap)) & set(live)), 3, obj.name)

        again = await check_and_repair(make_context(
            self.daemon, {"repair": False, "verify_fraction": 1.0}))
        self.assertEqual((again["checked"], again["verified"], again["healthy"]),
                         (len(objects),) * 3)
        self.assertEqual((again["unhealthy"], again["failed"]), (0, 0))

        target = os.path.join(self.base, "restored")
        state, status = await self.restore({"snapshot": "latest", "target": target})
        self.assertEqual(state, "done", status["errors"])
        restored = os.path.join(target, self.tree.lstrip("/"))
        self.assertEqual(tree_listing(restored), tree_listing(self.tree))


class CorruptSharesTests(TestCase):
    """gridshares.corrupt_shares on the shared grid, seen by a verifying check."""

    timeout = 120

    async def test_corrupt_file_is_found_by_verify_only(self):
        url = await shared_node_url()
        grid = shared_grid()
        if grid is None:
            self.skipTest("the grid comes from outside: its share files are not at hand")
        client = TahoeClient(url, retry=RetryPolicy(attempts=1))
        self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
        data = os.urandom(50_000)
        cap = await client.upload_bytes(data)
        root = await client.mkdir()
        await client.set_children(root, {"odd-one": cap})
        self.assertEqual(await client.download(cap), data)
        changed = corrupt_shares(grid, cap)
        self.assertEqual(changed, share_files(grid, cap))
        self.assertEqual(len(changed), 3)
        with self.assertRaises(TahoeError):
            await client.download(cap)

        db_path = os.path.join(os.path.abspath(self.mktemp()), "state.db")
        conn = open_database(db_path)
        self.addCleanup(conn.close)
        pool = ThreadPool(1, 1)
        pool.start()
        self.addCleanup(pool.stop)
        ctx = JobContext(reactor=reactor, conn=conn, db_path=db_path, client=client,
                         rootcap=root, pool=pool, statedir=StateDir(os.path.abspath(self.mktemp())),
                         job_id="j", options={"repair": True, "verify_fraction": 0.0})
        # Without verify, the shares are there: healthy.
        plain = await check_and_repair(ctx)
        self.assertEqual((plain["checked"], plain["healthy"], plain["unhealthy"]), (2, 2, 0))

        ctx = JobContext(reactor=reactor, conn=conn, db_path=db_path, client=client,
                         rootcap=root, pool=pool, statedir=StateDir(os.path.abspath(self.mktemp())),
                         job_id="k", options={"verify_fraction": 1.0})
        verified = await check_and_repair(ctx)
        self.assertEqual((verified["checked"], verified["verified"]), (2, 2), verified)
        self.assertEqual((verified["unhealthy"], verified["unrecoverable"],
                          verified["repaired"]), (1, 1, 0))
        self.assertEqual(verified["corrupt_shares"], 3)
        [report] = verified["unrecoverable_objects"]
        self.assertEqual((report["name"], report["kind"]), ("odd-one", "unknown"))
