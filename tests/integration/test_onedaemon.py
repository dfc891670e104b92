"""
One daemon per state_dir, and a start that cannot be right stops at once:
real ``twistd gridbackup`` processes, the first one daemonized the way a
person runs it (so that its lock must survive twistd's fork).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from gridbackupd.config import parse_config
from gridbackupd.service import from_config
from gridbackupd.statedir import StateDir, StateDirBusy
from gridbackupd.testing.configfile import write_config
from tests.support.apiclient import APIClient
from tests.support.process import CONFIG, alive, free_port, node_pids
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import make_tree

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def start_twistd(base, config, *args):
    """``twistd --nodaemon gridbackup --config config`` with its output in ``base/NAME.out``."""
    out = open(os.path.join(base, f"twistd-{time.monotonic_ns()}.out"), "w+b")
    proc = subprocess.Popen([TWISTD, "--nodaemon", "--pidfile=", *args, "gridbackup", "--config", config],
                            cwd=base, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc.out = out  # type: ignore[attr-defined]
    return proc


async def exited(proc, timeout):
    """The exit status of ``proc`` within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await deferLater(reactor, 0.1, lambda: None)
    return proc.poll()


def output_of(proc):
    proc.out.seek(0)
    return proc.out.read().decode("utf-8", "replace")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.out.close()


def holds(pid, path):
    """Whether process ``pid`` has ``path`` open."""
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)) == path:
                return True
        except OSError:
            pass
    return False


def lines_with(text, word):
    return [line for line in text.splitlines() if word in line]


class LockTests(TestCase):
    def test_second_lock_names_the_holder(self):
        statedir = StateDir(os.path.abspath(self.mktemp()))
        first = statedir.lock()
        self.addCleanup(first.release)
        with self.assertRaises(StateDirBusy) as caught:
            statedir.lock()
        self.assertIn(f"pid {os.getpid()}", str(caught.exception))
        first.release()
        statedir.lock().release()

    def test_lock_is_not_inherited(self):
        statedir = StateDir(os.path.abspath(self.mktemp()))
        lock = statedir.lock()
        self.addCleanup(lock.release)
        self.assertFalse(os.get_inheritable(lock.fd))


