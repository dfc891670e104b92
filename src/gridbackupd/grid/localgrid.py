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

Blocking work (``tahoe create-*``, fork/exec, file system) runs in the
reactor's thread pool; waiting is done with the reactor's clock.
"""

import configparser
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import treq
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

INTRODUCER = "introducer"
CLIENT = "client"
STORAGE_PREFIX = "storage"

RUN_LOG = "gridbackup-run.log"
PIDFILE = "running.process"
CREATING_PREFIX = ".creating-"

# The storage nodes of a private test grid share one disk with everything
# else; Tahoe's default (1G) refuses shares on a nearly full disk.
RESERVED_SPACE = "100M"

POLL_INTERVAL = 0.2
STOP_TIMEOUT = 10.0
STOP_POLL_INTERVAL = 0.1
HTTP_TIMEOUT = 5.0

_STORAGE_RE = re.compile(r"^storage([1-9][0-9]*)$")


class GridStartError(Exception):
    """
    The embedded grid could not be started; the message says which node
    and why (with the tail of its log where there is one).
    """


def tahoe_command() -> list[str]:
    """
    The command that runs the ``tahoe`` of this Python environment.

    The ``tahoe`` script next to ``sys.executable`` if there is one, else
    ``python -m allmydata.scripts.runner``.  Never looked up on ``PATH``:
    another ``tahoe`` there may belong to another Python and version.
    """
    executable = sys.executable
    script = os.path.join(os.path.dirname(os.path.abspath(executable)), "tahoe")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [executable, "-m", "allmydata.scripts.runner"]


# LocalGrid's constructor has a parameter of the same name.
_default_command = tahoe_command


# -- blocking helpers (run in threads) ------------------------------------


def _pick_free_ports(count: int, exclude: set[int]) -> list[int]:
    """
    Bind ``count`` loopback sockets to port 0 at once (so they are
    distinct), read their ports, and close them.  Ports in ``exclude``
    (those of nodes that exist but are not running yet) are skipped.
    """
    held = []
    ports = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _port_in_use(port: int) -> bool:
    """
    Whether something listens on 127.0.0.1:port (as Twisted binds:
    with SO_REUSEADDR, so a connection in TIME_WAIT does not count).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return True
        raise
    finally:
        s.close()
    return False


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _read_config(nodedir: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    with open(os.path.join(nodedir, "tahoe.cfg"), encoding="utf-8") as f:
        parser.read_file(f)
    return parser


def _endpoint_port(description: str) -> int | None:
    """
    The port of a ``tcp:PORT:interface=...`` endpoint description.
    """
    parts = description.strip().split(":")
    if len(parts) >= 2 and parts[0] == "tcp" and parts[1].isdigit():
        return int(parts[1])
    return None


def _node_port(nodedir: str) -> int | None:
    """
    The port a node listens on: the web port of the client, the tub port
    of the others.  None if it has none.
    """
    config = _read_config(nodedir)
    if os.path.basename(nodedir) == CLIENT:
        return _endpoint_port(config.get("node", "web.port", fallback=""))
    return _endpoint_port(config.get("node", "tub.port", fallback=""))


def _set_config_values(nodedir: str, section: str, values: dict[str, str]) -> None:
    """
    Set ``key = value`` lines of one section of tahoe.cfg in place, keeping
    the rest of the file (comments included) as it is.
    """
    path = os.path.join(nodedir, "tahoe.cfg")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    current = None
    seen = set()
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if current == section:
                out.extend(
                    f"{k} = {v}\n" for k, v in values.items() if k not in seen
                )
                seen.update(values)
            current = stripped[1:-1]
        elif current == section and "=" in stripped and not stripped.startswith("#"):
            key = stripped.split("=", 1)[0].strip()
            if key in values:
                line = f"{key} = {values[key]}\n"
                seen.add(key)
        out.append(line)
    missing = [k for k in values if k not in seen]
    if missing:
        if current != section:
            if out and not out[-1].endswith("\n"):
                out.append("\n")
            out.append(f"\n[{section}]\n")
        out.extend(f"{k} = {values[k]}\n" for k in missing)
    new = "".join(out)
    if new != "".join(lines):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _run_create(command: list[str], basedir: str, name: str, args: list[str]) -> None:
    """
    Run ``tahoe create-*`` into ``basedir/.creating-NAME`` and rename the
    result to ``basedir/NAME``.  A leftover temporary directory of an
    interrupted creation is removed first.
    """
    final = os.path.join(basedir, name)
    tmp = os.path.join(basedir, CREATING_PREFIX + name)
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    result = subprocess.run(
        command + args + [tmp],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=basedir,
    )
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace").strip()
        raise GridStartError(
            f"creating tahoe node {name!r} failed "
            f"(exit status {result.returncode}): {output}"
        )
    if name.startswith(STORAGE_PREFIX):
        _set_config_values(tmp, "storage", {"reserved_space": RESERVED_SPACE})
    os.rename(tmp, final)


def _proc_state(pid: int) -> str | None:
    """
    The state letter of /proc/PID/stat, None if there is no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "PID (COMM) STATE ...": COMM may contain spaces and parentheses.
    try:
        return stat[stat.rindex(b")") + 2 :].split()[0].decode("ascii")
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    """
    Whether a process runs as PID (zombies and dead tasks do not count).
    """
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X", "x")


def _runs_node(pid: int, nodedir: str) -> bool:
    """
    Whether process PID is a tahoe process whose command line names
    ``nodedir`` (relative arguments are resolved against its cwd).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    args = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0") if a]
    if not any("tahoe" in a or "allmydata" in a for a in args):
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = None
    target = os.path.realpath(nodedir)
    for arg in args:
        if not os.path.isabs(arg):
            if cwd is None:
                continue
            arg = os.path.join(cwd, arg)
        if os.path.normpath(arg) == target or os.path.realpath(arg) == target:
            return True
    return False


def _read_pidfile(nodedir: str) -> int | None:
    try:
        with open(os.path.join(nodedir, PIDFILE), encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _remove_pidfile(nodedir: str, pid: int | None = None) -> None:
    """
    Remove NODEDIR/running.process (only if it still names ``pid``, when
    given).
    """
    path = os.path.join(nodedir, PIDFILE)
    if pid is not None and _read_pidfile(nodedir) != pid:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _leftover_pid(nodedir: str) -> tuple[int | None, bool]:
    """
    The pid of a tahoe process still running this node (left behind by a
    daemon that died), or None; and whether a stale pidfile was removed.

    A pidfile naming a dead process or some other program is stale: it is
    removed (else ``tahoe run`` refuses to start), and nothing is killed.
    """
    if not os.path.exists(os.path.join(nodedir, PIDFILE)):
        return None, False
    pid = _read_pidfile(nodedir)
    if pid is not None and pid != os.getpid() and _pid_alive(pid):
        if _runs_node(pid, nodedir):
            return pid, False
    _remove_pidfile(nodedir)
    return None, True


def _log_path(nodedir: str) -> str:
    return os.path.join(nodedir, "logs", RUN_LOG)


def _log_tail(nodedir: str, since: int = 0, lines: int = 15) -> str:
    try:
        with open(_log_path(nodedir), "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(since, size - 16384)
            f.seek(start)
            data = f.read()
    except OSError as e:
        return f"(no log: {e})"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def _terminate_sync(procs, timeout: float) -> None:
    """
    SIGTERM, wait up to ``timeout`` seconds, SIGKILL, reap: for callers
    without a reactor (atexit).
    """
    for proc in procs:
        _signal(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(proc.poll() is not None for proc in procs):
            return
        time.sleep(0.05)
    for proc in procs:
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# -- the service ------------------------------------------------------------


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
    ):
        if storage_nodes < 1:
            raise ValueError(f"storage_nodes must be at least 1, not {storage_nodes}")
        if not 1 <= needed <= total:
            raise ValueError(f"need 1 <= needed <= total, not needed={needed} total={total}")
        if not 1 <= happy <= storage_nodes:
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
        self._command = list(tahoe_command) if tahoe_command else _default_command()
        self.ready_timeout = ready_timeout
        self.node_url: str | None = None
        # name -> Popen of the nodes this object started and has not
        # seen exit yet.
        self._procs: dict[str, subprocess.Popen] = {}
        # name -> size of its run log when this object started it.
        self._log_offsets: dict[str, int] = {}
        self._starting: Deferred | None = None
        self._deadline = 0.0
        self._stopping = False
        self._result = None  # None, the URL, or a Failure
        self._waiters: list[Deferred] = []

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
            self._terminate(name, proc.pid, lambda: proc.poll() is not None))

    def when_ready(self) -> Deferred:
        """
        A Deferred that fires with ``node_url`` when the grid is ready, or
        fails with the error that stopped its start.
        """
        if isinstance(self._result, Failure):
            return fail(self._result)
        if self._result is not None:
            return succeed(self._result)
        d = Deferred()
        self._waiters.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._result = None
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addBoth(self._start_finished)

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        self.node_url = None
        return Deferred.fromCoroutine(self._stop(self._starting))

    async def connected_servers(self) -> int:
        """
        How many storage servers the client node is connected to now.
        """
        if self.node_url is None:
            raise GridStartError("the embedded grid is not running")
        # A persistent pool, closed at the end: closeCachedConnections()
        # fires when the connection is really gone.
        pool = _QuietPool(self._reactor, persistent=True)
        try:
            return await self._count_connected(
                HTTPClient(Agent(self._reactor, pool=pool)), self.node_url
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
        _terminate_sync(list(procs.values()), timeout)
        for name, proc in procs.items():
            if proc.poll() is not None:
                _remove_pidfile(self.node_dir(name), proc.pid)
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
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        return None

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

    def _storage_names(self, existing: list[str]) -> list[str]:
        wanted = {f"{STORAGE_PREFIX}{i}" for i in range(1, self.storage_nodes + 1)}
        names = wanted | {n for n in existing if _STORAGE_RE.match(n)}
        return sorted(names, key=lambda n: int(_STORAGE_RE.match(n).group(1)))

    def _existing_nodes(self) -> list[str]:
        os.makedirs(self.basedir, exist_ok=True)
        return sorted(
            n
            for n in os.listdir(self.basedir)
            if (n in (INTRODUCER, CLIENT) or _STORAGE_RE.match(n))
            and os.path.isfile(os.path.join(self.basedir, n, "tahoe.cfg"))
        )

    async def _start_nodes(self) -> str:
        existing = await self._in_thread(self._existing_nodes)
        await self._take_over_leftovers(existing)

        ports = {}
        for name in existing:
            ports[name] = await self._in_thread(_node_port, self.node_dir(name))

        # The introducer first: the others need its FURL.
        if INTRODUCER not in existing:
            [port] = await self._in_thread(
                _pick_free_ports, 1, {p for p in ports.values() if p}
            )
            self._log.info("creating tahoe introducer on port {port}", port=port)
            await self._in_thread(
                _run_create,
                self._command,
                self.basedir,
                INTRODUCER,
                [
                    "create-introducer",
                    "--listen=tcp",
                    f"--port=tcp:{port}:interface=127.0.0.1",
                    f"--location=tcp:127.0.0.1:{port}",
                ],
            )
            ports[INTRODUCER] = port
        await self._launch([INTRODUCER], ports)
        furl = await self._wait_for_introducer(ports[INTRODUCER])

        # Then the storage nodes and the client, in parallel.
        storage = self._storage_names(existing)
        missing = [n for n in storage + [CLIENT] if n not in existing]
        if missing:
            new_ports = await self._in_thread(
                _pick_free_ports, len(missing), {p for p in ports.values() if p}
            )
            ports.update(zip(missing, new_ports))
            await _gather([self._create(name, ports[name], furl) for name in missing])
        await self._in_thread(
            _set_config_values,
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

    def _create(self, name: str, port: int, furl: str) -> Deferred:
        common = [
            f"--nickname={name}",
            f"--introducer={furl}",
            f"--shares-needed={self.needed}",
            f"--shares-happy={self.happy}",
            f"--shares-total={self.total}",
        ]
        if name == CLIENT:
            args = [
                "create-client",
                f"--webport=tcp:{port}:interface=127.0.0.1",
            ] + common
        else:
            args = [
                "create-node",
                "--listen=tcp",
                f"--port=tcp:{port}:interface=127.0.0.1",
                f"--location=tcp:127.0.0.1:{port}",
                "--webport=none",
            ] + common
        self._log.info("creating tahoe node {name} on port {port}", name=name, port=port)
        return self._in_thread(_run_create, self._command, self.basedir, name, args)

    async def _take_over_leftovers(self, names: list[str]) -> None:
        """
        Stop node processes that a previous daemon left running; drop
        stale pidfiles.
        """
        stops = []
        for name in names:
            nodedir = self.node_dir(name)
            pid, stale = await self._in_thread(_leftover_pid, nodedir)
            if stale:
                self._log.info("removed stale pidfile of tahoe node {name}", name=name)
            if pid is not None:
                self._log.info(
                    "stopping leftover tahoe node {name} (pid {pid})", name=name, pid=pid
                )
                stops.append(
                    Deferred.fromCoroutine(
                        self._terminate(name, pid, lambda pid=pid: not _pid_alive(pid))
                    )
                )
        await _gather(stops)

    async def _launch(self, names: list[str], ports: dict[str, int | None]) -> None:
        busy = []
        for name in names:
            port = ports.get(name)
            if port and await self._in_thread(_port_in_use, port):
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
        nodedir = self.node_dir(name)
        os.makedirs(os.path.join(nodedir, "logs"), exist_ok=True)
        with open(_log_path(nodedir), "ab") as logfile:
            logfile.write(
                f"--- gridbackupd: starting tahoe run at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode()
            )
            logfile.flush()
            self._log_offsets[name] = logfile.tell()
            proc = subprocess.Popen(
                self._command + ["run", "--allow-stdin-close", nodedir],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=nodedir,
                start_new_session=True,
                close_fds=True,
            )
        self._procs[name] = proc
        if self._stopping:
            # stopService ran while this thread was starting the node and
            # may not have seen it: stop it here.
            _terminate_sync([proc], STOP_TIMEOUT)
            self._procs.pop(name, None)
            return None
        return proc.pid

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
                tail = _log_tail(nodedir, self._log_offsets.get(name, 0))
                raise GridStartError(
                    f"tahoe node {name!r} exited with status {status} while the "
                    f"embedded grid was starting; last lines of "
                    f"{_log_path(nodedir)}:\n{tail}"
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
            furl = await self._in_thread(_read_furl, path)
            if furl is not None and await self._in_thread(_accepts_connections, port):
                return furl
            self._check_deadline(f"the introducer does not listen on 127.0.0.1:{port}")
            await self._sleep(POLL_INTERVAL)

    async def _wait_until_ready(self, url: str) -> None:
        pool = _QuietPool(self._reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        client = HTTPClient(Agent(self._reactor, pool=pool))
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
                    if connected >= self.happy:
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
        # connection_status is a summary such as
        # "Connected to tcp:127.0.0.1:PORT via tcp".
        return sum(
            1
            for server in data.get("servers", [])
            if str(server.get("connection_status", "")).lower().startswith("connected")
        )

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
                    self._terminate(name, proc.pid, lambda proc=proc: proc.poll() is not None)
                )
            )
        await _gather(stops)

    async def _terminate(self, name: str, pid: int, gone) -> None:
        """
        SIGTERM one node, wait up to STOP_TIMEOUT seconds, then SIGKILL;
        return when it is gone.
        """
        nodedir = self.node_dir(name)
        if not gone():
            _signal(pid, signal.SIGTERM)
            deadline = self._reactor.seconds() + STOP_TIMEOUT
            while not gone() and self._reactor.seconds() < deadline:
                await self._sleep(STOP_POLL_INTERVAL)
            if not gone():
                self._log.warn(
                    "tahoe node {name} (pid {pid}) ignored SIGTERM; killing it",
                    name=name,
                    pid=pid,
                )
                _signal(pid, signal.SIGKILL)
                while not gone():
                    await self._sleep(STOP_POLL_INTERVAL)
        # Tahoe removes its pidfile on SIGTERM, not after SIGKILL.
        await self._in_thread(_remove_pidfile, nodedir, pid)
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            del self._procs[name]


def _read_furl(path: str) -> str | None:
    """
    The FURL in ``path`` once it is completely written (foolscap writes
    it with a trailing newline, not atomically).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if text.startswith("pb://") and text.endswith("\n"):
        return text.strip()
    return None


class _QuietPool(HTTPConnectionPool):
    """
    A connection pool whose connections do not log "Starting factory" and
    "Stopping factory" on every poll.
    """

    class _factory(HTTPConnectionPool._factory):
        noisy = False


async def _gather(deferreds: list[Deferred]) -> list:
    """
    Wait for all; fail with the first error itself (not a FirstError).
    """
    try:
        return await gatherResults(deferreds, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()

