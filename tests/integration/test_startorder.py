"""
The order of work at a start (issue 18): a forget and prune that are due
when the daemon starts run before a scan that a crash interrupted resumes
(both take the scan lock, and the maintenance jobs start first).  The
resumed scan copies its checkpoint's records as they are, and the
committed blobs those records use are in no ``snapshot_blobs``; so the
prune must count the checkpoint's blobs as live, or the resumed snapshot
becomes "complete" with a file whose content the prune dropped.

A real daemon on the shared grid: a file is backed up, moved out of the
tree for a second backup and moved back; the third backup's scan dies
after a checkpoint that records it (its content only in the first
snapshot); the daemon starts again with a retention policy that forgets
the first snapshot at once.  Nothing the resumed scan needs may be pruned:
its snapshot completes, restores byte for byte and is reachable from the
root cap alone.
"""

import os
import shutil

from twisted.trial.unittest import TestCase

from gridbackupd import crashpoints
from gridbackupd.grid.client import TahoeClient
from tests.support.crashrun import CrashDaemon
from tests.support.process import free_port
from tests.support.reachcheck import missing_from_root
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import tree_listing


class StartOrderTests(TestCase):
    timeout = 300

    async def call(self, method, path, body=None, expect=200):
        code, answer = await self.daemon.call(method, path, body)
        self.assertEqual(code, expect, answer)
        return answer

    async def backup(self):
        snapshot_id = (await self.call("POST", "/v1/backups", expect=202))["id"]
        await self.daemon.complete(snapshot_id)
        return snapshot_id

    async def test_due_forget_at_start_spares_the_interrupted_scan(self):
        node_url = await shared_node_url()
        base = os.path.abspath(self.mktemp())
        tree = os.path.join(base, "data")
        os.makedirs(os.path.join(tree, "many"))
        # First in the walk, so the checkpoint (at 256 entries) records it;
        # the only file big enough for a blob of its own (the rest are
        # inline in the log), so its pack holds nothing else.
        precious = os.path.join(tree, "a-precious")
        with open(precious, "wb") as f:
            f.write(os.urandom(24_000))
        for i in range(300):
            with open(os.path.join(tree, "many", f"{i:03d}"), "wb") as f:
                f.write(b"%d\n" % i)
        self.daemon = CrashDaemon(self, base, free_port(), node_url)
        self.addCleanup(lambda: self.daemon.proc is not None and self.daemon.close())
        # Full logs only: an increment records only the changed entries (the
        # third would take no checkpoint), and a forget that rewrote the
        # second's log would change the third's parent chain, which drops
        # its checkpoint (the scan starts over and reads every file).
        self.configure("full_every = 1000\n", "full_every = 1\n")

        self.daemon.start()
        await self.daemon.ready()
        first = await self.backup()
        aside = os.path.join(base, "aside")
        os.rename(precious, aside)
        second = await self.backup()
        os.rename(aside, precious)
        self.daemon.close()

        # The third scan dies at its checkpoint, which records a-precious
        # with the blob only the first snapshot has.
        self.daemon.start("scan.checkpoint_written")
        await self.daemon.ready()
        third = (await self.call("POST", "/v1/backups", expect=202))["id"]
        self.assertEqual(await self.daemon.died(self._never), crashpoints.EXIT_STATUS)
        self.daemon.close()

        # Started again with a policy that forgets the first snapshot now.
        self.configure("[retention]\ninterval = 0\n", "[retention]\ninterval = 1s\nkeep_last = 1\n")
        self.daemon.start()
        await self.daemon.ready()
        await self.daemon.complete(third)

        async def forget_done():
            jobs = (await self.call("GET", "/v1/jobs?kind=forget"))["jobs"]
            return [j for j in jobs if j["state"] in ("done", "failed")]

        # The first forget (another comes a minute later, for the second).
        job = min(await self.daemon.eventually(forget_done, "the due forget"), key=lambda j: j["requested"])
        self.assertEqual(job["state"], "done", job["error"])
        self.assertEqual(job["result"]["plan"]["forget"], [first])
        self.assertEqual([k["id"] for k in job["result"]["plan"]["keep"]], [second])
        ids = [s["id"] for s in (await self.call("GET", "/v1/snapshots?limit=100"))["snapshots"]]
        self.assertNotIn(first, ids)
        self.assertIn(third, ids)
        # The order this test is about: forget and prune ran before the
        # interrupted scan resumed (each holds the scan lock from its start
        # to its end, so the forget ending first means it ran first).
        resumed = await self.call("GET", f"/v1/snapshots/{third}")
        self.assertLess(job["finished"], resumed["finished"])
        self.assertIn("resumed from its checkpoint", str(resumed["errors"]))

        # Nothing the resumed scan copied from its checkpoint was pruned.
        code, answer = await self.daemon.call(
            "POST", "/v1/restores", {"snapshot": third, "target": os.path.join(base, "restored")})
        self.assertEqual(code, 202, answer)

        async def restored():
            state = await self.call("GET", f"/v1/restores/{answer['id']}")
            return state["state"] in ("done", "failed") and state

        state = await self.daemon.eventually(restored, "the restore")
        self.assertEqual(state["state"], "done", state.get("errors"))
        self.assertEqual(tree_listing(os.path.join(base, "restored", tree.lstrip("/"))), tree_listing(tree))
        with open(os.path.join(self.daemon.state, "private", "rootcap")) as f:
            rootcap = f.read().strip()
        client = TahoeClient(node_url)
        try:
            problems = await missing_from_root(client, rootcap, [third], os.path.join(base, "walk"))
        finally:
            await client.close()
        self.assertEqual(problems, [])
        shutil.rmtree(os.path.join(base, "restored"))
        # a-precious's blob is the only blob of the forgotten snapshot, and
        # the resumed scan needs it.
        self.assertEqual(job["result"]["prune"]["dead_blobs"], 0, job["result"])

    def configure(self, old, new):
        """Change the daemon's config for its next start."""
        config = os.path.join(self.daemon.base, "gridbackup.ini")
        with open(config) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(config, "w") as f:
            f.write(text.replace(old, new))

    async def _never(self):
        return False
