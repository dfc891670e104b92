"""
Who is signed in to the web console.

A browser never holds the API token: ``gridbackup ui`` asks for a one-time
code (single use, ``CODE_LIFETIME``), the browser trades it at ``/login``
for a session cookie (``HttpOnly``, ``SameSite=Strict``) and a CSRF value
that the page sends back in ``X-CSRF-Token`` with every request that changes
anything.  A person may also paste the token into the login form once.

Codes and sessions live in memory only: a restarted daemon forgets them,
which costs a new ``gridbackup ui``, never a secret on disk.  Times are on
the monotonic clock, so a wall clock set back cannot stretch a session.
"""

import hmac
import secrets

import attr

from gridbackupd import clock

CODE_LIFETIME = 5 * 60.0
SESSION_LIFETIME = 12 * 3600.0
SESSION_COOKIE = "gb_session"
CSRF_COOKIE = "gb_csrf"
CSRF_HEADER = "X-CSRF-Token"
#: Enough to stop a flood of codes or sessions from filling memory.
MAX_LIVE = 256


@attr.frozen
class Session:
    key: str
    csrf: str
    expires: float  # on the monotonic clock
    expires_wall: float  # the same moment on the wall clock, for the page to show


class Sessions:
    def __init__(self, monotonic=clock.monotonic, wall=clock.wall):
        self.monotonic = monotonic
        self.wall = wall
        self._codes: dict[str, float] = {}  # code -> expiry (monotonic)
        self._sessions: dict[str, Session] = {}

    def new_code(self):
        """A one-time code and its expiry on the wall clock."""
        now = self.monotonic()
        self._purge(now)
        code = secrets.token_urlsafe(24)
        self._codes[code] = now + CODE_LIFETIME
        _bounded(self._codes)
        return code, self.wall() + CODE_LIFETIME

    def exchange(self, code):
        """The new session for a live code (which is spent), or None."""
        now = self.monotonic()
        self._purge(now)
        for known in list(self._codes):
            if hmac.compare_digest(known.encode(), code.encode("utf-8", "replace")):
                del self._codes[known]
                return self._open(now)
        return None

    def open(self):
        """A session for a person who gave the token itself (the login form)."""
        now = self.monotonic()
        self._purge(now)
        return self._open(now)

    def _open(self, now):
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24),
                          now + SESSION_LIFETIME, self.wall() + SESSION_LIFETIME)
        self._sessions[session.key] = session
        _bounded(self._sessions)
        return session

    def find(self, key):
        """The live session of a cookie's value, or None."""
        if not key:
            return None
        now = self.monotonic()
        self._purge(now)
        session = self._sessions.get(key)
        return session if session is not None and session.expires > now else None

    def close(self, key):
        self._sessions.pop(key, None)

    def _purge(self, now):
        self._codes = {c: t for c, t in self._codes.items() if t > now}
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}


def _bounded(table):
    """Drop the oldest entries beyond MAX_LIVE (dicts keep their insertion order)."""
    while len(table) > MAX_LIVE:
        del table[next(iter(table))]


def csrf_matches(session, given):
    return bool(given) and hmac.compare_digest(session.csrf.encode(), given.encode("utf-8", "replace"))
