"""
The stuck publish of issue 18, through a real daemon: killed right after a
commit row was recorded and before it was linked, the daemon started again
finishes the backup by itself, with no new request.
"""

import os
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from gridbackupd import crashpoints
from tests.support.process import CONFIG, Daemon, free_port
from tests.support.trees import make_tree


class CrashingDaemon(Daemon):
    """A daemon started with ``GRIDBACKUP_CRASH_AT`` set (or not)."""

    crash_at = None

    def start(self):
        env = dict(os.environ)
        env.pop(crashpoints.CRASH_AT, None)
        if self.crash_at:
            env[crashpoints.TESTING] = "1"
            env[crashpoints.CRASH_AT] = self.crash_at
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.log = open(os.path.join(self.base, "twistd.log"), "ab")
        self.proc = subprocess.Popen(
            [twistd, "--nodaemon", "--pidfile=", "gridbackup",
             "--config", os.path.join(self.base, "gridbackup.ini")],
            cwd=self.base, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    async def exited(self, timeout=180):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("the daemon did not crash")
            await deferLater(reactor, 0.25, lambda: None)
        self.log.close()
        return self.proc.returncode


class StuckPublishTests(TestCase):
    timeout = 400

    async def test_a_recorded_commit_is_linked_at_the_next_start(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        tree = os.path.join(base, "data")
        make_tree(tree, files=30)
        port = free_port()
        with open(os.path.join(base, "gridbackup.ini"), "w") as f:
            # No schedule: the one backup is the one asked for below.
            f.write(CONFIG.format(tree=tree, port=port).replace("scan_interval = 1h", "scan_interval = 0"))
        daemon = CrashingDaemon(self, base, port)
        daemon.crash_at = "publisher.commit_recorded"
        daemon.start()
        self.addCleanup(daemon.stop)
        await daemon.ready()
        code, body = await daemon.call("POST", "/v1/backups")
        self.assertEqual(code, 202)
        self.assertEqual(await daemon.exited(), crashpoints.EXIT_STATUS)

        daemon.crash_at = None
        daemon.start()
        await daemon.ready()
        snapshot = await daemon.complete(body["id"])
        self.assertEqual(snapshot["state"], "complete")
        code, status = await daemon.call("GET", "/v1/status")
        self.assertIsNone(status["upload"]["stalled"])
