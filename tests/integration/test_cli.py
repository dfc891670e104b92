"""
The ``gridbackup`` command against a whole daemon in this process (on the
shared real grid).  The command is synchronous, so it runs in a thread
(``main()`` with captured output) while the reactor serves the daemon; one
test runs it as a real subprocess.
"""

import io
import json
import os
import sys

from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.cli import client, render
from gridbackupd.cli import main as cli
from gridbackupd.statedir import StateDir
from tests.support import REPO
from tests.support.daemoncase import DaemonTestCase, write_config

SRC = os.path.join(REPO, "src")


def _output():
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")


def _text(stream):
    stream.flush()
    return stream.buffer.getvalue().decode("utf-8", "replace")


async def gridbackup(*argv):
    """Run the command in a thread: (exit code, stdout as bytes, stderr as text)."""
    out, err = _output(), io.StringIO()
    code = await deferToThread(cli.main, list(argv), out, err)
    out.flush()
    return code, out.buffer.getvalue(), err.getvalue()


class OfflineTests(SynchronousTestCase):
    """What needs no daemon: usage, configuration, an unreachable daemon, endpoints."""

    def main(self, *argv):
        out, err = _output(), io.StringIO()
        code = cli.main(list(argv), out, err)
        return code, _text(out), err.getvalue()

    def assertOneLine(self, err):
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("gridbackup: "), err)

    def test_usage(self):
        for argv in ([], ["frobnicate"], ["ls"], ["key"], ["status", "--bogus"]):
            code, out, err = self.main(*argv)
            self.assertEqual(code, 2, argv)
            self.assertOneLine(err)

    def test_missing_config(self):
        code, out, err = self.main("--config", "/nonexistent/gridbackup.ini", "status")
        self.assertEqual(code, 2)
        self.assertOneLine(err)
        self.assertIn("/nonexistent/gridbackup.ini", err)

    def test_config_from_environment(self):
        self.patch(os, "environ", {"GRIDBACKUP_CONFIG": "/nonexistent/env.ini"})
        code, out, err = self.main("status")
        self.assertEqual(code, 2)
        self.assertIn("/nonexistent/env.ini", err)

    def test_unreachable(self):
        base = self.mktemp()
        os.makedirs(base)
        path = write_config(base, "http://127.0.0.1:9/", ["/tmp"])
        state = os.path.join(base, "state")
        os.makedirs(os.path.join(state, "private"))
        with open(os.path.join(state, "private", "api_token"), "w") as f:
            f.write("token\n")
        with open(os.path.join(state, "api_endpoint"), "w") as f:
            f.write("tcp:1:interface=127.0.0.1\n")
        # Nobody holds the state directory's lock: the endpoint is stale, nothing is tried.
        code, out, err = self.main("--config", path, "status")
        self.assertEqual(code, 3)
        self.assertOneLine(err)
        self.assertIn("not running", err)
        # A daemon holds it, but answers nowhere.
        lock = StateDir(os.path.abspath(state)).lock()
        self.addCleanup(lock.release)
        code, out, err = self.main("--config", path, "status")
        self.assertEqual(code, 3)
        self.assertOneLine(err)
        self.assertIn("cannot reach the daemon", err)
        with open(os.path.join(state, "api_endpoint"), "w") as f:
            f.write("unix:" + os.path.abspath(os.path.join(base, "nothing.sock")) + "\n")
        code, out, err = self.main("--config", path, "snapshots")
        self.assertEqual(code, 3)
        self.assertOneLine(err)

    def test_no_token(self):
        base = self.mktemp()
        os.makedirs(base)
        path = write_config(base, "http://127.0.0.1:9/", ["/tmp"])
        # Never started: no endpoint written.
        code, out, err = self.main("--config", path, "status")
        self.assertEqual(code, 3)
        self.assertOneLine(err)
        os.makedirs(os.path.join(base, "state"))
        with open(os.path.join(base, "state", "api_endpoint"), "w") as f:
            f.write("tcp:1:interface=127.0.0.1\n")
        lock = StateDir(os.path.abspath(os.path.join(base, "state"))).lock()
        self.addCleanup(lock.release)
        code, out, err = self.main("--config", path, "status")
        self.assertEqual(code, 1)
        self.assertOneLine(err)
        self.assertIn("api_token", err)

    def test_recover_installs_the_root_cap(self):
        base = self.mktemp()
        os.makedirs(base)
        path = write_config(base, "http://127.0.0.1:9/", ["/tmp"])
        cap = "URI:DIR2:" + "a" * 26 + ":" + "b" * 52
        cap_file = os.path.join(base, "paper.txt")
        with open(cap_file, "w") as f:
            f.write(cap + "\n")
        # No daemon running: the cap is put in place, and the next step said.
        code, out, err = self.main("--config", path, "recover", "--rootcap-file", cap_file)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Start the daemon", out)
        installed = os.path.join(base, "state", "private", "rootcap")
        with open(installed) as f:
            self.assertEqual(f.read().strip(), cap)
        self.assertEqual(os.stat(installed).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.dirname(installed)).st_mode & 0o777, 0o700)
        # A daemon starting there (its lock taken, no API token yet): the same next step, not an error.
        lock = StateDir(os.path.abspath(os.path.join(base, "state"))).lock()
        self.addCleanup(lock.release)
        code, out, err = self.main("--config", path, "recover")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Start the daemon", out)
        # Another cap is never written over the one in place; garbage is refused.
        with open(cap_file, "w") as f:
            f.write(cap.replace("a", "c") + "\n")
        code, out, err = self.main("--config", path, "recover", "--rootcap-file", cap_file)
        self.assertEqual(code, 1)
        self.assertIn("another root cap", err)
        with open(cap_file, "w") as f:
            f.write("not a cap\n")
        code, out, err = self.main("--config", path, "recover", "--rootcap-file", cap_file)
        self.assertEqual(code, 1)
        self.assertOneLine(err)

    def test_parse_endpoint(self):
        self.assertEqual(client.parse_endpoint("tcp:7234:interface=127.0.0.1"), ("tcp", "127.0.0.1", 7234))
        self.assertEqual(client.parse_endpoint("tcp:7234"), ("tcp", "127.0.0.1", 7234))
        self.assertEqual(client.parse_endpoint("tcp:port=80:interface=0.0.0.0"), ("tcp", "127.0.0.1", 80))
        self.assertEqual(client.parse_endpoint("tcp6:7234:interface=\\:\\:1"), ("tcp", "::1", 7234))
        self.assertEqual(client.parse_endpoint("unix:/run/g/api.sock:mode=600"), ("unix", "/run/g/api.sock"))
        self.assertRaises(ValueError, client.parse_endpoint, "ssl:443")

    def test_progress_plain_when_not_a_terminal(self):
        out = io.StringIO()
        progress = render.Progress(out, tty=False)
        for i in range(5):
            progress.show(f"step {i}")
        progress.done()
        self.assertEqual(out.getvalue(), "step 0\n")
        out = io.StringIO()
        progress = render.Progress(out, tty=True)
        progress.show("one")
        progress.show("two")
        progress.done()
        self.assertEqual(out.getvalue().count("\r"), 4)  # two drawn, one line cleared
        self.assertTrue(out.getvalue().endswith("\r"))

    def test_bar(self):
        self.assertEqual(render.bar(1, 4, width=8), "[##......]  25.0%")
        self.assertEqual(render.bar(5, 0), "")


