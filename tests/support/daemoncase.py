"""
A whole daemon in the test process, on the shared real grid, driven
through its HTTP API: the setup the daemon, API and CLI tests share.
"""

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from gridbackupd.config import parse_config
from gridbackupd.service import from_config
from gridbackupd.testing.configfile import TCP_ANY_PORT, write_config  # noqa: F401 (for tests)
from tests.support.apiclient import APIClient
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import make_tree


def api_client(testcase, daemon, token=None):
    base = f"http://127.0.0.1:{daemon.port.getHost().port}"
    return APIClient(testcase, base, daemon.token if token is None else token)


class DaemonTestCase(TestCase):
    """Starts a daemon backing up ``self.tree`` (``files`` files) before each test."""

    timeout = 240
    files = 120
    listen = None  # an endpoint string; None: TCP on a free loopback port, with self.api
    extra_config = ""  # more INI lines, after [api]

    def make_tree(self):
        make_tree(self.tree, files=self.files)

    async def setUp(self):
        await self._start()

    async def _start(self):
        self.node_url = await shared_node_url()
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.tree = os.path.join(self.base, "data")
        self.make_tree()
        self.config_path = write_config(
            self.base, self.node_url, [self.tree], listen=self.listen or TCP_ANY_PORT, extra=self.extra_config)
        await self.start_daemon(self.config_path)

    async def start_daemon(self, config_path):
        self.daemon = from_config(reactor, parse_config(config_path))
        self.daemon.startService()
        self.addCleanup(lambda daemon=self.daemon: daemon.running and daemon.stopService())
        self.assertEqual(await self.daemon.when_ready(), "ready", self.daemon.error)
        if not self.listen:
            self.api = api_client(self, self.daemon)

    async def backup(self):
        code, body = await self.api.call("POST", "/v1/backups")
        self.assertEqual(code, 202, body)
        self.assertEqual(await self.daemon.wait_for_snapshot(body["id"]), "complete")
        return body["id"]

    async def restore(self, request):
        code, body = await self.api.call("POST", "/v1/restores", request)
        self.assertEqual(code, 202, body)
        state = await self.daemon.wait_for_restore(body["id"])
        code, status = await self.api.call("GET", f"/v1/restores/{body['id']}")
        self.assertEqual(code, 200)
        return state, status
