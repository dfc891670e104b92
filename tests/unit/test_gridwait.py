"""
restore.gridwait on a task.Clock: shares that cannot be found are the
grid being away only while too few storage servers are connected.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.errors import TahoeSharesMissing, TahoeUnavailable
from gridbackupd.restore.engine import RestoreProgress
from gridbackupd.restore.gridwait import GridTimeout, GridWait

CAP = "URI:CHK:abcdefghijklmnop:qrstuvwxyz:2:3:1000"


class Node:
    """A client whose downloads find no shares, and which says how many servers it has."""

    min_servers = 3

    def __init__(self, connected):
        self.connected = connected
        self.downloads = 0
        self.shares_back = False

    async def connected_servers(self):
        if self.connected is None:
            raise TahoeUnavailable("connected_servers", None, "connection refused", sent=False)
        return self.connected

    async def download(self):
        self.downloads += 1
        if self.shares_back:
            return b"data"
        raise TahoeSharesMissing("download", 410, "NotEnoughSharesError: ...", cap=CAP)


class GridWaitTests(SynchronousTestCase):
    def call(self, node, timeout=10.0):
        self.clock = Clock()
        self.progress = RestoreProgress()
        wait = GridWait(self.clock, lambda: node, timeout, self.progress)
        return Deferred.fromCoroutine(wait.call(lambda client: client.download()))

    def test_missing_shares_with_every_server_connected_fail_at_once(self):
        node = Node(connected=3)
        d = self.call(node)
        error = self.failureResultOf(d, TahoeSharesMissing).value
        self.assertEqual(error.status, 410)
        self.assertEqual((node.downloads, self.progress.waiting_for), (1, None))

    def test_missing_shares_with_servers_gone_wait_for_them(self):
        node = Node(connected=1)
        d = self.call(node)
        self.assertNoResult(d)
        self.assertEqual(self.progress.waiting_for, "grid")
        self.clock.advance(1)
        self.assertGreater(node.downloads, 1)
        node.shares_back = True
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d), b"data")
        self.assertEqual((self.progress.waiting_for, self.progress.waiting_since), (None, None))

    def test_gives_up_after_the_timeout_with_one_line(self):
        for connected, says in ((1, "only 1 of 3 storage servers connected, too few to find the shares "
                                    "of URI:CHK:abcdef… (download: HTTP 410)"),
                                (None, "the node does not say which servers it has")):
            node = Node(connected=connected)
            d = self.call(node, timeout=10.0)
            self.clock.pump([1.0] * 12)
            error = self.failureResultOf(d, GridTimeout).value
            self.assertIn("gave up after waiting 10 s for the grid ([tahoe] grid_wait): ", str(error))
            self.assertIn(says, str(error))
            self.assertNotIn("\n", str(error))
            self.assertNotIn("qrstuvwxyz", str(error))
            self.assertIsNone(self.progress.waiting_for)