class CommandTests(DaemonTestCase):
    timeout = 300
    files = 30

    def gb(self, *argv):
        return gridbackup("--config", self.config_path, *argv)

    async def test_commands(self):
        code, out, err = await self.gb("status")
        self.assertEqual((code, err), (0, ""))
        self.assertIn(b"daemon: ready", out)
        self.assertIn(b"last complete snapshot: none yet", out)
        self.assertNotIn(b"\r", out)
        code, out, err = await self.gb("status", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["state"], "ready")

        code, out, err = await self.gb("backup", "--wait")
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        first = lines[0]
        self.assertIn(f"snapshot {first}: complete", lines[-1])
        self.assertNotIn(b"\r", out)

        code, out, err = await self.gb("snapshots")
        self.assertEqual(code, 0)
        self.assertIn(first.encode(), out)
        self.assertIn(b"complete", out)

        code, out, err = await self.gb("ls", "latest", self.tree)
        self.assertEqual(code, 0, err)
        self.assertIn(os.fsencode(self.tree) + b"/caf\xe9-latin1.txt\n", out)
        self.assertIn(b"link-to-letter -> docs/letter.txt", out)
        code, out_r, err = await self.gb("ls", "-r", first, self.tree)
        self.assertEqual(code, 0)
        self.assertGreater(out_r.count(b"\n"), out.count(b"\n"))
        code, out, err = await self.gb("ls", "latest", os.path.join(self.tree, "docs", "letter.txt"))
        self.assertEqual(code, 0, err)
        self.assertEqual(out.count(b"\n"), 1)
        self.assertIn(b" 3300 ", out)
        code, out, err = await self.gb("ls", "latest", self.tree + "/not-there")
        self.assertEqual(code, 1)
        self.assertIn("not in snapshot", err)

        for rel in ("photos/big.raw", "tiny", "caf\udce9-latin1.txt"):
            code, out, err = await self.gb("cat", "latest", os.path.join(self.tree, rel))
            self.assertEqual(code, 0, err)
            with open(os.path.join(self.tree, rel), "rb") as f:
                self.assertEqual(out, f.read(), rel)
        code, out, err = await self.gb("cat", "latest", self.tree)
        self.assertEqual(code, 1)
        self.assertIn("not a file", err)

        with open(os.path.join(self.tree, "added.txt"), "w") as f:
            f.write("added\n")
        code, out, err = await self.gb("backup", "--wait")
        self.assertEqual(code, 0, err)
        second = out.decode().splitlines()[0]
        code, out, err = await self.gb("diff", first, second)
        self.assertEqual(code, 0, err)
        self.assertIn(b"+ " + os.fsencode(self.tree) + b"/added.txt\n", out)

        target = os.path.join(self.base, "restored")
        code, out, err = await self.gb("restore", "latest", os.path.join(self.tree, "docs"),
                                       "--target", target)
        self.assertEqual(code, 0, err)
        self.assertIn(b": done", out.splitlines()[-1])
        restored = os.path.join(target, self.tree.lstrip("/"), "docs", "letter.txt")
        with open(restored, "rb") as f:
            self.assertEqual(f.read(), b"Dear grid,\n" * 300)
        code, out, err = await self.gb("restore", "latest", "--target", target + "2", "--no-wait")
        self.assertEqual(code, 0, err)
        restore_id = out.decode().strip()
        self.assertTrue(restore_id.startswith("r-"))
        await self.daemon.wait_for_restore(restore_id)
        code, out, err = await self.gb("restore", "no-such-snapshot", "--target", target)
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1)

        code, out, err = await self.gb("pause")
        self.assertEqual(code, 0, err)
        code, out, err = await self.gb("status")
        self.assertIn(b"(paused)", out)
        code, out, err = await self.gb("resume")
        self.assertEqual(code, 0, err)
        code, out, err = await self.gb("take-over")
        self.assertEqual(code, 0, err)
        self.assertIn(b"this daemon writes the backup set", out)
        code, out, err = await self.gb("status")
        self.assertNotIn(b"(paused)", out)
        # This daemon started with its own state: nothing was recovered.
        code, out, err = await self.gb("recover")
        self.assertEqual(code, 1, err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("already had local state", err)
        code, out, err = await self.gb("cancel", "r-nonexistent")
        self.assertEqual(code, 1)
        self.assertIn("r-nonexistent", err)

        # Maintenance: no retention policy here, so forget wants names.
        code, out, err = await self.gb("forget", "--dry-run")
        self.assertEqual(code, 2)  # a configuration matter
        self.assertIn("no retention policy", err)
        code, out, err = await self.gb("forget", "--dry-run", first)
        self.assertEqual(code, 0, err)
        self.assertIn(f"would forget {first}\n".encode(), out)
        self.assertIn(f"rewrite {second} as a full log".encode(), out)
        self.assertIn(b"prune: ", out)
        code, out, err = await self.gb("job", "prune")
        self.assertEqual(code, 0, err)
        job_id = out.decode().splitlines()[0]
        self.assertIn('"dead_blobs": 0', out.decode())
        code, out, err = await self.gb("jobs")
        self.assertEqual(code, 0, err)
        self.assertIn(f"{job_id}  prune   done".encode(), out)

        code, out, err = await self.gb("key", "show")
        self.assertEqual(code, 0, err)
        with open(self.daemon.statedir.rootcap) as f:
            cap = f.read().strip()
        text = out.decode()
        self.assertIn(f"read-write: {cap}\n", text)
        self.assertIn("read-only:  URI:DIR2-RO:", text)
        self.assertIn("offline", text)
        # The read-only form the grid itself gives.
        node = await self.daemon.client._json("t=json", "GET", self.daemon.client._cap_url(cap, t="json"), cap)
        ro = node[1]["ro_uri"]
        self.assertIn(f"read-only:  {ro}\n", text)

    async def test_subprocess_plain_output(self):
        env = dict(os.environ, PYTHONPATH=SRC)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "gridbackupd.cli.main", "--config", self.config_path, "status"], env=env)
        self.assertEqual((code, err), (0, b""))
        self.assertIn(b"daemon: ready", out)
        self.assertNotIn(b"\r", out)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "gridbackupd.cli.main", "--config", self.config_path, "ls"], env=env)
        self.assertEqual(code, 2)
        self.assertEqual(err.count(b"\n"), 1)