class OneDaemonTests(TestCase):
    timeout = 400

    async def test_second_daemon_exits_and_leaves_the_first_alone(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        tree = os.path.join(base, "data")
        make_tree(tree, files=5)
        port = free_port()
        config = os.path.join(base, "gridbackup.ini")
        with open(config, "w") as f:
            f.write(CONFIG.format(tree=tree, port=port))
        state = os.path.join(base, "state")
        # The first daemon as a person starts it: twistd forks, its parent exits.
        pidfile = os.path.join(base, "first.pid")
        subprocess.run([TWISTD, f"--pidfile={pidfile}", "--logfile=first.log", "gridbackup",
                        "--config", config], cwd=base, check=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        with open(pidfile) as f:
            first = int(f.read())
        self.addCleanup(self._stop_pid, first)
        with open(os.path.join(state, "private", "api_token")) as f:
            api = APIClient(self, f"http://127.0.0.1:{port}", f.read().strip())

        async def ready():
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    code, body = await api.call("GET", "/v1/status")
                    if code == 200 and body["state"] == "ready":
                        return body
                except Exception:
                    pass
                self.assertTrue(alive(first), "the first daemon died")
                await deferLater(reactor, 0.25, lambda: None)
            self.fail("the first daemon did not become ready")

        await ready()
        nodes = node_pids(state)
        self.assertTrue(nodes)
        with open(os.path.join(state, "api_endpoint")) as f:
            endpoint = f.read()
        grid_listing = sorted(os.listdir(os.path.join(state, "grid")))

        # The second daemon, on another port: it would overwrite api_endpoint.
        other = os.path.join(base, "second.ini")
        with open(other, "w") as f:
            f.write(CONFIG.format(tree=tree, port=free_port()).replace("%(here)s/state", state))
        second = start_twistd(base, other)
        self.addCleanup(stop, second)
        # It ends by itself, before it starts anything (it ends in about a
        # second; the bound is for a loaded machine's interpreter start-up).
        code = await exited(second, 60)
        self.assertEqual(code, 1, output_of(second))
        out = output_of(second)
        self.assertEqual(len(out.strip().splitlines()), 1, out)
        self.assertIn(f"pid {first}", out)

        # The first one is untouched: its nodes, its endpoint, its grid.
        self.assertEqual(node_pids(state), nodes)
        self.assertTrue(all(alive(pid) for pid in nodes.values()))
        with open(os.path.join(state, "api_endpoint")) as f:
            self.assertEqual(f.read(), endpoint)
        self.assertEqual(sorted(os.listdir(os.path.join(state, "grid"))), grid_listing)
        status = await ready()
        self.assertGreaterEqual(status["grid"]["servers_connected"], 3)
        # The lock survived the fork: the daemon (not twistd's parent) holds it, no node does.
        lock_file = os.path.join(state, "daemon.lock")
        self.assertTrue(holds(first, lock_file))
        for name, pid in nodes.items():
            self.assertFalse(holds(pid, lock_file), f"tahoe node {name} holds the lock")

    def _stop_pid(self, pid):
        if not alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)

    async def test_in_process_second_daemon_is_refused(self):
        base = os.path.abspath(self.mktemp())
        config = parse_config(write_config(base, await shared_node_url(), [base]))
        first = from_config(reactor, config)
        first.startService()
        self.addCleanup(lambda: first.running and first.stopService())
        self.assertEqual(await first.when_ready(), "ready", first.error)
        second = from_config(reactor, config)
        with self.assertRaises(StateDirBusy) as caught:
            second.startService()
        self.assertIn(f"pid {os.getpid()}", str(caught.exception))
        await first.stopService()
        # Stopped, the first one lets another start.
        third = from_config(reactor, config)
        third.startService()
        self.addCleanup(lambda: third.running and third.stopService())
        self.assertEqual(await third.when_ready(), "ready", third.error)
        await third.stopService()

    async def test_no_listener_exits_1(self):
        base = os.path.abspath(self.mktemp())
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(base, "http://127.0.0.1:1/", [base], listen=f"tcp:{port}:interface=127.0.0.1")
        # Nor its unix socket (state_dir/api.sock), which a directory holds.
        os.makedirs(os.path.join(base, "state", "api.sock"))
        proc = start_twistd(base, config)
        self.addCleanup(stop, proc)
        code = await exited(proc, 30)
        out = output_of(proc)
        self.assertEqual(code, 1, out)
        self.assertEqual(len(lines_with(out, "cannot listen")), 1, out)
        self.assertNotIn("Traceback", out)
        # It stopped before it touched the database or wrote an endpoint.
        state = os.path.join(base, "state")
        self.assertFalse(os.path.exists(os.path.join(state, "state.sqlite")))
        self.assertFalse(os.path.exists(os.path.join(state, "api_endpoint")))


class MissingRootCapTests(TestCase):
    timeout = 240

    async def test_missing_rootcap_next_to_a_database_is_refused(self):
        node_url = await shared_node_url()
        base = os.path.abspath(self.mktemp())
        tree = os.path.join(base, "data")
        make_tree(tree, files=10)
        config_path = write_config(base, node_url, [tree])
        daemon = from_config(reactor, parse_config(config_path))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        snapshot_id = daemon.jobs.request()
        self.assertEqual(await daemon.wait_for_snapshot(snapshot_id), "complete")
        await daemon.stopService()
        statedir = StateDir(os.path.join(base, "state"))
        saved = os.path.join(base, "rootcap.saved")
        shutil.move(statedir.rootcap, saved)

        # Started as a person starts it: one line that says what to do, exit 1.
        proc = start_twistd(base, config_path)
        self.addCleanup(stop, proc)
        code = await exited(proc, 30)
        out = output_of(proc)
        self.assertEqual(code, 1, out)
        self.assertEqual(len(out.strip().splitlines()), 1, out)
        self.assertIn(statedir.rootcap, out)
        self.assertIn("gridbackup recover", out)
        self.assertIn("move", out)
        self.assertFalse(os.path.exists(statedir.rootcap), "a new backup set was started")

        # In the test process too: the daemon says so and makes no new root.
        again = from_config(reactor, parse_config(config_path))
        again.startService()
        self.addCleanup(lambda: again.running and again.stopService())
        self.assertEqual(await again.when_ready(), "error")
        self.assertEqual(self.flushLoggedErrors(), [], "a refusal is one line, not a logged traceback")
        self.assertIn("gridbackup recover", again.error)
        self.assertFalse(os.path.exists(statedir.rootcap))
        await again.stopService()

        # With the cap back, it starts on the same set.
        shutil.move(saved, statedir.rootcap)
        back = from_config(reactor, parse_config(config_path))
        back.startService()
        self.addCleanup(lambda: back.running and back.stopService())
        self.assertEqual(await back.when_ready(), "ready", back.error)
        await back.stopService()
