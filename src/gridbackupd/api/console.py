"""
The web console's side of the listener: its static files, signing in and
out, and the checks that keep a browser's page from being turned against
the daemon.

- **Host**: a request must name this machine (127.0.0.1, localhost, [::1],
  any port, so that an SSH tunnel works) or one of ``[api] allowed_hosts``:
  a page on another site whose name was rebound to 127.0.0.1 (DNS
  rebinding) sends its own name and is refused.
- **Who**: the API token (signed or Bearer) as before, or the session
  cookie; with the cookie, anything but GET and HEAD also needs the CSRF
  value in ``X-CSRF-Token``, and a request that the browser marks as coming
  from another site (``Sec-Fetch-Site``, ``Origin``) is refused outright.
- **What a page may do**: a strict Content-Security-Policy on every answer
  (no inline script or style, nothing from elsewhere, no framing).
"""

import hmac
import json
import mimetypes
import os
from urllib.parse import urlsplit

from gridbackupd.api import session as sessionmod
from gridbackupd.api.errors import APIError

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "console", "static")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
#: Paths a browser opens before it is signed in: the page itself and its files.
PAGE_PATHS = ("/", "/index.html", "/login")
#: (method, path template) of what this module answers itself, for docs/openapi.yaml's check.
ROUTES = frozenset({
    ("get", "/"), ("get", "/login"), ("get", "/static/{name}"),
    ("get", "/v1/session"), ("post", "/v1/session"), ("delete", "/v1/session"), ("post", "/v1/ui/code"),
})
SAFE_METHODS = ("GET", "HEAD")


class Page:
    """A static answer: bytes, their type, and headers of its own."""

    def __init__(self, status, body, content_type, headers=()):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = list(headers)


def host_name(header):
    """The name in a Host header without its port ('[::1]:7234' -> '::1'), lower case."""
    header = (header or "").strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") > 1:  # a bare IPv6 address, as some clients send
        return header
    return header.partition(":")[0]


