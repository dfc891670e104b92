"""
The ``tahoe run`` processes of the embedded grid: starting one, reading
its log, finding one that a killed daemon left running, and stopping
without a reactor.

A node writes its pidfile (``NODEDIR/running.process``: pid and start
time) itself; we read it with Tahoe's own parser and trust it only for a
live process with that start time whose command line names the node, so a
reused pid is never mistaken for a node (nor killed).  Blocking functions,
run in threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psutil  # type: ignore[import-untyped]
from allmydata.util.pid import InvalidPidFile, parse_pidfile
from twisted.python.filepath import FilePath

__all__ = [
    "PIDFILE",
    "RUN_LOG",
    "alive",
    "gone",
    "leftover",
    "log_path",
    "log_tail",
    "read_pidfile",
    "remove_pidfile",
    "send_signal",
    "spawn",
    "terminate_sync",
    "watch",
]

RUN_LOG = "gridbackup-run.log"
PIDFILE = "running.process"

# How far a pidfile's start time may be from the process's, in seconds:
# both come from the same clock tick count, but the boot time they are
# added to may move a little with clock adjustments.
_START_TIME_SLACK = 1.0


def log_path(nodedir: str) -> str:
    """Where a node's output goes: ``tahoe run`` writes it to stdout."""
    return os.path.join(nodedir, "logs", RUN_LOG)


def log_tail(nodedir: str, since: int = 0, lines: int = 15) -> str:
    """The last ``lines`` lines of a node's log, from offset ``since`` on."""
    try:
        with open(log_path(nodedir), "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(since, size - 16384)
            f.seek(start)
            data = f.read()
    except OSError as e:
        return f"(no log: {e})"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def spawn(command: list[str], nodedir: str) -> tuple[subprocess.Popen, int]:
    """
    Start ``tahoe run`` for one node in its own session, its output
    appended to its log; return the process and the log's size before it.
    """
    os.makedirs(os.path.join(nodedir, "logs"), exist_ok=True)
    with open(log_path(nodedir), "ab") as logfile:
        logfile.write(
            f"--- gridbackupd: starting tahoe run at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode()
        )
        logfile.flush()
        offset = logfile.tell()
        proc = subprocess.Popen(
            command + ["run", "--allow-stdin-close", nodedir],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=nodedir,
            start_new_session=True,
            close_fds=True,
        )
    return proc, offset


def watch(proc: subprocess.Popen, on_exit) -> threading.Thread:
    """
    Call ``on_exit(status)`` in a thread of its own when ``proc`` ends
    (that thread reaps it).  A daemon thread: it never holds up the exit
    of the process, and nothing of it is on the reactor.
    """
    thread = threading.Thread(target=lambda: on_exit(proc.wait()), daemon=True,
                              name=f"tahoe-watch-{proc.pid}")
    thread.start()
    return thread


def read_pidfile(nodedir: str) -> tuple[int, float] | None:
    """The pid and start time in a node's pidfile; None without a valid one."""
    try:
        return parse_pidfile(FilePath(os.path.join(nodedir, PIDFILE)))
    except (OSError, ValueError, InvalidPidFile):
        return None


def remove_pidfile(nodedir: str, pid: int | None = None) -> None:
    """
    Remove NODEDIR/running.process (only if it still names ``pid``, when
    given).
    """
    if pid is not None:
        current = read_pidfile(nodedir)
        if current is None or current[0] != pid:
            return
    try:
        os.remove(os.path.join(nodedir, PIDFILE))
    except FileNotFoundError:
        pass


def gone(process: psutil.Process) -> bool:
    """Whether a process has ended (a zombie has), or its pid now belongs to another."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(pid: int) -> bool:
    """Whether a process runs as ``pid`` (zombies do not count)."""
    try:
        return not gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def send_signal(process: psutil.Process, signum: int) -> None:
    """Signal a process unless it has gone (psutil refuses a reused pid)."""
    try:
        process.send_signal(signum)
    except psutil.NoSuchProcess:
        pass


def leftover(nodedir: str) -> tuple[psutil.Process | None, bool]:
    """
    The tahoe process still running this node (left behind by a daemon
    that died), or None; and whether a stale pidfile was removed.

    A pidfile naming a dead process, a reused pid or some other program is
    stale: it is removed (else ``tahoe run`` refuses to start), and
    nothing is killed.
    """
    if not os.path.exists(os.path.join(nodedir, PIDFILE)):
        return None, False
    process = _node_process(nodedir)
    if process is not None:
        return process, False
    remove_pidfile(nodedir)
    return None, True


def _node_process(nodedir: str) -> psutil.Process | None:
    """The process that the pidfile names, if it is still that node's ``tahoe run``."""
    found = read_pidfile(nodedir)
    if found is None or found[0] == os.getpid():
        return None
    pid, started = found
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > _START_TIME_SLACK or gone(process):
            return None
        if _runs_node(process.cmdline(), _cwd(process), nodedir):
            return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def _cwd(process: psutil.Process) -> str | None:
    try:
        return process.cwd()
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _runs_node(args: list[str], cwd: str | None, nodedir: str) -> bool:
    """
    Whether a command line runs tahoe and names ``nodedir`` (relative
    arguments are resolved against the process's cwd).
    """
    if not any("tahoe" in a or "allmydata" in a for a in args):
        return False
    target = os.path.realpath(nodedir)
    for arg in args:
        if not arg:
            continue
        if not os.path.isabs(arg):
            if cwd is None:
                continue
            arg = os.path.join(cwd, arg)
        if os.path.normpath(arg) == target or os.path.realpath(arg) == target:
            return True
    return False


def terminate_sync(procs: list[subprocess.Popen], timeout: float) -> None:
    """
    SIGTERM, wait up to ``timeout`` seconds, SIGKILL, reap: for callers
    without a reactor (atexit).
    """
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(proc.poll() is not None for proc in procs):
            return
        time.sleep(0.05)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
