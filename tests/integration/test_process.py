"""
The daemon as a person runs it: ``twistd gridbackup`` in its own process,
with its embedded grid; killed with kill -9 and started again.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.apiclient import APIClient
from tests.support.trees import make_tree, tree_listing

CONFIG = """\
[gridbackup]
state_dir = %(here)s/state
[tahoe]
node_url = embedded
[backup]
paths =
    {tree}
scan_interval = 1h
[api]
listen = tcp:{port}:interface=127.0.0.1
"""


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][0] != "Z"


class Daemon:
    """A twistd process of ours."""

    def __init__(self, testcase, base, port):
        self.testcase = testcase
        self.base = base
        self.port = port
        self.proc = None
        self._api = None

    def start(self):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.log = open(os.path.join(self.base, "twistd.log"), "ab")
        self.proc = subprocess.Popen(
            [twistd, "--nodaemon", "--pidfile=", "gridbackup",
             "--config", os.path.join(self.base, "gridbackup.ini")],
            cwd=self.base, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def token(self):
        with open(os.path.join(self.base, "state", "private", "api_token")) as f:
            return f.read().strip()

    async def call(self, method, path, body=None):
        if self._api is None:
            self._api = APIClient(self.testcase, f"http://127.0.0.1:{self.port}", self.token)
        return await self._api.call(method, path, body)

    async def eventually(self, check, what, timeout=180):
        """Poll the daemon (another process: nothing to wait on but its answers)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = await check()
                if result:
                    return result
            except Exception:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited with {self.proc.returncode} waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await deferLater(reactor, 0.25, lambda: None)

    async def ready(self):
        async def check():
            code, body = await self.call("GET", "/v1/status")
            return code == 200 and body["state"] == "ready" and body

        return await self.eventually(check, "the daemon to be ready")

    async def complete(self, snapshot_id):
        async def check():
            code, body = await self.call("GET", f"/v1/snapshots/{snapshot_id}")
            return code == 200 and body["complete"] and body

        return await self.eventually(check, f"snapshot {snapshot_id} to complete")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def node_pids(state):
    pids = {}
    grid = os.path.join(state, "grid")
    for name in os.listdir(grid):
        try:
            with open(os.path.join(grid, name, "running.process")) as f:
                pids[name] = int(f.read().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            pass
    return pids


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

        # kill -9 the daemon alone: its tahoe nodes keep running.
        old_pids = node_pids(state)
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
        daemon.stop()
        # twistd ends by re-raising the signal that stopped it, after a clean shutdown.
        self.assertIn(daemon.proc.returncode, (0, -signal.SIGTERM))
        self.assertFalse(any(alive(pid) for pid in new_pids.values()))
