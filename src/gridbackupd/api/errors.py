"""
How the API answers a failure: one table from exception to HTTP status.

The domain raises ``errors.NotFound``, ``Conflict``, ``Invalid``,
``ReadOnly`` or ``Unavailable`` with a stable code and a message; the
answer is ``{"error": {"code", "message"}}`` with the status ``STATUS``
gives its class.  Nothing outside ``api/`` knows a status code.

``APIError`` carries its status itself: the HTTP layer's own answers (a
missing token, a method not allowed, a body too large) and the failures
below, which are answered as such only where a handler reads a log or
fetches content from the grid (``failure_answer``); anywhere else they are an
internal error, logged with their traceback.
"""

from gridbackupd import errors


class APIError(Exception):
    """An answer with its own HTTP ``status``, a machine-readable ``code`` and a ``message``."""

    def __init__(self, status, code, message, **extra):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self):
        """The answer's document: ``{"error": {"code", "message", ...extra}}``."""
        return {"error": dict(self.extra, code=self.code, message=self.message)}

    def __str__(self):
        return f"{self.status} {self.code}: {self.message}"


STATUS = {
    errors.Invalid: 400,
    errors.ReadOnly: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Unavailable: 503,
}

# (status, code, what the message says before the error's own words)
FAILURES = {
    errors.FormatError: (500, "log_unreadable", "a backup log cannot be read"),
    errors.TahoeError: (502, "grid_error", "cannot fetch the content from the grid"),
}


def failure_answer(error):
    """The APIError that answers a log that cannot be read or a grid that failed (see FAILURES)."""
    for cls, (status, code, what) in FAILURES.items():
        if isinstance(error, cls):
            return APIError(status, code, f"{what}: {error}")
    raise TypeError(f"no answer for {type(error).__name__}")


def answer(error):
    """The APIError that answers ``error``, or None: an unexpected error, answered as a 500."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, errors.DomainError):
        for cls in type(error).__mro__:
            if cls in STATUS:
                return APIError(STATUS[cls], error.code, error.message, **getattr(error, "extra", {}))
    return None
