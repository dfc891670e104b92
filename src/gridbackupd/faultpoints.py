"""
Named fault points: writes a test may make fail as a full disk would, to
prove that the daemon says why, harms nothing already published and goes
on once there is space again.

A write path passes its file through ``writes("name", file)``, which gives
the file back as it is unless a test armed that point.  ``POINTS`` is the
registry (``tests/unit/test_faultpoints.py`` checks that each point is
named at exactly one place in the code).

The points do nothing unless ``GRIDBACKUP_TESTING=1`` is set together with
``GRIDBACKUP_FAULT_AT=name:ERRNO[:n]`` (``ERRNO`` a name of the ``errno``
module, e.g. ``ENOSPC``): the n-th write through that point (the first
when n is left out) raises ``OSError(ERRNO)``, once, as the kernel would;
the writes before and after it go through.
"""

import errno
import os
import threading

TESTING = "GRIDBACKUP_TESTING"
FAULT_AT = "GRIDBACKUP_FAULT_AT"

POINTS: dict[str, str] = {
    "scan.log_write": "a write of a scan's log file in state_dir/logs",
    "packer.pack_write": "a write of a pack file in the packs directory",
}


class _Trigger:
    """The parsed setting, and how many writes passed the armed point."""

    def __init__(self, environ):
        self.name = None
        self.errno = 0
        self.nth = 1
        self.passed = 0
        self.lock = threading.Lock()
        spec = environ.get(FAULT_AT, "")
        if environ.get(TESTING) != "1" or not spec:
            return
        name, _, rest = spec.partition(":")
        code, _, nth = rest.partition(":")
        if name not in POINTS:
            raise ValueError(f"{FAULT_AT}={spec}: no fault point named {name!r}")
        number = getattr(errno, code, None)
        if not code.startswith("E") or not isinstance(number, int):
            raise ValueError(f"{FAULT_AT}={spec}: {code!r} is not an errno name such as ENOSPC")
        self.name = name
        self.errno = number
        self.nth = int(nth) if nth else 1
        if self.nth < 1:
            raise ValueError(f"{FAULT_AT}={spec}: the count starts at 1")

    def passing(self, name):
        """Count a write through ``name``; raise the armed error at the n-th."""
        if name != self.name:
            return
        with self.lock:
            self.passed += 1
            if self.passed != self.nth:
                return
        raise OSError(self.errno, os.strerror(self.errno))


_trigger: _Trigger | None = None


def configure(environ=None):
    """Read the setting again (at start, and in tests); an unknown name is an error."""
    global _trigger
    _trigger = _Trigger(os.environ if environ is None else environ)
    return _trigger


def _current():
    return _trigger if _trigger is not None else configure()


class _FailingWrites:
    """A file whose ``write`` passes a fault point first; everything else is the file's own."""

    def __init__(self, name, file):
        self._name = name
        self._file = file

    def write(self, data):
        _current().passing(self._name)
        return self._file.write(data)

    def __getattr__(self, attribute):
        return getattr(self._file, attribute)


def writes(name, file):
    """``file``, or (only when a test armed ``name``) the same file whose writes may fail."""
    if name not in POINTS:
        raise KeyError(f"unregistered fault point {name!r}")
    if _current().name != name:
        return file
    return _FailingWrites(name, file)
