"""
Watching through a real daemon process on the shared real grid, with no
POST /v1/backups: a saved file reaches a complete snapshot by itself; a
burst of saves gives few snapshots; a queue overflow (the daemon stopped
with SIGSTOP while more events than the kernel queues are made) degrades
the watch, a full scan runs, and watching resumes.
"""

import json
import os
import signal
import sys
import time

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from gridbackupd.testing.configfile import write_config
from tests.support.daemoncase import DaemonTestCase
from tests.support.process import Daemon, free_port
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import make_tree


def max_queued_events():
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        return int(f.read())


class WatchingDaemonTests(TestCase):
    timeout = 400

    async def setUp(self):
        if not sys.platform.startswith("linux"):
            raise SkipTest("watching is tested on Linux (inotify) only")
        node_url = await shared_node_url()
        self.base = os.path.abspath(self.mktemp())
        self.tree = os.path.join(self.base, "data")
        make_tree(self.tree, files=20)
        port = free_port()
        path = write_config(self.base, node_url, [self.tree], listen=f"tcp:{port}:interface=127.0.0.1")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("watch = no\n", "watch = yes\nsettle = 1s\nsettle_max = 3s\n"))
        self.daemon = Daemon(self, self.base, port)
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        await self.daemon.ready()

    async def status(self):
        code, body = await self.daemon.call("GET", "/v1/status")
        self.assertEqual(code, 200, body)
        return body

    async def snapshots(self):
        code, body = await self.daemon.call("GET", "/v1/snapshots?limit=1000")
        self.assertEqual(code, 200, body)
        return body["snapshots"]

    async def protected_now(self):
        """Watching, every change in a complete snapshot: protected_as_of is now."""
        async def check():
            status = await self.status()
            watch = status["watch"]
            return (watch["state"] == "watching" and watch["dirty"] == 0 and watch["scans_pending"] == 0
                    and status["protected_as_of"] is not None
                    and status["protected_as_of"] > time.time() - 5 and status)

        return await self.daemon.eventually(check, "protection as of now", timeout=240)

    async def content(self, snapshot_id, path):
        api = self.daemon._api
        response = await api.http.get(f"{api.base}/v1/snapshots/{snapshot_id}/content?path={path}",
                                      headers={"Authorization": [f"Bearer {api.token}"]})
        return response.code, await response.content()

    async def test_saves_are_backed_up_by_themselves_and_an_overflow_is_caught(self):
        status = await self.protected_now()
        self.assertGreater(status["watch"]["directories"], 1)
        self.assertIsNotNone(status["watch"]["setup_seconds"])
        first = await self.snapshots()
        self.assertEqual([s["complete"] for s in first], [True], "the start's full scan")

        # One file saved: a complete snapshot holding it, nobody asked.
        saved = os.path.join(self.tree, "docs", "saved.txt")
        with open(saved, "wb") as f:
            f.write(b"saved while watched")
        await self.protected_now()
        after_save = await self.snapshots()
        self.assertEqual(len(after_save), 2)
        newest = after_save[-1]["id"]
        self.assertEqual(await self.content(newest, saved), (200, b"saved while watched"))

        # A burst: 150 saves over about 3 s give a few snapshots, not 150:
        # one per settle_max (3 s) of saves, and one after the last.
        started = time.monotonic()
        for i in range(150):
            with open(os.path.join(self.tree, f"burst{i % 10}.txt"), "wb") as f:
                f.write(b"save %d" % i)
            await deferLater(reactor, 0.02, lambda: None)
        elapsed = time.monotonic() - started
        await self.protected_now()
        after_burst = await self.snapshots()
        made = len(after_burst) - len(after_save)
        self.assertGreaterEqual(made, 1)
        self.assertLessEqual(made, 2 + int(elapsed / 3), (elapsed, [s["id"] for s in after_burst]))
        self.assertTrue(all(s["complete"] for s in after_burst))
        code, body = await self.content(after_burst[-1]["id"], os.path.join(self.tree, "burst9.txt"))
        self.assertEqual((code, body), (200, b"save 149"))

        # An overflow: the daemon cannot read while more events than the
        # kernel queues are made; it says so, scans everything, watches again.
        flood = os.path.join(self.tree, "flood")
        os.makedirs(flood)
        await self.protected_now()
        before = len(await self.snapshots())
        os.kill(self.daemon.proc.pid, signal.SIGSTOP)
        try:
            for i in range(max_queued_events() // 2 + 200):
                with open(os.path.join(flood, f"f{i}"), "wb"):
                    pass
        finally:
            os.kill(self.daemon.proc.pid, signal.SIGCONT)

        async def degraded():
            watch = (await self.status())["watch"]
            with open(os.path.join(self.base, "twistd.log"), "rb") as f:
                logged = b"event queue overflowed" in f.read()
            return (watch["state"] == "degraded" and "overflow" in watch["reason"]) or logged

        await self.daemon.eventually(degraded, "the overflow to be reported")
        await self.protected_now()
        after_flood = await self.snapshots()
        self.assertGreater(len(after_flood), before)
        code, body = await self.content(after_flood[-1]["id"], os.path.join(flood, "f0"))
        self.assertEqual((code, body), (200, b""))


class UnwatchedTests(DaemonTestCase):
    """``[backup] watch = no``: the watch is off and protection dates from the newest complete snapshot."""

    files = 5

    async def test_protected_as_of_is_the_newest_complete_snapshots_start(self):
        code, status = await self.api.call("GET", "/v1/status")
        self.assertEqual(code, 200)
        self.assertEqual((status["watch"]["state"], status["watch"]["reason"]), ("off", "[backup] watch = no"))
        self.assertIsNone(status["protected_as_of"])
        snapshot_id = await self.backup()
        code, snapshot = await self.api.call("GET", f"/v1/snapshots/{snapshot_id}")
        code, status = await self.api.call("GET", "/v1/status")
        self.assertEqual(status["protected_as_of"], snapshot["started"])
        response = await self.api.http.get(self.api.base + "/metrics",
                                           headers={"Authorization": [f"Bearer {self.api.token}"]})
        text = (await response.content()).decode()
        samples = {s.name + json.dumps(s.labels, sort_keys=True): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        self.assertEqual(samples["gridbackup_protected_as_of_timestamp_seconds{}"], snapshot["started"])
        self.assertLess(samples["gridbackup_protection_age_seconds{}"], 600)
        self.assertEqual(samples['gridbackup_watch_state{"state": "off"}'], 1)
