"""
A state_dir moved to another path (or copied back from a backup to a new
place) keeps working: its snapshots list, browse and back up again, although
the database recorded their logs under the old path.
"""

import os
import shutil

from tests.support.daemoncase import DaemonTestCase, write_config


class MovedStateDirTests(DaemonTestCase):
    files = 20

    async def test_moved_state_dir(self):
        first = await self.backup()
        await self.daemon.stopService()
        moved = os.path.join(self.base, "elsewhere")
        os.makedirs(moved)
        shutil.move(os.path.join(self.base, "state"), os.path.join(moved, "state"))
        await self.start_daemon(write_config(moved, self.node_url, [self.tree]))
        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}/files?path={self.tree}")
        self.assertEqual(code, 200, doc)
        self.assertEqual(len(doc["entries"]), len(os.listdir(self.tree)))
        with open(os.path.join(self.tree, "new.txt"), "wb") as f:
            f.write(b"after the move\n" * 100)
        second = await self.backup()
        code, doc = await self.api.call("GET", f"/v1/snapshots/{second}/files?path={self.tree}")
        self.assertEqual(code, 200, doc)
        self.assertIn(f"{self.tree}/new.txt", [e["path"] for e in doc["entries"]])
