"""
Answers that do not mislead (issue 17): a whole daemon in this process on
the shared real grid, asked what a new user asks, answering what happened.
"""

import os

from tests.support.daemoncase import DaemonTestCase


class RestoreAnswerTests(DaemonTestCase):
    timeout = 300
    files = 10

    async def test_unknown_paths_refused_before_anything_is_created(self):
        await self.backup()
        target = os.path.join(self.base, "restored")
        typo = os.path.join(self.tree, "dcos")
        elsewhere = "/no/such/dir"
        code, body = await self.api.call("POST", "/v1/restores", {
            "target": target, "paths": [os.path.join(self.tree, "docs"), typo, elsewhere]})
        self.assertEqual(code, 404, body)
        self.assertEqual(body["error"]["code"], "unknown_path")
        self.assertEqual(body["error"]["paths"], [typo, elsewhere])
        self.assertIn(typo, body["error"]["message"])
        self.assertFalse(os.path.exists(target))
        code, listing = await self.api.call("GET", "/v1/restores")
        self.assertEqual(listing["restores"], [])
        # An entry, a directory above the backed-up tree (virtual) and / are all there.
        state, status = await self.restore({
            "target": target, "paths": [os.path.join(self.tree, "docs", "letter.txt"), self.base, "/"],
            "dry_run": True})
        self.assertEqual(state, "done", status)
        self.assertGreater(status["files_total"], 0)
