"""
What the ``gridbackup`` command says happened (issue 17), against a whole
daemon in this process on the shared real grid, one of whose configured
backup paths does not exist.
"""

import io
import json
import os

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.cli import main as cli
from gridbackupd.cli import render
from tests.support.daemoncase import TCP_ANY_PORT, DaemonTestCase, write_config
from tests.support.sharedgrid import shared_node_url


async def gridbackup(*argv):
    """Run the command in a thread: (exit code, stdout as bytes, stderr as text)."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline=""), io.StringIO()
    code = await deferToThread(cli.main, list(argv), out, err)
    out.flush()
    return code, out.buffer.getvalue(), err.getvalue()


class OutputTests(DaemonTestCase):
    timeout = 300
    files = 10

    async def _start(self):
        self.node_url = await shared_node_url()
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.tree = os.path.join(self.base, "data")
        self.make_tree()
        self.missing = os.path.join(self.base, "not-there")
        self.config_path = write_config(self.base, self.node_url, [self.tree, self.missing],
                                        listen=TCP_ANY_PORT)
        await self.start_daemon(self.config_path)

    def gb(self, *argv):
        return gridbackup("--config", self.config_path, *argv)

    async def test_missing_path_show_and_unknown_restore_paths(self):
        code, out, err = await self.gb("status")
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"configuration warning: [backup] paths: {self.missing} does not exist\n".encode(), out)
        code, out, err = await self.gb("backup", "--wait")
        self.assertEqual(code, 0, err)
        snapshot_id = out.decode().splitlines()[0]
        self.assertIn(b", 1 errors", out)  # the path that is not there

        code, out, err = await self.gb("show", snapshot_id)
        self.assertEqual((code, err), (0, ""))
        text = out.decode()
        self.assertIn(f"snapshot {snapshot_id}: ", text)
        self.assertIn("  errors: 1\n", text)
        self.assertIn(f"    {self.missing}: does not exist", text)
        self.assertNotIn("vanished", text)
        self.assertIn("changes (the first snapshot): ", text)
        self.assertIn(f"paths: {self.tree}, {self.missing}", text)
        code, out, err = await self.gb("show", "latest")
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"snapshot {snapshot_id}: ".encode(), out)
        letter = os.path.join(self.tree, "docs", "letter.txt")
        code, out, err = await self.gb("history", letter)
        self.assertEqual((code, err), (0, ""))
        lines = out.decode().splitlines()
        self.assertTrue(lines[0].startswith("SNAPSHOT "), lines)
        self.assertRegex(lines[1], rf"^{snapshot_id} .* added +\S+ ")
        code, out, err = await self.gb("history", letter, "--json")
        self.assertEqual([v["change"] for v in json.loads(out)["versions"]], ["added"])
        code, out, err = await self.gb("history", os.path.join(self.tree, "never"))
        self.assertIn(b"no version of this path in any snapshot", out)

        target = os.path.join(self.base, "restored")
        typo = os.path.join(self.tree, "dcos")
        code, out, err = await self.gb("restore", snapshot_id, os.path.join(self.tree, "docs"), typo,
                                       "--target", target)
        self.assertEqual(code, 1, err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(typo, err)
        self.assertNotIn(os.path.join(self.tree, "docs,"), err)
        self.assertFalse(os.path.exists(target))

        # --dry-run prints the plan; --verify the count verified.
        code, out, err = await self.gb("restore", snapshot_id, os.path.join(self.tree, "docs"),
                                       "--target", target, "--dry-run")
        self.assertEqual(code, 0, err)
        text = out.decode()
        self.assertIn("would restore ", text)
        self.assertRegex(text, r"from \d+ packs in \d+ ranged GETs")
        self.assertIn("pending (not uploaded yet): 0 files", text)
        self.assertIn("dry run: nothing written", text)
        self.assertNotIn("0/0 files", text)
        self.assertFalse(os.path.exists(target))
        code, out, err = await self.gb("restore", snapshot_id, "--target", target, "--verify")
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode().splitlines()[-1], r"; [1-9]\d* files verified$")
        code, out, err = await self.gb("restore", snapshot_id, "--target", target, "--verify")
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode().splitlines()[-1],
                         r"\(([1-9]\d*) already there and unchanged\); \1 files verified$")

        # ls /: the directories above the backed-up paths, without question marks.
        code, out, err = await self.gb("ls", snapshot_id, "/")
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"?", out)
        top = self.base.split("/")[1]
        self.assertRegex(out.decode(), rf"(?m)^d +- \(not backed up\) +/{top}$")

        # forget without a policy: a configuration matter (exit 2), with the way to set one.
        code, out, err = await self.gb("forget", "--dry-run")
        self.assertEqual(code, 2, err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("[retention]", err)
        self.assertIn("keep_daily = 7", err)

        # jobs as the API lists them: newest first.
        first_job = (await self.gb("job", "prune"))[1].decode().splitlines()[0]
        second_job = (await self.gb("job", "prune"))[1].decode().splitlines()[0]
        code, out, err = await self.gb("jobs")
        self.assertEqual(code, 0, err)
        ids = [line.split()[0] for line in out.decode().splitlines()]
        self.assertLess(ids.index(second_job), ids.index(first_job))


class RenderTests(SynchronousTestCase):
    def test_restore_progress_never_shows_0_of_0(self):
        self.assertEqual(render.restore_progress({"state": "queued", "files_total": 0}, False), "queued")
        self.assertEqual(render.restore_progress({"state": "running", "files_total": 0, "files_done": 0}, False),
                         "running: reading the snapshot")
        self.assertEqual(render.restore_progress({"state": "running", "files_total": 0, "waiting_for": "grid"},
                                                 False), "running: waiting for the grid")
        self.assertIn("1/2 files", render.restore_progress(
            {"state": "running", "files_total": 2, "files_done": 1, "bytes_done": 1, "bytes_total": 2}, False))

    def test_backup_wait_names_a_pause(self):
        self.assertEqual(render.upload_progress({"paused": True, "paused_by": "user", "pending_bytes": 2048}, False),
                         "uploads paused by user (kept across restarts): 'gridbackup resume' starts them "
                         "again: 2.0 KiB to go")
        reason = "[upload] allow_if failed (exit status 1)"
        self.assertEqual(render.upload_progress({"paused": True, "paused_by": "allow_if", "pending_bytes": 2048,
                                                 "paused_reason": reason}, False),
                         f"uploads paused by allow_if: {reason}: 2.0 KiB to go")
        self.assertEqual(render.upload_progress({"paused": False, "pending_bytes": 2048}, False),
                         "uploading: 2.0 KiB to go")
        lines = render.status_lines({"state": "ready", "upload": {"paused": True, "paused_by": "user"}}, False)
        self.assertIn("uploads paused by user (kept across restarts): 'gridbackup resume' starts them again",
                      lines)

    def test_status_says_how_the_watch_goes(self):
        import time

        lines = render.status_lines({"state": "ready", "protected_as_of": time.time(),
                                     "watch": {"state": "watching", "reason": None, "directories": 12345}}, False)
        self.assertIn("watch: watching, 12,345 directories", lines)
        self.assertIn("protected as of: now", lines)
        lines = render.status_lines({"state": "ready", "protected_as_of": time.time() - 7200,
                                     "watch": {"state": "degraded", "directories": 3,
                                               "reason": "the kernel's event queue overflowed"}}, False)
        self.assertIn("watch: degraded, 3 directories (the kernel's event queue overflowed)", lines)
        self.assertIn("protected as of: 2 hours ago", lines)
