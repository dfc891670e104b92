"""
One real Tahoe grid for a whole test process.

``shared_node_url()`` fires with the web API URL of a client node:

- the value of ``GRIDBACKUP_TEST_NODE_URL`` if that is set (a grid started
  outside the tests, e.g. by ``make test``), or
- a LocalGrid started in a fresh temporary directory on first use, shared by
  every later call, and stopped (processes killed, directory removed) by an
  atexit handler when the test process ends.

A test that uses it needs ``timeout = 120``: the first start takes a few
seconds.  The grid's start leaves no DelayedCall or selectable behind
once the URL is known, so trial's dirty-reactor check stays quiet.
"""

import atexit
import os
import shutil
import tempfile

from twisted.internet.defer import Deferred, succeed

from gridbackupd.grid.localgrid import LocalGrid

ENV_VAR = "GRIDBACKUP_TEST_NODE_URL"

_grid: LocalGrid | None = None
_basedir: str | None = None


def shared_node_url(reactor=None) -> Deferred:
    """
    A Deferred firing with the URL (ending in ``/``) of the shared grid's
    client node.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return succeed(env if env.endswith("/") else env + "/")
    if _grid is None:
        _start(reactor)
    # LocalGrid keeps the outcome of its start and hands it to every caller.
    return _grid.when_ready()


def shared_grid() -> LocalGrid | None:
    """
    The LocalGrid started by this module, None if none was (yet), or if the
    grid comes from ``GRIDBACKUP_TEST_NODE_URL``.
    """
    return _grid


def _start(reactor) -> None:
    global _grid, _basedir
    if reactor is None:
        from twisted.internet import reactor
    _basedir = tempfile.mkdtemp(prefix="gridbackup-testgrid-")
    _grid = LocalGrid(reactor, os.path.join(_basedir, "grid"))
    atexit.register(_cleanup)
    _grid.startService()


def _cleanup() -> None:
    """
    At exit (the reactor is stopped by then): kill the node processes and
    remove the grid's directory.
    """
    if _grid is not None:
        _grid.kill_all()
    if _basedir is not None:
        shutil.rmtree(_basedir, ignore_errors=True)
