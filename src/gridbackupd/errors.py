"""
Exceptions of gridbackupd, in one plain module.

Tahoe-LAFS errors
-----------------

``gridbackupd.grid`` turns every failed call to a Tahoe node into one of
the ``Tahoe*`` classes below, in one helper.  Callers decide what to do from
the class (or from ``.transient``), never from a status code or a message:

- ``transient`` errors may go away by themselves (a node or a storage server
  comes back); the Tahoe client already retried them with backoff before it
  raised one, and a caller may try again later;
- the other errors will happen again on the same request.

A message names the operation and at most an abbreviated cap
(``gridbackupd.model.short_cap``): a full cap must never reach a log.
"""


class GridBackupError(Exception):
    """Base of every error gridbackupd raises on purpose."""


class ConfigError(GridBackupError):
    """The configuration cannot be used; the message names file, section, key."""


class DomainError(GridBackupError):
    """
    A request the daemon refuses or cannot serve, said in the domain's own
    words: ``code`` is a stable machine-readable name, the message is one
    line for a person.  ``gridbackupd.api`` maps each subclass to an HTTP
    status in one table; nothing outside ``api/`` knows a status code.
    """

    def __init__(self, code, message, **extra):
        super().__init__(code, message)
        self.code = code
        self.message = message
        # More fields of the answer's ``error`` object (``paths`` of unknown_path).
        self.extra = extra

    def __str__(self):
        return f"{self.code}: {self.message}"


class NotFound(DomainError):
    """No such snapshot, restore, job, path or object."""


class Conflict(DomainError):
    """The request clashes with the state things are in (a running job, say)."""


class Invalid(DomainError):
    """The request itself is wrong: a bad field, value or combination."""


class ReadOnly(DomainError):
    """The daemon holds only a read cap: it cannot write to the backup set."""


class Unavailable(DomainError):
    """Not now: the grid is not connected yet, or the daemon is stopping."""


class FormatError(GridBackupError):
    """
    Bytes that do not follow docs/FORMAT.md: the base of the log, index and
    pack parsers' errors, so a caller can refuse damaged data in one place.
    """


class TahoeError(GridBackupError):
    """
    A call to the Tahoe node failed.

    :ivar operation: what we were doing, e.g. ``"upload"``, ``"list_dir"``.
    :ivar status: the HTTP status code, or ``None`` when there was no answer
        (or no request: an argument was refused before sending).
    :ivar detail: a short, cap-free description of what the node said.
    :ivar sent: ``False`` when the request certainly never reached the node
        (so even a non-idempotent request may be sent again), ``True`` when
        it reached it or may have.
    """

    transient = False

    def __init__(self, operation, status=None, detail="", cap=None, sent=True):
        # Imported here so that this module stays a plain list of classes.
        from gridbackupd.model import short_cap

        self.operation = operation
        self.status = status
        self.detail = detail
        self.sent = sent
        self.short_cap = short_cap(cap) if cap is not None else None
        parts = [operation]
        if self.short_cap is not None:
            parts.append(self.short_cap)
        head = " ".join(parts)
        if status is not None:
            head = f"{head}: HTTP {status}"
        message = f"{head}: {detail}" if detail else head
        super().__init__(message)

    def __reduce__(self):
        # The default would call __init__(message) and lose the fields.
        return (_rebuild, (type(self), self.__dict__, self.args))


def _rebuild(cls, state, args):
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class TahoeUnavailable(TahoeError):
    """
    The node did not answer: connection refused, name lookup failed, the
    connection dropped or timed out; or it has too few storage servers
    connected for a mutable write.
    """

    transient = True


class TahoeUnhappy(TahoeError):
    """
    An upload could not place its shares on enough servers (HTTP 500 with
    UploadUnhappinessError / NotEnoughSharesError in the body).
    """

    transient = True


class TahoeSharesMissing(TahoeError):
    """
    Too few shares of an object were found to read it (HTTP 410 Gone).

    Transient: a storage server that holds them may come back.
    """

    transient = True


class TahoeNotFound(TahoeError):
    """The node answered 404: no such child, or no such resource."""


class TahoeBadRequest(TahoeError):
    """
    The node refused the request (a 4xx other than 404 and 410, such as a
    malformed cap (400), a conflict (409) or a range past the end (416)),
    or we refused it before sending (a write through a read-only cap), or
    a 500 that says the same thing again on every attempt (NotWriteableError).
    """


class TahoeServerError(TahoeError):
    """Any other 5xx: the node failed in a way we do not recognise."""

    transient = True


class TahoeBadResponse(TahoeError):
    """
    The node answered with a success status but the answer is not what the
    web API promises: a body of the wrong length, a range that is not the
    one asked for, JSON of the wrong shape, a cap that is not a cap.
    """


class TahoeTooLarge(TahoeError):
    """
    An object on the grid is larger than the bound its kind has (docs/FORMAT.md
    "Sizes a reader accepts"): refused before its download when its cap or
    the answer's length says so, else as soon as the bytes pass the bound.
    Whoever wrote the backup set made it so; asking again does not help.
    """


def one_line(error):
    """
    The reason a person reads for ``error`` (an exception or a Twisted
    Failure): its own message, on one line.  A ``FirstError`` of a gathered
    Deferred is unwrapped to the error inside it; never a repr, a traceback
    or a path of the installation.
    """
    # Imported here so that this module stays a plain list of classes.
    import os

    from twisted.internet.defer import FirstError
    from twisted.python.failure import Failure

    while True:
        if isinstance(error, Failure):
            error = error.value
        elif isinstance(error, FirstError):
            error = error.subFailure
        else:
            break
    text = error.message if isinstance(error, DomainError) else str(error)
    text = " ".join(text.split()) or type(error).__name__
    installed = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return text.replace(installed + os.sep, "")


class DiskFull(Unavailable):
    """
    A write under ``state_dir`` found its file system full: not now, until
    there is space again.  The message says what was being written, and
    where, on one line.
    """


def is_disk_full(error):
    """Whether ``error`` is the kernel's or SQLite's way of saying the file system is full."""
    # Imported here so that this module stays a plain list of classes.
    import errno
    import sqlite3

    if isinstance(error, DiskFull):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, sqlite3.OperationalError) and \
        getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def disk_full(what, where):
    """The ``DiskFull`` of a write of ``what`` (e.g. "the scan log") in the directory ``where``."""
    return DiskFull("disk_full", f"no space left on device while writing {what} in {where}")
