"""
What the ``gridbackup`` command says happened (issue 17), against a whole
daemon in this process on the shared real grid, one of whose configured
backup paths does not exist.
"""

import io
import os

from twisted.internet.threads import deferToThread

from gridbackupd.cli import main as cli
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

        target = os.path.join(self.base, "restored")
        typo = os.path.join(self.tree, "dcos")
        code, out, err = await self.gb("restore", snapshot_id, os.path.join(self.tree, "docs"), typo,
                                       "--target", target)
        self.assertEqual(code, 1, err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(typo, err)
        self.assertNotIn(os.path.join(self.tree, "docs,"), err)
        self.assertFalse(os.path.exists(target))
