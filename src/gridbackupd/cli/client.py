"""
How the ``gridbackup`` command finds and calls the daemon.

The daemon is found from its own configuration file: the endpoint it wrote
to ``state_dir/api_endpoint`` (``[api] listen`` if it has not written one)
and the token in ``state_dir/private/api_token``.  Calls are plain
synchronous HTTP on the standard library (http.client): no reactor.  Every
failure is an ``Exit`` with the command's exit code and one line for a person.
"""

import base64
import http.client
import json
import os
import re
import socket
import urllib.parse

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
TIMEOUT = 60.0
POLL = 0.5


class Exit(Exception):
    """Stop with this exit code and this one line on stderr."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _split_endpoint(description):
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    kind, args = parts[0], parts[1:]
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    return kind, positional, named


def parse_endpoint(description):
    """``("unix", path)`` or ``("tcp", host, port)`` from a Twisted endpoint string."""
    kind, positional, named = _split_endpoint(description.strip())
    if kind == "unix":
        path = positional[0] if positional else named.get("address")
        if not path:
            raise ValueError(f"no socket path in {description!r}")
        return ("unix", path)
    if kind in ("tcp", "tcp6"):
        port = positional[0] if positional else named.get("port")
        host = named.get("interface") or ("::1" if kind == "tcp6" else "127.0.0.1")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return ("tcp", host, int(port))
    raise ValueError(f"cannot connect to a {kind!r} endpoint ({description!r})")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Client:
    """Calls the API: JSON in, JSON out; raises Exit on anything else."""

    def __init__(self, endpoint, token, where=""):
        self.endpoint = endpoint
        self.token = token
        self.where = where or ":".join(str(p) for p in endpoint)

    def _connection(self):
        if self.endpoint[0] == "unix":
            return _UnixConnection(self.endpoint[1], TIMEOUT)
        return http.client.HTTPConnection(self.endpoint[1], self.endpoint[2], timeout=TIMEOUT)

    def open(self, method, path, body=None):
        """Send a request; return (connection, response) with the body unread."""
        conn = self._connection()
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (ConnectionError, FileNotFoundError, socket.timeout, OSError) as e:
            conn.close()
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise Exit(UNREACHABLE, f"cannot reach the daemon at {self.where}: {reason} "
                                    "(is gridbackupd running?)")

    def call(self, method, path, body=None, missing=None):
        """The answer's JSON document; a 4xx/5xx becomes Exit(1) with the daemon's message."""
        conn, response = self.open(method, path, body)
        try:
            raw = response.read()
        except (ConnectionError, socket.timeout, OSError) as e:
            raise Exit(UNREACHABLE, f"the daemon at {self.where} stopped answering: {e}")
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            raise Exit(FAILED, f"the daemon answered {response.status} with something that is not JSON")
        if response.status >= 400:
            raise_error(response.status, doc, missing)
        return doc


def raise_error(status, doc, missing=None):
    error = doc.get("error", {}) if isinstance(doc, dict) else {}
    code = error.get("code", "")
    if status == 404 and code == "not_found" and missing:
        raise Exit(FAILED, missing)
    if status == 401:
        raise Exit(FAILED, "the daemon refused the API token: is this the right --config?")
    raise Exit(FAILED, error.get("message") or f"the daemon answered {status}")


def load_config(path):
    from gridbackupd.config import parse_config
    from gridbackupd.errors import ConfigError

    try:
        return parse_config(path)
    except ConfigError as e:
        raise Exit(USAGE, str(e))


def read_secret(path, what):
    try:
        with open(path) as f:
            value = f.read().strip()
    except FileNotFoundError:
        raise Exit(FAILED, f"{path} does not exist: has the daemon ever started with this configuration?")
    except PermissionError:
        raise Exit(FAILED, f"cannot read {what} in {path}: permission denied "
                           "(run gridbackup as the daemon's user, or as root)")
    except OSError as e:
        raise Exit(FAILED, f"cannot read {what} in {path}: {e.strerror}")
    if not value:
        raise Exit(FAILED, f"{path} is empty")
    return value


def make_client(config):
    endpoint_file = config.statedir.api_endpoint
    try:
        with open(endpoint_file) as f:
            description = f.read().strip()
    except OSError:
        description = config.api_listen
    try:
        endpoint = parse_endpoint(description)
    except (ValueError, IndexError) as e:
        raise Exit(USAGE, f"{config.path}: [api] listen: {e}")
    if endpoint[0] == "tcp" and endpoint[2] == 0:
        raise Exit(UNREACHABLE, f"the daemon has not written {endpoint_file} (is gridbackupd running?)")
    token = read_secret(config.statedir.api_token, "the API token")
    return Client(endpoint, token, description)


def path_query(path):
    """The query for one snapshot path given on the command line (bytes as the OS gave them)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "path_b64=" + urllib.parse.quote(base64.urlsafe_b64encode(raw).decode("ascii"))
    return "path=" + urllib.parse.quote(raw, safe="/")