class Console:
    def __init__(self, token, allowed_hosts=(), static_dir=STATIC_DIR, sessions=None):
        self.token = token.encode("ascii")
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) | LOCAL_HOSTS
        self.static_dir = static_dir
        self.sessions = sessions if sessions is not None else sessionmod.Sessions()

    # -- checks every request goes through

    def check_host(self, request):
        """Refuse a request that names another host (a unix socket's clients send none that matter)."""
        if _over_unix(request):
            return
        name = host_name(_header(request, "host"))
        if name not in self.allowed_hosts:
            raise APIError(421, "wrong_host",
                           f"this daemon does not answer to host {name!r}; use 127.0.0.1 or localhost "
                           "(or add the name to [api] allowed_hosts)")

    @staticmethod
    def add_security_headers(request):
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)

    def check_cookie(self, request, method):
        """
        The session of a cookie-authenticated request, or a 401/403 APIError;
        None when the request carries no session cookie at all.
        """
        key = _cookie(request, sessionmod.SESSION_COOKIE)
        if key is None:
            return None
        found = self.sessions.find(key)
        if found is None:
            raise APIError(401, "unauthorized", "the console session has expired; sign in again")
        if _cross_site(request):
            raise APIError(403, "cross_site", "a request from another site is refused")
        if method not in SAFE_METHODS and not sessionmod.csrf_matches(
                found, _header(request, sessionmod.CSRF_HEADER)):
            raise APIError(403, "csrf", f"this request needs the {sessionmod.CSRF_HEADER} header "
                                        f"(the value of the {sessionmod.CSRF_COOKIE} cookie)")
        return found

    def token_matches(self, given):
        return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8", "replace"), self.token)

    # -- signing in and out

    SESSION_PATHS = ("/v1/session", "/v1/ui/code")

    def sign_in(self, request):
        """POST /v1/session: the login form's token, traded for a session (no other auth needed)."""
        body = json_body(request)
        if not self.token_matches(body.get("token")):
            raise APIError(401, "unauthorized", "wrong token (it is in state_dir/private/api_token)")
        return Page(204, b"", "text/plain; charset=utf-8", self.cookies(request, self.sessions.open()))

    def session_call(self, request, method, path, daemon):
        """The signed-in request's session endpoints; ``request.console_session`` is set or the token was given."""
        current = request.console_session
        if path == "/v1/ui/code":
            if method != "POST":
                raise APIError(405, "method_not_allowed", f"{method} is not allowed here; use POST")
            code, expires = self.sessions.new_code()
            return 201, {"code": code, "expires": round(expires, 3), "path": f"/login?code={code}"}
        if method == "GET":
            return 200, {"signed_in": current is not None,
                         "expires": round(current.expires_wall, 3) if current is not None else None}
        if method == "DELETE":
            if current is not None:
                self.sessions.close(current.key)
            return Page(204, b"", "text/plain; charset=utf-8", self.cleared_cookies())
        raise APIError(405, "method_not_allowed", f"{method} is not allowed here; use GET, POST or DELETE")

    # -- the pages

    def is_page(self, path):
        return path in PAGE_PATHS or path.startswith("/static/")

    def page(self, request, method, path):
        if method not in SAFE_METHODS:
            raise APIError(405, "method_not_allowed", f"{method} is not allowed here; use GET")
        if path == "/login":
            return self._login(request)
        name = "index.html" if path in ("/", "/index.html") else path[len("/static/"):]
        return self._static(name)

    def _static(self, name):
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            raise APIError(404, "not_found", f"no such file: {name}")
        full = os.path.join(self.static_dir, *parts)
        content_type = TYPES.get(os.path.splitext(name)[1].lower())
        if content_type is None:
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        try:
            with open(full, "rb") as f:
                body = f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise APIError(404, "not_found", f"no such file: {name}") from None
        return Page(200, body, content_type, [(b"cache-control", b"no-cache")])

    def _login(self, request):
        code = (request.args.get(b"code") or [b""])[0].decode("utf-8", "replace")
        found = self.sessions.exchange(code) if code else None
        if found is None:
            return _redirect("/?login=expired")
        page = _redirect("/")
        page.headers.extend(self.cookies(request, found))
        return page

    def cookies(self, request, found):
        """The Set-Cookie headers of a new session."""
        secure = "; Secure" if request.isSecure() else ""
        age = int(sessionmod.SESSION_LIFETIME)
        return [
            (b"set-cookie", (f"{sessionmod.SESSION_COOKIE}={found.key}; Path=/; Max-Age={age}; "
                             f"HttpOnly; SameSite=Strict{secure}").encode("ascii")),
            (b"set-cookie", (f"{sessionmod.CSRF_COOKIE}={found.csrf}; Path=/; Max-Age={age}; "
                             f"SameSite=Strict{secure}").encode("ascii")),
        ]

    @staticmethod
    def cleared_cookies():
        return [(b"set-cookie", f"{name}=; Path=/; Max-Age=0; SameSite=Strict".encode("ascii"))
                for name in (sessionmod.SESSION_COOKIE, sessionmod.CSRF_COOKIE)]


def _redirect(location):
    return Page(303, b"", "text/plain; charset=utf-8", [(b"location", location.encode("ascii"))])


def _header(request, name):
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _cookie(request, name):
    value = request.getCookie(name.encode("ascii"))
    return None if value is None else value.decode("ascii", "replace")


def _over_unix(request):
    host = request.getHost()
    return getattr(host, "name", None) is not None and not hasattr(host, "port")


def _cross_site(request):
    """Whether the browser says the request comes from a page of another origin."""
    fetch_site = (_header(request, "sec-fetch-site") or "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return True
    origin = _header(request, "origin")
    if origin == "null":
        return True
    if origin:
        own = _header(request, "host") or ""
        return urlsplit(origin).netloc.lower() != own.lower()
    return False


def json_body(request):
    """The request's JSON object, or a 400."""
    request.content.seek(0)
    try:
        body = json.loads(request.content.read() or b"{}")
    except ValueError:
        raise APIError(400, "bad_json", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "bad_json", "the request body must be a JSON object")
    return body
