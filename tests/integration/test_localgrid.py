"""
Tests for the embedded grid (gridbackupd.grid: localgrid, nodes,
processes): they start real ``tahoe`` processes.

Few tests, each covering several behaviours, so the suite stays fast on
two cores.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import psutil  # type: ignore[import-untyped]
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gridbackupd.grid import nodes, processes
from gridbackupd.grid.localgrid import LocalGrid
from gridbackupd.grid.nodes import CLIENT, INTRODUCER, GridStartError, tahoe_command
from tests.support.sharedgrid import shared_grid, shared_node_url

NODES = [INTRODUCER, "storage1", "storage2", "storage3", CLIENT]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _snapshot(basedir: str) -> dict[str, tuple[str, str]]:
    """
    Node id and tahoe.cfg of every node: what must survive a restart.
    """
    return {
        name: (
            _read(os.path.join(basedir, name, "my_nodeid")),
            _read(os.path.join(basedir, name, "tahoe.cfg")),
        )
        for name in NODES
    }


async def _until(predicate, timeout: float = 15.0) -> None:
    """
    Wait (with the reactor) until predicate() is true.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{predicate} still false after {timeout} s")
        await deferLater(reactor, 0.05, lambda: None)


class LocalGridTests(TestCase):
    timeout = 120

    def _grid(self, basedir: str) -> LocalGrid:
        grid = LocalGrid(reactor, basedir)
        # Whatever happens in the test, no node outlives it.
        self.addCleanup(grid.stopService)
        return grid

    async def test_start_stop_restart(self):
        """
        A fresh grid becomes ready with all storage servers connected, its
        client node dir is basedir/client, stopping it ends its processes;
        a second start on the same directory reuses ports, keys and node
        ids.
        """
        basedir = os.path.abspath(self.mktemp())
        grid = self._grid(basedir)
        # Let trial schedule its timeout first, then see what is pending.
        await deferLater(reactor, 0, lambda: None)
        trial_calls = set(reactor.getDelayedCalls())
        grid.startService()
        url = await grid.when_ready()
        # Ready means the start left nothing pending on the reactor (trial
        # checks that at the end of the test, too).
        self.assertEqual(set(reactor.getDelayedCalls()) - trial_calls, set())

        self.assertEqual(url, grid.node_url)
        self.assertTrue(url.startswith("http://127.0.0.1:"), url)
        self.assertTrue(url.endswith("/"), url)
        self.assertGreaterEqual(await grid.connected_servers(), 3)
        self.assertEqual(grid.client_dir, os.path.join(basedir, "client"))
        # What `tahoe -d basedir/client` reads to find the web API.
        self.assertEqual(_read(os.path.join(basedir, "client", "node.url")).strip(), url)
        self.assertIn(
            "reserved_space = 100M", _read(os.path.join(basedir, "storage1", "tahoe.cfg"))
        )
        self.assertEqual(
            sorted(n for n in os.listdir(basedir) if not n.startswith(".")), sorted(NODES)
        )
        before = _snapshot(basedir)
        pids = grid.pids()
        self.assertEqual(sorted(pids), sorted(NODES))

        await grid.stopService()
        for name, pid in pids.items():
            self.assertFalse(processes.alive(pid), name)
            self.assertFalse(os.path.exists(os.path.join(basedir, name, "running.process")))
        self.assertEqual(grid.pids(), {})

        again = self._grid(basedir)
        again.startService()
        self.assertEqual(await again.when_ready(), url)
        self.assertEqual(_snapshot(basedir), before)
        self.assertGreaterEqual(await again.connected_servers(), 3)
        self.assertEqual(set(again.pids().values()) & set(pids.values()), set())
        await again.stopService()

    async def test_takes_over_leftovers(self):
        """
        Nodes left running by a daemon that was killed (the LocalGrid is
        dropped without a stop) are stopped and replaced by the next start;
        a pidfile naming a dead process, or a live process that is not
        the node, is removed and that process left alone.
        """
        basedir = os.path.abspath(self.mktemp())
        old = self._grid(basedir)
        old.startService()
        url = await old.when_ready()
        old_pids = old.pids()
        old_procs = dict(old._procs)

        # storage2 dies with the daemon: its pidfile stays, naming a dead pid.
        os.kill(old_pids["storage2"], signal.SIGKILL)
        await _until(lambda: old_procs["storage2"].poll() is not None)
        # storage3 dies too, and its pid file now names a live process that
        # is not a tahoe node: this test process.
        os.kill(old_pids["storage3"], signal.SIGKILL)
        await _until(lambda: old_procs["storage3"].poll() is not None)
        with open(os.path.join(basedir, "storage3", "running.process"), "w") as f:
            f.write(f"{os.getpid()} 1.0\n")
        # The daemon "dies": `old` is never stopped, and its introducer,
        # storage1 and client keep running and hold their ports.
        self.assertEqual(processes.read_pidfile(os.path.join(basedir, "storage2"))[0], old_pids["storage2"])

        new = self._grid(basedir)
        new.startService()
        self.assertEqual(await new.when_ready(), url)

        for name in (INTRODUCER, "storage1", CLIENT):
            self.assertIsNotNone(old_procs[name].poll(), f"leftover {name} still runs")
        new_pids = new.pids()
        self.assertEqual(sorted(new_pids), sorted(NODES))
        for name in NODES:
            self.assertNotEqual(new_pids[name], old_pids[name])
            self.assertEqual(
                processes.read_pidfile(os.path.join(basedir, name))[0], new_pids[name]
            )
        self.assertGreaterEqual(await new.connected_servers(), 3)
        await new.stopService()

    async def test_start_failures(self):
        """
        A node port taken by another program, and a node that exits during
        the start, fail the start with an error naming the node; a stop
        during the start cancels it.  Nothing is left running.
        """
        basedir = os.path.abspath(self.mktemp())
        os.makedirs(basedir)
        squatter = socket.socket()
        self.addCleanup(squatter.close)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        await deferToThread(
            nodes.run_create,
            tahoe_command(),
            basedir,
            INTRODUCER,
            [
                "create-introducer",
                "--listen=tcp",
                f"--port=tcp:{port}:interface=127.0.0.1",
                f"--location=tcp:127.0.0.1:{port}",
            ],
        )

        grid = self._grid(basedir)
        grid.startService()
        error = await self.assertFailure(grid.when_ready(), GridStartError)
        self.assertIn(f"introducer (127.0.0.1:{port})", str(error))
        self.assertEqual(grid.pids(), {})
        await grid.stopService()

        squatter.close()
        with open(os.path.join(basedir, INTRODUCER, "tahoe.cfg"), "a") as f:
            f.write("\n[no-such-section]\nkey = value\n")
        grid = self._grid(basedir)
        grid.startService()
        error = await self.assertFailure(grid.when_ready(), GridStartError)
        self.assertIn("'introducer' exited with status 1", str(error))
        self.assertIn("no-such-section", str(error))
        self.assertIn("gridbackup-run.log", str(error))
        self.assertEqual(grid.pids(), {})
        # No storage node was created: nothing else was started.
        self.assertEqual(sorted(os.listdir(basedir)), [INTRODUCER])

        # Stopped while it starts: when the introducer runs, the others
        # are being created.
        grid = self._grid(os.path.abspath(self.mktemp()))
        grid.startService()
        await _until(lambda: INTRODUCER in grid.pids())
        pid = grid.pids()[INTRODUCER]
        ready = grid.when_ready()
        await grid.stopService()
        await self.assertFailure(ready, CancelledError)
        self.assertEqual(grid.pids(), {})
        self.assertFalse(processes.alive(pid))

    def test_tahoe_command_not_from_path(self):
        """
        tahoe_command() is the tahoe of this Python environment, whatever
        PATH says; without one it runs the tahoe module of this Python.
        """
        self.patch(os, "environ", dict(os.environ, PATH="/nonexistent"))
        here = os.path.dirname(os.path.abspath(sys.executable))
        command = tahoe_command()
        self.assertEqual(command, [os.path.join(here, "tahoe")])
        self.assertTrue(os.access(command[0], os.X_OK))

        fake = os.path.join(os.path.abspath(self.mktemp()), "python3")
        self.patch(sys, "executable", fake)
        self.assertEqual(tahoe_command(), [fake, "-m", "allmydata.scripts.runner"])


