"""
The daemon as a person runs it: ``twistd gridbackup`` in its own process,
with its embedded grid; killed with kill -9 and started again.
"""

import json
import os
import shutil
import signal
import sys

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.process import CONFIG, Daemon, alive, free_port, node_pids
from tests.support.trees import make_tree, tree_listing


class ProcessTests(TestCase):
    timeout = 400

    async def test_kill_9_and_restart(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        tree = os.path.join(base, "data")
        make_tree(tree, files=60)
        port = free_port()
        with open(os.path.join(base, "gridbackup.ini"), "w") as f:
            f.write(CONFIG.format(tree=tree, port=port))
        daemon = Daemon(self, base, port)
        daemon.start()
        self.addCleanup(daemon.stop)
        state = os.path.join(base, "state")

        status = await daemon.ready()
        self.assertGreaterEqual(status["grid"]["servers_connected"], 3)
        # The client node is where the design says, so `tahoe -d` works on it.
        self.assertTrue(os.path.exists(os.path.join(state, "grid", "client", "node.url")))
        code, body = await daemon.call("POST", "/v1/backups")
        self.assertEqual(code, 202)
        await daemon.complete(body["id"])
        code, before = await daemon.call("GET", "/v1/snapshots")
        node_ids = {}
        for name in os.listdir(os.path.join(state, "grid")):
            path = os.path.join(state, "grid", name, "my_nodeid")
            if os.path.exists(path):
                with open(path) as f:
                    node_ids[name] = f.read()
        self.assertTrue(node_ids, "the grid's nodes have ids")

        # kill -9 the daemon alone: its tahoe nodes keep running.
        old_pids = node_pids(state)
        self.assertTrue(old_pids, "the grid's nodes are running")
        daemon.kill9()
        self.assertTrue(any(alive(pid) for pid in old_pids.values()))

        daemon.start()
        await daemon.ready()
        code, after = await daemon.call("GET", "/v1/snapshots")
        self.assertEqual(after["snapshots"][:len(before["snapshots"])], before["snapshots"])
        for name, node_id in node_ids.items():
            with open(os.path.join(state, "grid", name, "my_nodeid")) as f:
                self.assertEqual(f.read(), node_id)
        self.assertFalse(any(alive(pid) for pid in old_pids.values()))

        # The data uploaded before the kill restores.
        target = os.path.join(base, "restored")
        code, body = await daemon.call("POST", "/v1/restores", {"snapshot": "latest", "target": target})
        self.assertEqual(code, 202, body)

        async def restored():
            code, status = await daemon.call("GET", f"/v1/restores/{body['id']}")
            return status["state"] in ("done", "failed") and status

        status = await daemon.eventually(restored, "the restore")
        self.assertEqual(status["state"], "done", status["errors"])
        self.assertEqual(tree_listing(os.path.join(target, tree.lstrip("/"))), tree_listing(tree))

        # A new machine with nothing but the root cap, on the same grid,
        # started the way a person starts it, recovers the same snapshots.
        other = os.path.join(base, "new-machine")
        os.makedirs(os.path.join(other, "state", "private"), mode=0o700)
        shutil.copy(os.path.join(state, "private", "rootcap"),
                    os.path.join(other, "state", "private", "rootcap"))
        with open(os.path.join(state, "grid", "client", "node.url")) as f:
            node_url = f.read().strip()
        other_port = free_port()
        with open(os.path.join(other, "gridbackup.ini"), "w") as f:
            f.write(CONFIG.format(tree=tree, port=other_port).replace("embedded", node_url)
                    .replace("scan_interval = 1h", "scan_interval = 0"))
        recovered = Daemon(self, other, other_port)
        recovered.start()
        self.addCleanup(recovered.stop)
        await recovered.ready()
        code, listing = await recovered.call("GET", "/v1/snapshots")
        self.assertEqual([s["id"] for s in listing["snapshots"]], [s["id"] for s in after["snapshots"]])
        self.assertTrue(listing["snapshots"])
        self.assertTrue(all(s["complete"] for s in listing["snapshots"]))
        # What a person at the new machine's terminal sees.
        gridbackup = os.path.join(os.path.dirname(sys.executable), "gridbackup")
        out, err, code = await getProcessOutputAndValue(
            gridbackup, ["--config", os.path.join(other, "gridbackup.ini"), "recover"],
            env=dict(os.environ))
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["snapshots"], len(listing["snapshots"]))
        recovered.stop()

        # A clean stop stops the grid too.
        new_pids = node_pids(state)
        self.assertTrue(new_pids, "the grid's nodes are running")
        daemon.stop()
        # twistd ends by re-raising the signal that stopped it, after a clean shutdown.
        self.assertIn(daemon.proc.returncode, (0, -signal.SIGTERM))
        self.assertFalse(any(alive(pid) for pid in new_pids.values()))
