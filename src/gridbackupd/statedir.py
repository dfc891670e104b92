"""
Every path under ``state_dir``, named once.

The state directory is owner-only: it holds caps (the database, private/),
the content of files waiting to be uploaded (packs, spool) and logs that
name every backed-up file.  The daemon, its parts, the CLI and the tests ask
a ``StateDir`` for a path instead of joining names themselves, so that a
name changes in one place.
"""

import os
import secrets

import attr


@attr.frozen
class StateDir:
    root: str

    @property
    def private(self):
        """Secrets, mode 0700: the root cap and the API token."""
        return os.path.join(self.root, "private")

    @property
    def rootcap(self):
        return os.path.join(self.private, "rootcap")

    @property
    def api_token(self):
        return os.path.join(self.private, "api_token")

    @property
    def database(self):
        return os.path.join(self.root, "state.sqlite")

    @property
    def logs(self):
        """The backup logs of this machine's snapshots (``<id>.log``) and scan checkpoints."""
        return os.path.join(self.root, "logs")

    def log_path(self, snapshot_id):
        return os.path.join(self.logs, snapshot_id + ".log")

    @property
    def packs(self):
        """Packs being built or uploaded; emptied at each start."""
        return os.path.join(self.root, "packs")

    @property
    def spool(self):
        """Copies of blobs whose file may change before they are uploaded."""
        return os.path.join(self.root, "spool")

    @property
    def tmp(self):
        """Logs downloaded for a restore."""
        return os.path.join(self.root, "tmp")

    @property
    def drill(self):
        """The scratch directory of restore drills."""
        return os.path.join(self.root, "drill")

    @property
    def grid(self):
        """The embedded grid's node directories."""
        return os.path.join(self.root, "grid")

    @property
    def api_endpoint(self):
        """Where the API listens, written by the daemon for the CLI."""
        return os.path.join(self.root, "api_endpoint")

    def make(self):
        """The state directory itself, owner only."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    def check_writable(self):
        """Raise OSError unless a file can be created in the state directory."""
        self.make()
        probe = os.path.join(self.root, ".write-test")
        with open(probe, "w"):
            pass
        os.unlink(probe)

    def make_private(self):
        """private/, owner only."""
        os.makedirs(self.private, mode=0o700, exist_ok=True)
        os.chmod(self.private, 0o700)

    def ensure_api_token(self):
        """The API token, made on the first start."""
        self.make_private()
        token = read_private(self.api_token)
        if token is None:
            token = secrets.token_urlsafe(32)
            write_private(self.api_token, token + "\n")
        os.chmod(self.api_token, 0o600)
        return token

    def has_database(self):
        return os.path.exists(self.database)

    def read_rootcap(self):
        return read_private(self.rootcap)

    def write_rootcap(self, cap):
        write_private(self.rootcap, cap + "\n")

    def protect_rootcap(self):
        """The root cap readable by its owner only, whoever wrote it there."""
        os.chmod(self.rootcap, 0o600)


def write_private(path, text):
    """Write a secret file readable by its owner only, atomically."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_private(path):
    """A secret file's text, stripped; None if it is missing or empty."""
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None
