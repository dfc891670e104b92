"""
The twistd plugin's options and service maker.

Nothing here imports the reactor at module level (that would break
``twistd --reactor``); the configuration is read in ``postOptions`` so that a
bad one stops twistd with one clear line and a non-zero exit, no traceback.
"""

import sys

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
    from twisted.internet import reactor

    from gridbackupd.errors import GridBackupError
    from gridbackupd.service import from_config, preflight

    try:
        preflight(options["parsed"])
    except GridBackupError as e:
        sys.stderr.write(f"gridbackup: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    return from_config(reactor, options["parsed"])
