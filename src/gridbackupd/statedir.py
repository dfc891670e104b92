"""
Every path under ``state_dir``, named once.

The state directory is owner-only: it holds caps (the database, private/),
the content of files waiting to be uploaded (packs, spool) and logs that
name every backed-up file.  The daemon, its parts, the CLI and the tests ask
a ``StateDir`` for a path instead of joining names themselves, so that a
name changes in one place.

One daemon at a time owns a state directory: ``StateDir.lock()`` takes an
exclusive ``flock`` on ``daemon.lock`` before anything else in it is
touched.  An flock belongs to the open file description, so it survives
twistd's fork (the child holds the same description; fcntl locks would
not), and the descriptor is close-on-exec, so the tahoe nodes never hold it.
"""

import fcntl
import os
import secrets

import attr

from gridbackupd.errors import GridBackupError

#: The lock file's content: the holder's pid, padded so that one write replaces it whole.
PID_WIDTH = 12


class StateDirBusy(GridBackupError):
    """Another daemon holds the state directory's lock."""


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
    def mount_index(self):
        """The per-directory index of the snapshots that ``gridbackup mount`` lists (a cache)."""
        return os.path.join(self.root, "mount", "index.sqlite")

    @property
    def mount_cache(self):
        """Blobs ``gridbackup mount`` read from the grid, checked, kept up to ``[mount] cache_size``."""
        return os.path.join(self.root, "mount", "cache")

    @property
    def api_endpoint(self):
        """Where the API listens, written by the daemon for the CLI."""
        return os.path.join(self.root, "api_endpoint")

    @property
    def api_socket(self):
        """The API's unix socket, always listened on: only the state directory's owner reaches it."""
        return os.path.join(self.root, "api.sock")

    @property
    def lock_file(self):
        """Held (flock) by the one daemon that uses this state directory; holds its pid."""
        return os.path.join(self.root, "daemon.lock")

    def lock(self):
        """
        Claim the state directory for this process: a ``StateLock`` holding
        its pid, or ``StateDirBusy`` naming the pid of the daemon that has it.
        """
        self.make()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder is not None else "its pid not yet written"
            raise StateDirBusy(f"another gridbackupd ({who}) is already running on state_dir {self.root}")
        except BaseException:
            os.close(fd)
            raise
        lock = StateLock(self.lock_file, fd)
        lock.claim()
        return lock

    def lock_holder(self):
        """
        The pid of the process holding ``daemon.lock`` (from /proc/locks,
        without taking the lock: a probe that took it, even shared, could
        make a daemon starting at that moment think the directory busy);
        None if nobody holds it.  Raises OSError if this cannot be known.
        """
        st = os.stat(self.lock_file)
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" ("->" marks a waiter).
                if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                if fields[5] == wanted:
                    return int(fields[4])
        return None

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


@attr.define
class StateLock:
    """A held lock on a state directory (``StateDir.lock``); released by ``release`` or at exit."""

    path: str
    fd: int | None

    def claim(self):
        """Write this process's pid (again after a fork) for a second daemon to name."""
        if self.fd is None:
            raise ValueError("the state directory lock was released")
        os.pwrite(self.fd, f"{os.getpid()}\n".rjust(PID_WIDTH).encode("ascii"), 0)
        os.ftruncate(self.fd, PID_WIDTH)

    def release(self):
        """Let another daemon have the state directory (closing the descriptor drops the flock)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _read_pid(fd):
    """The pid written in a lock file, or None."""
    try:
        return int(os.pread(fd, PID_WIDTH, 0).decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return None


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
