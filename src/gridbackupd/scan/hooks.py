"""
The commands run around a scan (``pre_command`` and ``post_command`` in
``[backup]``): in a worker thread, with the snapshot id in the environment.
"""

import os
import subprocess

COMMAND_TIMEOUT = 3600.0


def run_command(command, env):
    """
    Run a pre- or post-scan shell command (in a worker thread); ``(True,
    "")`` if it exited 0, else ``(False, why)`` with its exit status and the
    last line it wrote to stderr.
    """
    try:
        done = subprocess.run(
            command, shell=True, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return False, f"did not finish within {COMMAND_TIMEOUT:g} s"
    except OSError as e:
        return False, f"could not be started: {e.strerror}"
    if done.returncode == 0:
        return True, ""
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    status = (f"exit status {done.returncode}" if done.returncode > 0
              else f"killed by signal {-done.returncode}")
    return False, f"failed ({status})" + (f": {lines[-1][:500]}" if lines else "")
