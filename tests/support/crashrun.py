"""
A daemon the crash matrix kills: ``twistd gridbackup`` in a session of its
own (so that its process group is its own to kill), started with or
without ``GRIDBACKUP_CRASH_AT``, and the tahoe processes it leaves behind.

Two ways to die, as a machine can:

- ``"daemon"``: the daemon alone (the crash point's ``os._exit(137)``); the
  tahoe nodes it talks to live on;
- ``"group"``: the daemon's whole process group and every tahoe node it
  started (each node runs in a session of its own), all with SIGKILL.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gridbackupd import crashpoints
from tests.support.process import Daemon, alive, node_pids

MODES = ("daemon", "group")

#: Packs in flight at most: a crash sends at most this many again.
PARALLEL = 4

#: A config with no schedule of its own: ``CONFIG.format(node_url=, tree=, port=, parallel=)``.
CONFIG = """\
[gridbackup]
state_dir = %(here)s/state
hostname = crashhost
[tahoe]
node_url = {node_url}
[backup]
paths =
    {tree}
scan_interval = 0
watch = no
checkpoint_interval = 0
# Every new log an increment: a forget of its parent then rewrites it.
full_every = 1000
[upload]
parallel = {parallel}
[retention]
interval = 0
[api]
listen = tcp:{port}:interface=127.0.0.1
"""


class NotReached(AssertionError):
    """The scenario finished without passing its crash point."""


class CrashDaemon(Daemon):
    """A ``Daemon`` started in its own session, with a crash point or none."""

    def __init__(self, testcase, base, port, node_url, hook=None):
        super().__init__(testcase, base, port)
        self.state = os.path.join(base, "state")
        # Every crash point each life of this daemon passed, one a line.
        self.trace = os.path.join(base, "trace")
        # More environment for the next starts (a scenario's test settings).
        self.extra_env: dict[str, str] = {}
        with open(os.path.join(base, "gridbackup.ini"), "w") as f:
            f.write(CONFIG.format(node_url=node_url, tree=os.path.join(base, "data"), port=port,
                                  parallel=PARALLEL))
            if hook is not None:
                # Notifications to the test's webhook (the "notify" scenario's).
                f.write(f"[notify]\nwebhook = {hook}\n")

    def start(self, crash_at=None):
        env = dict(os.environ)
        env.pop(crashpoints.CRASH_AT, None)
        env[crashpoints.TESTING] = "1"
        env[crashpoints.TRACE] = self.trace
        env.update(self.extra_env)
        if crash_at:
            env[crashpoints.CRASH_AT] = crash_at
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.log = open(os.path.join(self.base, "twistd.log"), "ab")
        self.log.write(f"--- crash matrix: start, crash at {crash_at}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            [twistd, "--nodaemon", "--pidfile=", "gridbackup",
             "--config", os.path.join(self.base, "gridbackup.ini")],
            cwd=self.base, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )

    def trace_mark(self):
        """Where the trace ends now: ``passes(mark)`` reads what comes after."""
        return os.path.getsize(self.trace) if os.path.exists(self.trace) else 0

    def passes(self, mark=0):
        """The crash points passed since ``mark``, in order, across the daemon's lives."""
        if not os.path.exists(self.trace):
            return []
        with open(self.trace, "rb") as f:
            f.seek(mark)
            return f.read().decode().split()

    def nodes(self):
        """The pids of the embedded grid's running nodes (none with a node_url)."""
        if not os.path.isdir(os.path.join(self.state, "grid")):
            return {}
        return {name: pid for name, pid in node_pids(self.state).items() if alive(pid)}

    async def died(self, finished, timeout=120):
        """
        Wait for the daemon to end by itself; ``finished()`` (awaited between
        polls) says the scenario's work is done without it: NotReached.
        """
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            try:
                done = await finished()
            except Exception:
                done = False
            if done and self.proc.poll() is None:
                raise NotReached("the scenario finished without reaching the point")
            if time.monotonic() > deadline:
                raise NotReached(f"the daemon neither crashed nor finished in {timeout} s")
            await deferLater(reactor, 0.1, lambda: None)
        return self.proc.returncode

    def kill_group(self):
        """SIGKILL the daemon's process group and every node of its grid."""
        nodes = list(self.nodes().values())
        for pgid in {self.proc.pid, *nodes}:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for pid in nodes:
            wait_gone(pid)

    def close(self):
        """Stop the daemon (SIGTERM) and close its log; the grid stops with it."""
        self.stop()
        self.proc = None
        self._api = None


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def tahoe_processes(state):
    """Every live ``tahoe`` process that runs a node under ``state`` (by its cwd or arguments)."""
    grid = os.path.realpath(os.path.join(state, "grid")) + os.sep
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status", "cwd"]):
        args = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if not any("tahoe" in a or "allmydata" in a for a in args):
            continue
        places = [proc.info["cwd"] or ""] + [os.path.realpath(a) for a in args if os.path.isabs(a)]
        if any((p + os.sep).startswith(grid) for p in places):
            found.append(proc.info["pid"])
    return sorted(found)
