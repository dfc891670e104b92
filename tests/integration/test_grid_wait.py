"""
A content read asked for while the grid is away waits for it (up to
``[tahoe] grid_wait``) instead of failing; after the time-out it is a 503
with one line.
"""

import json
import os

import attr
from twisted.internet.defer import Deferred

from gridbackupd.errors import Unavailable
from tests.support.daemoncase import DaemonTestCase


class ContentWaitsForGridTests(DaemonTestCase):
    files = 20

    def largest_file(self):
        found = []
        for top, _, names in os.walk(self.tree):
            for name in names:
                path = os.path.join(top, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    found.append((os.path.getsize(path), path))
        return max(found)[1]

    def grid_away(self):
        """The daemon's grid goes away; the Deferred fires when a read first finds it away."""
        asked = Deferred()
        client = self.daemon._client
        self.away = True

        def away():
            if not self.away:
                return client()
            if not asked.called:
                asked.callback(None)
            raise Unavailable("grid_unavailable", "the grid is not connected yet")
        self.daemon._client = away
        return asked

    def read(self, snapshot_id, path):
        return self.api.http.request(
            "GET", f"{self.api.base}/v1/snapshots/{snapshot_id}/content?path={path}",
            headers={"Authorization": [f"Bearer {self.api.token}"]})

    async def test_a_read_waits_for_the_grid(self):
        snapshot_id = await self.backup()
        path = self.largest_file()
        asked = self.grid_away()
        answered = []
        answer = self.read(snapshot_id, path)
        answer.addBoth(lambda result: answered.append(result) or result)
        await asked
        # The read found the grid away and waits: no answer yet, not an error.
        self.assertEqual(answered, [])
        self.away = False
        response = await answer
        self.assertEqual(response.code, 200)
        with open(path, "rb") as f:
            self.assertEqual(await response.content(), f.read())

    async def test_a_read_gives_up_with_one_line(self):
        snapshot_id = await self.backup()
        config = self.daemon.config
        self.daemon.config = attr.evolve(config, tahoe=attr.evolve(config.tahoe, grid_wait=0.3))
        self.grid_away()
        response = await self.read(snapshot_id, self.largest_file())
        self.assertEqual(response.code, 503)
        doc = json.loads(await response.content())
        self.assertEqual(doc["error"]["code"], "grid_unavailable", doc)
        self.assertEqual(doc["error"]["message"],
                         "gave up after waiting 0.3 s for the grid ([tahoe] grid_wait): "
                         "the grid is not connected yet")
