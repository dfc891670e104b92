"""
The embedded Tahoe grid: real ``tahoe run`` processes under one directory.

With ``node_url = embedded`` the daemon runs a private grid under
``state_dir/grid``::

    introducer/     the introducer (its FURL is in private/introducer.furl)
    storage1..N/    storage nodes, no web port
    client/         the client node whose web API the daemon talks to;
                    ``tahoe -d state_dir/grid/client ...`` works

Every node listens on 127.0.0.1 only.  The first start picks free ports and
creates the nodes; later starts reuse directories, ports, keys and shares.
A node is created under a temporary name (``.creating-NAME``) and renamed
into place when ``tahoe create-*`` has finished, so a half-created node is
never mistaken for a complete one.

The nodes run as ``subprocess.Popen`` children in their own sessions, not
through ``reactor.spawnProcess``: they have no pipes into the reactor (so a
test reactor stays clean) and they may outlive a daemon that is killed with
SIGKILL.  The next start finds such leftovers through their pidfiles
(``NODEDIR/running.process``), stops them and starts fresh ones.

With ``restart_exited`` (the daemon's own grid) a node that exits once the
grid is ready, killed or crashed, is started again: at once, then after a
growing wait (``grid.retry.Backoff``) while it keeps exiting within a
minute of its start.  A thread per node waits for its exit, so a grid
that runs leaves nothing on the reactor.  Nodes stopped on purpose
(``stop_node``, the service's stop) stay stopped; ``start_node`` starts
one again.

Blocking work (``tahoe create-*``, fork/exec, file system) runs in the
reactor's thread pool; waiting is done with the reactor's clock.  Node
directories are ``grid.nodes``'s job, processes ``grid.processes``'s: this
module is the service that puts them together.
"""

import json
import os
import signal
import subprocess
import time
from functools import partial

import treq
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridbackupd import crashpoints
from gridbackupd.grid import nodes, processes
from gridbackupd.grid.answers import connected_count
from gridbackupd.grid.client import QuietPool, pooled_client
from gridbackupd.grid.nodes import CLIENT, INTRODUCER, GridStartError
from gridbackupd.grid.retry import Backoff
from gridbackupd.waiters import OneShot

__all__ = ["GridStartError", "LocalGrid"]

POLL_INTERVAL = 0.2
STOP_TIMEOUT = 10.0
STOP_POLL_INTERVAL = 0.1
HTTP_TIMEOUT = 5.0
# Waits before starting again a node that keeps exiting: 1, 2, 4 ... 60 s.
RESTART_BACKOFF = Backoff(base=1.0, cap=60.0)
# A node that ran this long before it exited is started again at once.
STABLE_AFTER = 60.0