class SharedGridTests(TestCase):
    timeout = 120

    async def test_same_url(self):
        """
        shared_node_url() starts one grid and hands its URL to every caller.
        """
        first, second = await gatherResults([shared_node_url(), shared_node_url()])
        self.assertEqual(first, second)
        self.assertEqual(await shared_node_url(), first)
        self.assertTrue(first.startswith("http://"), first)
        grid = shared_grid()
        if grid is not None:
            self.assertGreaterEqual(await grid.connected_servers(), grid.happy)



class LeftoverTests(TestCase):
    """
    processes.leftover trusts a pidfile only for a live process with the
    start time it states whose command line names the node.
    """

    def _process(self, nodedir: str) -> subprocess.Popen:
        """A live process whose command line looks like ``tahoe run NODEDIR``."""
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", "tahoe", "run", nodedir]
        )

        def reap():
            proc.kill()
            proc.wait()

        self.addCleanup(reap)
        # Until the child has exec'd, its command line is ours.
        for _ in range(500):
            if nodedir in psutil.Process(proc.pid).cmdline():
                break
            time.sleep(0.01)
        return proc

    def _pidfile(self, nodedir: str, pid: int, started: float) -> None:
        with open(os.path.join(nodedir, processes.PIDFILE), "w") as f:
            f.write(f"{pid} {started}\n")

    def test_finds_the_node_and_only_it(self):
        nodedir = os.path.abspath(self.mktemp())
        os.makedirs(nodedir)
        self.assertEqual(processes.leftover(nodedir), (None, False))

        proc = self._process(nodedir)
        started = psutil.Process(proc.pid).create_time()
        self._pidfile(nodedir, proc.pid, started)
        found, stale = processes.leftover(nodedir)
        self.assertEqual((found.pid, stale), (proc.pid, False))
        self.assertTrue(os.path.exists(os.path.join(nodedir, processes.PIDFILE)))

        # The same pid with another start time: the pid was reused.
        self._pidfile(nodedir, proc.pid, started - 100)
        self.assertEqual(processes.leftover(nodedir), (None, True))
        self.assertFalse(os.path.exists(os.path.join(nodedir, processes.PIDFILE)))
        self.assertIsNone(proc.poll())

        # A process of another node directory.
        other = self._process(nodedir + "-other")
        self._pidfile(nodedir, other.pid, psutil.Process(other.pid).create_time())
        self.assertEqual(processes.leftover(nodedir), (None, True))

        # A pidfile Tahoe could not have written.
        with open(os.path.join(nodedir, processes.PIDFILE), "w") as f:
            f.write("garbage\n")
        self.assertEqual(processes.leftover(nodedir), (None, True))
        self.assertIsNone(proc.poll())
        self.assertIsNone(other.poll())

    def test_gone_and_alive(self):
        proc = self._process(os.path.abspath(self.mktemp()))
        process = psutil.Process(proc.pid)
        self.assertTrue(processes.alive(proc.pid))
        self.assertFalse(processes.gone(process))
        processes.send_signal(process, signal.SIGKILL)
        # Killed but not reaped: a zombie is gone.
        for _ in range(200):
            if processes.gone(process):
                break
            time.sleep(0.01)
        self.assertTrue(processes.gone(process))
        self.assertFalse(processes.alive(proc.pid))
        proc.wait()
        processes.send_signal(process, signal.SIGTERM)  # no such process: no error
