"""
The twistd plugin's options and service maker.

Nothing here imports the reactor at module level (that would break
``twistd --reactor``); the configuration is read in ``postOptions`` so that a
bad one stops twistd with one clear line and a non-zero exit, no traceback.
"""

import sys
from typing import NoReturn

from twisted.application.service import MultiService
from twisted.python import usage

from gridbackupd.errors import ConfigError

DEFAULT_CONFIG = "/etc/gridbackup/gridbackup.ini"


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Back up file systems to a Tahoe-LAFS grid and serve a JSON control API."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The configuration file (INI)."],
    ]

    def postOptions(self):
        from gridbackupd.config import parse_config

        try:
            self["parsed"] = parse_config(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"gridbackup: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2)


def makeService(options):
    """
    The daemon, after ``preflight`` took the state directory's lock (an
    flock: it survives twistd's fork) and checked it: a second daemon on the
    same state_dir, or one that cannot use it, stops here with one line and
    exit status 1, before it listens or touches the grid or the database.
    """
    from twisted.internet import reactor

    from gridbackupd.errors import GridBackupError
    from gridbackupd.service import from_config, preflight

    try:
        lock = preflight(options["parsed"])
    except GridBackupError as e:
        _exit_with(str(e))
    return _OneLineExit(from_config(reactor, options["parsed"], lock=lock))


def _exit_with(line) -> NoReturn:
    sys.stderr.write(f"gridbackup: {line}\n")
    sys.stderr.flush()
    raise SystemExit(1)


class _OneLineExit(MultiService):
    """
    The daemon under twistd: a start that fails before the reactor runs (the
    API cannot listen) ends the process with one line and exit status 1, not
    a traceback.  The line goes to the log, where twistd sends stderr by now.
    """

    def __init__(self, daemon):
        super().__init__()
        self.daemon = daemon
        daemon.setServiceParent(self)

    def privilegedStartService(self):
        from twisted.internet import reactor

        from gridbackupd.clock import steady_reactor
        from gridbackupd.errors import GridBackupError

        # Before anything is scheduled: every timer and time-out of the
        # daemon on a monotonic clock, so that a wall clock set back an hour
        # holds none of them back an hour (and one set forward fires none).
        steady_reactor(reactor)
        try:
            super().privilegedStartService()
        except GridBackupError as e:
            _exit_with(str(e))
