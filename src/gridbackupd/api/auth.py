"""
Who may call the API: a request signed with the token (``apisign``, what
the ``gridbackup`` command sends), or ``Authorization: Bearer <token>``
(curl, Prometheus).

A signature is refused when its time is more than ``WINDOW`` seconds off
this clock, or when its nonce was seen already: each accepted nonce is kept
in memory until its time is out of the window, so a captured request cannot
be played again.  Nonces are remembered only after the signature checked,
so only a holder of the token can fill the memory.
"""

import hmac

from gridbackupd import apisign, clock
from gridbackupd.api.errors import APIError

BEARER_HINT = ("missing or wrong 'Authorization: Bearer <token>' "
               "(the token is in state_dir/private/api_token)")


def _refused(message):
    return APIError(401, "unauthorized", message)


class Authenticator:
    def __init__(self, token, now=clock.wall, window=apisign.WINDOW):
        self.token = token.encode("ascii")
        self.now = now
        self.window = window
        self._seen = {}  # nonce -> its signature's time
        self._purged = 0.0

    def check(self, method, target, body, header):
        """
        Accept or raise a 401 APIError; returns the nonce of a signed request
        (for the answer's signature), None for a Bearer token.
        """
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            if hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.token):
                return None
            raise _refused(BEARER_HINT)
        if scheme.lower() != apisign.SCHEME.lower():
            raise _refused(BEARER_HINT)
        parsed = apisign.parse_authorization(header)
        if parsed is None:
            raise _refused(f"a malformed {apisign.SCHEME} header: expected ts=<unix time>,nonce=<nonce>,sig=<hex>")
        ts, nonce, sig = parsed
        expected = apisign.request_signature(self.token, method, target, body, ts, nonce)
        if not apisign.same(sig, expected):
            raise _refused("the request's signature is wrong (is this the token in state_dir/private/api_token?)")
        now = self.now()
        if abs(now - ts) > self.window:
            raise _refused(f"the request's signature time is {round(now - ts)} s off the daemon's clock "
                           f"(at most {self.window} s is accepted)")
        self._purge(now)
        if nonce in self._seen:
            raise _refused("the request's nonce was used already (a replayed request)")
        self._seen[nonce] = ts
        return nonce

    def _purge(self, now):
        """Forget the nonces whose time can no longer be accepted anyway."""
        if now - self._purged < self.window:
            return
        self._purged = now
        self._seen = {n: ts for n, ts in self._seen.items() if ts >= now - self.window}

    def answer_header(self, nonce):
        """The header that tells a signing client this answer comes from the daemon."""
        return apisign.RESPONSE_HEADER, apisign.response_signature(self.token, nonce)
