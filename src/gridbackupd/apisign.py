"""
Signed API requests: what the ``gridbackup`` command sends instead of the token.

Over TCP a request reaches whatever listens on the port, which is another
user's program if the daemon is down or lost its port.  So the command
never sends the token: it sends an HMAC-SHA256, under the token, of the
request (method, target with its query, the body's SHA-256), the time and
a random nonce.  The daemon (``api.auth``) checks it, refuses a time more
than ``WINDOW`` seconds off and a nonce it has seen, and signs the nonce
back in its answer, so that the command knows it talks to the daemon.
Both sides compute the same bytes, so the format lives here, once.
"""

import hashlib
import hmac
import re
import secrets

from gridbackupd import clock

SCHEME = "GridBackup-HMAC"
#: Seconds a signature's time may be off the daemon's clock.
WINDOW = 60
#: The answer's header: an HMAC of the request's nonce under the token.
RESPONSE_HEADER = "GridBackup-Signature"

_VERSION = b"gridbackup-hmac-v1"
_FIELD = re.compile(r"\s*(ts|nonce|sig)=([A-Za-z0-9_\-]+)\s*")
_NONCE = re.compile(r"^[A-Za-z0-9_\-]{16,64}$")


def _key(token):
    return token.encode("utf-8") if isinstance(token, str) else token


def request_signature(token, method, target, body, ts, nonce):
    """The hex HMAC of one request: ``target`` is the path with its query, as sent."""
    if isinstance(method, str):
        method = method.encode("ascii")
    if isinstance(target, str):
        target = target.encode("utf-8")
    message = b"\n".join([
        _VERSION, b"request", method.upper(), target,
        hashlib.sha256(body or b"").hexdigest().encode("ascii"),
        str(int(ts)).encode("ascii"), nonce.encode("ascii")])
    return hmac.new(_key(token), message, hashlib.sha256).hexdigest()


def response_signature(token, nonce):
    """What the daemon answers a signed request with: proof that it holds the token."""
    message = b"\n".join([_VERSION, b"response", nonce.encode("ascii")])
    return hmac.new(_key(token), message, hashlib.sha256).hexdigest()


def authorization(token, method, target, body, now=None, nonce=None):
    """``(Authorization header value, nonce)`` for one request."""
    ts = int(clock.wall() if now is None else now)
    nonce = nonce or secrets.token_urlsafe(18)
    sig = request_signature(token, method, target, body, ts, nonce)
    return f"{SCHEME} ts={ts},nonce={nonce},sig={sig}", nonce


def parse_authorization(value):
    """``(ts, nonce, sig)`` of a ``GridBackup-HMAC`` header, or None if it is not one well formed."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        return None
    fields = {}
    for part in rest.split(","):
        found = _FIELD.fullmatch(part)
        if found is None or found.group(1) in fields:
            return None
        fields[found.group(1)] = found.group(2)
    if set(fields) != {"ts", "nonce", "sig"} or not fields["ts"].isdigit() or not _NONCE.match(fields["nonce"]):
        return None
    return int(fields["ts"]), fields["nonce"], fields["sig"]


def same(a, b):
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
