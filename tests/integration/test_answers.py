"""
Answers that do not mislead (issue 17): a whole daemon in this process on
the shared real grid, asked what a new user asks, answering what happened.
"""

import os

import yaml
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support import REPO
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

    async def test_identical_files_reported_unchanged_and_verified(self):
        await self.backup()
        target = os.path.join(self.base, "restored")
        docs = os.path.join(self.tree, "docs")
        state, first = await self.restore({"target": target, "paths": [docs]})
        self.assertEqual((state, first["unchanged"]), ("done", 0), first)
        state, again = await self.restore({"target": target, "paths": [docs], "verify": True})
        self.assertEqual(state, "done", again)
        self.assertEqual(again["unchanged"], first["files_total"])
        self.assertGreater(again["unchanged"], 0)
        self.assertEqual(again["files_verified"], again["files_total"])
        # A changed copy is neither unchanged nor overwritten: an error says so.
        with open(os.path.join(target, docs.lstrip("/"), "letter.txt"), "ab") as f:
            f.write(b"changed\n")
        state, third = await self.restore({"target": target, "paths": [docs]})
        self.assertEqual((state, third["unchanged"]), ("failed", first["files_total"] - 1), third)

    async def test_metrics_cover_every_restore_state(self):
        from prometheus_client.parser import text_string_to_metric_families

        with open(os.path.join(REPO, "docs", "openapi.yaml")) as f:
            documented = yaml.safe_load(f)["components"]["schemas"]["Restore"]["properties"]["state"]["enum"]
        response = await self.api.http.get(self.api.base + "/metrics",
                                           headers={"Authorization": [f"Bearer {self.api.token}"]})
        text = (await response.content()).decode()
        shown = {s.labels["state"] for family in text_string_to_metric_families(text)
                 for s in family.samples if s.name == "gridbackup_restores"}
        self.assertEqual(shown, set(documented))


class PauseTests(DaemonTestCase):
    timeout = 300
    files = 10

    async def test_pause_survives_a_restart(self):
        code, body = await self.api.call("GET", "/v1/status")
        self.assertIsNone(body["upload"]["paused_by"])
        code, body = await self.api.call("POST", "/v1/uploads/pause")
        self.assertEqual(code, 200, body)
        await self.daemon.stopService()
        await self.start_daemon(self.config_path)
        code, body = await self.api.call("GET", "/v1/status")
        self.assertEqual((body["upload"]["paused"], body["upload"]["paused_by"]), (True, "user"))
        # Uploads do not start by themselves: the snapshot waits with its blobs pending.
        code, body = await self.api.call("POST", "/v1/backups")
        snapshot_id = body["id"]
        done = self.daemon.wait_for_snapshot(snapshot_id)
        for _ in range(600):  # the scan runs in the daemon's threads: poll it, up to 2 minutes
            code, snap = await self.api.call("GET", f"/v1/snapshots/{snapshot_id}")
            if snap["state"] != "scanning" and snap["state"] != "queued":
                break
            await deferLater(reactor, 0.2)
        self.assertEqual(snap["state"], "uploading")
        code, status = await self.api.call("GET", "/v1/status")
        self.assertGreater(status["upload"]["pending_bytes"], 0)
        self.assertEqual(status["upload"]["uploaded_bytes"], 0)
        code, body = await self.api.call("POST", "/v1/uploads/resume")
        self.assertEqual(await done, "complete")
        code, body = await self.api.call("GET", "/v1/status")
        self.assertIsNone(body["upload"]["paused_by"])