class LocalGrid(Service):
    """
    An embedded Tahoe grid (introducer, storage nodes, client) under
    ``basedir``.

    ``when_ready()`` fires with ``node_url`` once the client's web API
    answers and at least ``happy`` storage servers are connected.
    """

    _log = Logger()
    name = "localgrid"

    def __init__(
        self,
        reactor,
        basedir: str,
        storage_nodes: int = 3,
        needed: int = 2,
        happy: int = 3,
        total: int = 3,
        tahoe_command: list[str] | None = None,
        ready_timeout: float = 120.0,
        restart_exited: bool = False,
        introducer: str | None = None,
    ):
        # introducer: another grid's FURL: only the client node runs here,
        # joined to that grid (see _start_client_only).
        if introducer is not None:
            storage_nodes = 0
        elif storage_nodes < 1:
            raise ValueError(f"storage_nodes must be at least 1, not {storage_nodes}")
        if not 1 <= needed <= total:
            raise ValueError(f"need 1 <= needed <= total, not needed={needed} total={total}")
        if introducer is None and not 1 <= happy <= storage_nodes:
            raise ValueError(
                f"need 1 <= happy <= storage_nodes, not happy={happy} "
                f"storage_nodes={storage_nodes}: the grid could never be ready"
            )
        self._reactor = reactor
        self.basedir = os.path.abspath(basedir)
        self.storage_nodes = storage_nodes
        self.needed = needed
        self.happy = happy
        self.total = total
        self._command = list(tahoe_command) if tahoe_command else nodes.tahoe_command()
        self.ready_timeout = ready_timeout
        self.restart_exited = restart_exited
        self._introducer = introducer
        # The servers the client must reach before the grid counts as started.
        self._ready_servers = happy if introducer is None else 0
        self.node_url: str | None = None
        # name -> Popen of the nodes this object started and has not
        # seen exit yet.
        self._procs: dict[str, subprocess.Popen] = {}
        # name -> size of its run log when this object started it.
        self._log_offsets: dict[str, int] = {}
        self._starting: Deferred | None = None
        self._deadline = 0.0
        self._stopping = False
        # The outcome of the current (or last) start: the URL or a Failure.
        self._ready = OneShot()
        # Pids being stopped on purpose: their exit is no cause for a restart.
        self._stopping_pids: set[int] = set()
        # name -> the start again of a node that exited, while pending.
        self._restarting: dict[str, Deferred] = {}
        # name -> when it was started (monotonic), and how many times in
        # a row it exited within STABLE_AFTER seconds of that.
        self._started_at: dict[str, float] = {}
        self._quick_exits: dict[str, int] = {}
        # How many times a node that exited by itself was started again,
        # and the last such exit (one line), for the daemon's status.
        self.restarts = 0
        self.last_exit: str | None = None

    # -- public API ---------------------------------------------------------

    @property
    def client_dir(self) -> str:
        return os.path.join(self.basedir, CLIENT)

    def node_dir(self, name: str) -> str:
        return os.path.join(self.basedir, name)

    def pids(self) -> dict[str, int]:
        """
        The pids of the node processes this object started (and has not
        seen exit), by node name.
        """
        return {name: proc.pid for name, proc in self._procs.items()}

    def stop_node(self, name: str) -> Deferred:
        """
        Stop one node (a storage server leaving the grid, in a test of
        repair); fires when its process is gone.
        """
        proc = self._procs[name]
        return Deferred.fromCoroutine(
            self._terminate(name, proc.pid, lambda: proc.poll() is not None, proc.send_signal))

    def start_node(self, name: str) -> Deferred:
        """
        Start again a node that was stopped (``stop_node``); fires with its
        pid.  A ``tahoe run`` of it that still runs is a GridStartError.
        """
        if name in self._procs:
            raise GridStartError(f"tahoe node {name!r} runs already")
        return Deferred.fromCoroutine(self._start_again(name))

    def when_ready(self) -> Deferred:
        """
        A Deferred that fires with ``node_url`` when the grid is ready, or
        fails with the error that stopped its start.
        """
        return self._ready.observe()

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if self._ready.fired:
            self._ready = OneShot()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addBoth(self._start_finished)

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        self.node_url = None
        restarting = list(self._restarting.values())
        for d in restarting:
            d.cancel()
        return Deferred.fromCoroutine(self._stop(self._starting))

    async def connected_servers(self) -> int:
        """
        How many storage servers the client node is connected to now.
        """
        if self.node_url is None:
            raise GridStartError("the embedded grid is not running")
        # A persistent pool, closed at the end: closeCachedConnections()
        # fires when the connection is really gone.
        pool = QuietPool(self._reactor, persistent=True)
        try:
            return await self._count_connected(
                pooled_client(self._reactor, pool), self.node_url
            )
        finally:
            await pool.closeCachedConnections()

    def kill_all(self, timeout: float = 5.0) -> None:
        """
        Stop all node processes this object started, synchronously (for an
        atexit handler, when the reactor is gone): SIGTERM, wait up to
        ``timeout`` seconds, SIGKILL.
        """
        procs = dict(self._procs)
        processes.terminate_sync(list(procs.values()), timeout)
        for name, proc in procs.items():
            if proc.poll() is not None:
                processes.remove_pidfile(self.node_dir(name), proc.pid)
                self._procs.pop(name, None)

    # -- start --------------------------------------------------------------

    def _start_finished(self, result):
        self._starting = None
        if isinstance(result, Failure):
            if result.check(CancelledError) and self._stopping:
                self._log.info("start of the embedded grid cancelled by stop")
            elif result.check(GridStartError):
                self._log.error(
                    "embedded Tahoe grid in {basedir} failed to start: {error}",
                    basedir=self.basedir,
                    error=result.value,
                )
            else:
                self._log.failure(
                    "embedded Tahoe grid in {basedir} failed to start",
                    result,
                    basedir=self.basedir,
                )
        else:
            self._log.info("embedded Tahoe grid ready at {url}", url=result)
        self._ready.fire(result)

    def _in_thread(self, f, *args):
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    async def _sleep(self, seconds: float) -> None:
        await deferLater(self._reactor, seconds, lambda: None)

    async def _start(self) -> str:
        self._deadline = self._reactor.seconds() + self.ready_timeout
        try:
            return await self._start_nodes()
        except CancelledError:
            raise
        except BaseException:
            # Leave nothing half-started behind.
            await self._stop_all()
            raise

    async def _start_nodes(self) -> str:
        existing = await self._in_thread(nodes.existing_nodes, self.basedir)
        await self._take_over_leftovers(existing)
        crashpoints.reached("start.leftovers_taken_over")

        ports = {}
        for name in existing:
            ports[name] = await self._in_thread(nodes.node_port, self.node_dir(name))
        if self._introducer is not None:
            return await self._start_client_only(existing, ports, self._introducer)

        # The introducer first: the others need its FURL.
        if INTRODUCER not in existing:
            [port] = await self._in_thread(
                nodes.pick_free_ports, 1, {p for p in ports.values() if p}
            )
            self._log.info("creating tahoe introducer on port {port}", port=port)
            await self._in_thread(
                nodes.run_create, self._command, self.basedir, INTRODUCER,
                nodes.introducer_args(port),
            )
            ports[INTRODUCER] = port
        await self._launch([INTRODUCER], ports)
        furl = await self._wait_for_introducer(ports[INTRODUCER])

        # Then the storage nodes and the client, in parallel.
        storage = nodes.storage_names(existing, self.storage_nodes)
        missing = [n for n in storage + [CLIENT] if n not in existing]
        if missing:
            new_ports = await self._in_thread(
                nodes.pick_free_ports, len(missing), {p for p in ports.values() if p}
            )
            ports.update(zip(missing, new_ports))
            await _gather([self._create(name, ports[name], furl) for name in missing])
        await self._in_thread(
            nodes.set_config_values,
            self.client_dir,
            "client",
            {
                "shares.needed": str(self.needed),
                "shares.happy": str(self.happy),
                "shares.total": str(self.total),
            },
        )
        await self._launch(storage + [CLIENT], ports)

        url = f"http://127.0.0.1:{ports[CLIENT]}/"
        await self._wait_until_ready(url)
        self.node_url = url
        return url

    async def _start_client_only(self, existing: list[str], ports: dict, furl: str) -> str:
        """
        Only the client node (no storage), joined to another grid through
        its introducer's ``furl``; ready once its web API answers: how many servers it
        reaches is the daemon's to wait for, however long it takes.
        """
        if CLIENT not in existing:
            [ports[CLIENT]] = await self._in_thread(
                nodes.pick_free_ports, 1, {p for p in ports.values() if p})
            await self._create(CLIENT, ports[CLIENT], furl)
        else:
            # The configured FURL, also when it changed since the node was made.
            await self._in_thread(nodes.write_introducer, self.client_dir, furl)
        await self._in_thread(nodes.set_config_values, self.client_dir, "client", {
            "shares.needed": str(self.needed),
            "shares.happy": str(self.happy),
            "shares.total": str(self.total)})
        await self._launch([CLIENT], ports)
        url = f"http://127.0.0.1:{ports[CLIENT]}/"
        await self._wait_until_ready(url)
        self.node_url = url
        return url

    def _create(self, name: str, port: int, furl: str) -> Deferred:
        shares = (self.needed, self.happy, self.total)
        if name == CLIENT:
            args = nodes.client_args(port, *shares)
        else:
            args = nodes.storage_args(name, port, *shares)
        self._log.info("creating tahoe node {name} on port {port}", name=name, port=port)
        return self._in_thread(nodes.run_create, self._command, self.basedir, name, args, furl)

    async def _take_over_leftovers(self, names: list[str]) -> None:
        """
        Stop node processes that a previous daemon left running; drop
        stale pidfiles.
        """
        stops = []
        for name in names:
            nodedir = self.node_dir(name)
            process, stale = await self._in_thread(processes.leftover, nodedir)
            if stale:
                self._log.info("removed stale pidfile of tahoe node {name}", name=name)
            if process is not None:
                self._log.info(
                    "stopping leftover tahoe node {name} (pid {pid})", name=name, pid=process.pid
                )
                stops.append(
                    Deferred.fromCoroutine(
                        self._terminate(name, process.pid, partial(processes.gone, process),
                                        partial(processes.send_signal, process))
                    )
                )
        await _gather(stops)

    async def _launch(self, names: list[str], ports: dict[str, int | None]) -> None:
        busy = []
        for name in names:
            port = ports.get(name)
            if port and await self._in_thread(nodes.port_in_use, port):
                busy.append(f"{name} (127.0.0.1:{port})")
        if busy:
            raise GridStartError(
                "cannot start the embedded Tahoe grid in "
                f"{self.basedir}: another program listens on the port of "
                + ", ".join(busy)
            )
        for name in names:
            pid = await self._in_thread(self._spawn, name)
            if pid is not None:
                self._log.info("started tahoe node {name} (pid {pid})", name=name, pid=pid)

    def _spawn(self, name: str) -> int | None:
        """
        Start ``tahoe run`` for one node (blocking: fork/exec, in a thread);
        return its pid.
        """
        proc, self._log_offsets[name] = processes.spawn(self._command, self.node_dir(name))
        self._procs[name] = proc
        self._started_at[name] = time.monotonic()
        if self.restart_exited:
            processes.watch(proc, lambda status: self._reactor.callFromThread(
                self._exited, name, proc, status))
        if self._stopping:
            # stopService ran while this thread was starting the node and
            # may not have seen it: stop it here.
            processes.terminate_sync([proc], STOP_TIMEOUT)
            self._procs.pop(name, None)
            return None
        return proc.pid

    # -- a node that exits by itself ------------------------------------------

    def _exited(self, name: str, proc: subprocess.Popen, status: int) -> None:
        """
        A node's process ended (called on the reactor): start it again
        unless it was stopped on purpose, or the grid is starting (the
        start fails with its log) or stopping.
        """
        if proc.pid in self._stopping_pids:
            self._stopping_pids.discard(proc.pid)
            return
        if self._procs.get(name) is not proc or self._stopping or self.node_url is None:
            return
        del self._procs[name]
        ran = time.monotonic() - self._started_at.get(name, 0.0)
        quick = self._quick_exits[name] = self._quick_exits.get(name, 0) + 1 if ran < STABLE_AFTER else 0
        delay = RESTART_BACKOFF.delay(quick) if quick else 0.0
        how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        self.last_exit = f"tahoe node {name} {how} after {ran:.0f} s; started again"
        nodedir = self.node_dir(name)
        self._log.warn(
            "tahoe node {name} (pid {pid}) {how}; starting it again in {delay:g} s; "
            "last lines of {path}:\n{tail}",
            name=name, pid=proc.pid, how=how, delay=delay, path=processes.log_path(nodedir),
            tail=processes.log_tail(nodedir, self._log_offsets.get(name, 0), lines=5),
        )
        d = Deferred.fromCoroutine(self._start_again(name, delay, counted=True))
        self._restarting[name] = d

        def finished(result):
            if self._restarting.get(name) is d:
                del self._restarting[name]
            if isinstance(result, Failure):
                if not result.check(CancelledError):
                    self._log.failure("cannot start tahoe node {name} again", result, name=name)
                return None
            return result

        d.addBoth(finished)

    async def _start_again(self, name: str, delay: float = 0.0, counted: bool = False) -> int | None:
        """
        Start one node of a grid that runs: after ``delay`` seconds, once a
        stale pidfile is gone and its port is free (waiting with backoff).
        """
        if delay:
            await self._sleep(delay)
        nodedir = self.node_dir(name)
        process, _ = await self._in_thread(processes.leftover, nodedir)
        if process is not None:
            raise GridStartError(f"tahoe node {name!r} runs already (pid {process.pid})")
        port = await self._in_thread(nodes.node_port, nodedir)
        waits = RESTART_BACKOFF.delays()
        while port and await self._in_thread(nodes.port_in_use, port):
            wait = next(waits)
            self._log.warn("cannot start tahoe node {name} again: another program listens on "
                           "127.0.0.1:{port}; trying again in {wait:g} s", name=name, port=port, wait=wait)
            await self._sleep(wait)
        if self._stopping:
            return None
        pid = await self._in_thread(self._spawn, name)
        if pid is not None:
            if counted:
                self.restarts += 1
            self._log.info("started tahoe node {name} again (pid {pid})", name=name, pid=pid)
        return pid

    def _check_processes(self) -> None:
        """
        Fail with the node's log tail if a node exited.
        """
        if self._stopping:
            raise CancelledError("the embedded grid is being stopped")
        for name, proc in list(self._procs.items()):
            status = proc.poll()
            if status is not None:
                del self._procs[name]
                nodedir = self.node_dir(name)
                tail = processes.log_tail(nodedir, self._log_offsets.get(name, 0))
                raise GridStartError(
                    f"tahoe node {name!r} exited with status {status} while the "
                    f"embedded grid was starting; last lines of "
                    f"{processes.log_path(nodedir)}:\n{tail}"
                )

    def _check_deadline(self, what: str) -> None:
        if self._reactor.seconds() > self._deadline:
            raise GridStartError(
                f"embedded Tahoe grid in {self.basedir} not ready after "
                f"{self.ready_timeout:g} s: {what}"
            )

    async def _wait_for_introducer(self, port: int) -> str:
        """
        Wait until the introducer has written its FURL and accepts
        connections (a FURL left by an earlier run exists at once).
        """
        path = os.path.join(self.node_dir(INTRODUCER), "private", "introducer.furl")
        while True:
            self._check_processes()
            furl = await self._in_thread(nodes.read_furl, path)
            if furl is not None and await self._in_thread(nodes.accepts_connections, port):
                return furl
            self._check_deadline(f"the introducer does not listen on 127.0.0.1:{port}")
            await self._sleep(POLL_INTERVAL)

    async def _wait_until_ready(self, url: str) -> None:
        pool = QuietPool(self._reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        client = pooled_client(self._reactor, pool)
        try:
            status = "the client node does not answer"
            while True:
                self._check_processes()
                try:
                    connected = await self._count_connected(client, url)
                except CancelledError:
                    if self._stopping:
                        raise
                    status = "the client node does not answer (timeout)"
                except Exception as e:
                    status = f"the client node does not answer ({e.__class__.__name__})"
                else:
                    if connected >= self._ready_servers:
                        return
                    status = f"{connected} of {self.happy} storage servers connected"
                self._check_deadline(status)
                await self._sleep(POLL_INTERVAL)
        finally:
            await pool.closeCachedConnections()

    async def _count_connected(self, client: HTTPClient, url: str) -> int:
        response = await client.get(
            url + "?t=json", timeout=HTTP_TIMEOUT, reactor=self._reactor
        )
        body = await treq.content(response)
        if response.code != 200:
            raise GridStartError(f"GET {url}?t=json answered {response.code}")
        data = json.loads(body)
        return connected_count(data.get("servers", []))

    # -- stop ---------------------------------------------------------------

    async def _stop(self, starting: Deferred | None) -> None:
        if starting is not None:
            starting.cancel()
            # Fires (with None, see _start_finished) once the start has
            # unwound: nothing of it is left on the reactor.
            await starting
        await self._stop_all()

    async def _stop_all(self) -> None:
        stops = []
        for name, proc in list(self._procs.items()):
            stops.append(
                Deferred.fromCoroutine(
                    self._terminate(name, proc.pid, lambda proc=proc: proc.poll() is not None,
                                    proc.send_signal)
                )
            )
        await _gather(stops)

    async def _terminate(self, name: str, pid: int, gone, send_signal) -> None:
        """
        SIGTERM one node, wait up to STOP_TIMEOUT seconds, then SIGKILL;
        return when it is gone.
        """
        nodedir = self.node_dir(name)
        if self.restart_exited and name in self._procs and self._procs[name].pid == pid:
            self._stopping_pids.add(pid)
        if not gone():
            send_signal(signal.SIGTERM)
            deadline = self._reactor.seconds() + STOP_TIMEOUT
            while not gone() and self._reactor.seconds() < deadline:
                await self._sleep(STOP_POLL_INTERVAL)
            if not gone():
                self._log.warn(
                    "tahoe node {name} (pid {pid}) ignored SIGTERM; killing it",
                    name=name,
                    pid=pid,
                )
                send_signal(signal.SIGKILL)
                while not gone():
                    await self._sleep(STOP_POLL_INTERVAL)
        # Tahoe removes its pidfile on SIGTERM, not after SIGKILL.
        await self._in_thread(processes.remove_pidfile, nodedir, pid)
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            del self._procs[name]


async def _gather(deferreds: list[Deferred]) -> list:
    """
    Wait for all; fail with the first error itself (not a FirstError).
    """
    try:
        return await gatherResults(deferreds, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()


