"""
The commands run around a scan (``pre_command`` and ``post_command`` in
``[backup]``): in a worker thread, with the snapshot id in the environment.

A command runs in a process group of its own with its output in files, not
pipes: a background child that keeps stdout or stderr open cannot hold the
scan, and at ``[backup] command_timeout`` the whole group is killed, not only
the shell.
"""

import os
import signal
import subprocess
import tempfile

import attr

COMMAND_TIMEOUT = 3600.0
# How much of a command's output is kept for the daemon's log.
OUTPUT_LINES = 40
OUTPUT_TAIL = 16 * 1024


@attr.frozen
class CommandResult:
    """How a command ended: ``why`` is one line when it failed; ``output`` its last lines."""

    ok: bool
    why: str = ""
    output: tuple = ()


def _tail_lines(f):
    """The last lines written to the open file ``f``, decoded for a log."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - OUTPUT_TAIL))
    text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.strip()][-OUTPUT_LINES:]


def _kill_group(proc):
    """Kill the command's whole process group, then reap the shell."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_command(command, env, timeout=COMMAND_TIMEOUT, tmpdir=None, stdin=None):
    """
    Run a pre- or post-scan shell command (in a worker thread) and wait for
    the shell alone; ``timeout`` 0 means no limit. A failure's ``why`` gives
    its exit status and the last line it wrote to stderr.  ``stdin``: bytes
    the command reads (from a file too, so a command that never reads
    cannot block on a pipe).
    """
    with tempfile.TemporaryFile(dir=tmpdir) as out, tempfile.TemporaryFile(dir=tmpdir) as err, \
            tempfile.TemporaryFile(dir=tmpdir) as given:
        given.write(stdin or b"")
        given.seek(0)
        try:
            proc = subprocess.Popen(
                command, shell=True, env={**os.environ, **env},
                stdin=given if stdin is not None else subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
            )
        except OSError as e:
            return CommandResult(False, f"could not be started: {e.strerror}")
        try:
            code = proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return CommandResult(False, f"did not finish within {timeout:g} s (its process group was killed)",
                                 tuple(_tail_lines(out) + _tail_lines(err)))
        except BaseException:
            _kill_group(proc)
            raise
        output = tuple(_tail_lines(out) + _tail_lines(err))
        if code == 0:
            return CommandResult(True, "", output)
        last = _tail_lines(err)
        status = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        return CommandResult(False, f"failed ({status})" + (f": {last[-1][:500]}" if last else ""), output)
