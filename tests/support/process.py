"""
The daemon as a person runs it, for tests: ``twistd gridbackup`` in its
own process with an embedded grid, polled through its API (there is
nothing else to wait on in another process).
"""

import os
import signal
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support.apiclient import APIClient

#: A config for such a daemon: ``CONFIG.format(tree=..., port=...)``.
CONFIG = """\
[gridbackup]
state_dir = %(here)s/state
[tahoe]
node_url = embedded
[backup]
paths =
    {tree}
scan_interval = 1h
watch = no
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
