"""
How the ``gridbackup`` command finds and calls the daemon.

The daemon is found from its own configuration file.  It must be running
(a process holds ``state_dir/daemon.lock``; else nothing is sent anywhere,
so a stale ``api_endpoint`` or a squatted port learns nothing).  The
command talks to ``state_dir/api.sock`` when it can reach it, and only if
the process behind it runs as the state directory's owner (SO_PEERCRED);
else to the endpoint the daemon wrote to ``state_dir/api_endpoint``
(``[api] listen`` if it has not written one).  It never sends the token
(``state_dir/private/api_token``) itself: every request is signed with it
(``apisign``), and an answer not signed back is not the daemon's.  Calls
are plain synchronous HTTP on the standard library (http.client): no
reactor.  Every failure is an ``Exit`` with the command's exit code and one
line for a person.
"""

import base64
import http.client
import json
import os
import re
import socket
import struct
import urllib.parse

from gridbackupd import apisign

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


#: The longest path a unix socket address holds.
UNIX_PATH_MAX = 107
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def connect_unix(sock, path):
    """Connect to a unix socket, also at a path longer than the kernel takes (through its directory's fd)."""
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        sock.connect(path)
        return
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


def check_peer(sock, owner, where):
    """Refuse (Exit) a socket whose listening process does not run as ``owner``, the state directory's."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid != owner:
        raise Exit(FAILED, f"refusing to talk to the process behind {where}: it runs as uid {uid}, "
                           f"but the state directory belongs to uid {owner}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout, owner):
        super().__init__("localhost", timeout=timeout)
        self.path = path
        self.owner = owner

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        connect_unix(self.sock, self.path)
        if self.owner is not None:
            check_peer(self.sock, self.owner, self.path)


class Client:
    """
    Calls the API: JSON in, JSON out; raises Exit on anything else.  Each
    request is signed with the token (never sent), and each answer must be
    signed back; a unix socket's process must run as ``owner``.
    """

    def __init__(self, endpoint, token, where="", owner=None):
        self.endpoint = endpoint
        self.token = token
        self.where = where or ":".join(str(p) for p in endpoint)
        self.owner = owner

    def _connection(self):
        if self.endpoint[0] == "unix":
            return _UnixConnection(self.endpoint[1], TIMEOUT, self.owner)
        return http.client.HTTPConnection(self.endpoint[1], self.endpoint[2], timeout=TIMEOUT)

    def open(self, method, path, body=None):
        """Send a request; return (connection, response) with the body unread."""
        conn = self._connection()
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        headers["Authorization"], nonce = apisign.authorization(self.token, method, path, data)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
        except (ConnectionError, FileNotFoundError, socket.timeout, OSError) as e:
            conn.close()
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise Exit(UNREACHABLE, f"cannot reach the daemon at {self.where}: {reason} "
                                    "(is gridbackupd running?)")
        except BaseException:
            conn.close()
            raise
        if response.status != 401:
            signed = response.getheader(apisign.RESPONSE_HEADER) or ""
            if not apisign.same(signed, apisign.response_signature(self.token, nonce)):
                conn.close()
                raise Exit(UNREACHABLE, f"{self.where} answered, but not as this gridbackupd (its answer is "
                                        "not signed with the API token): is another program listening there?")
        return conn, response

    def answer(self, method, path, body=None):
        """``(status, JSON document)`` of the answer, whatever its status."""
        conn, response = self.open(method, path, body)
        try:
            raw = response.read()
        except (ConnectionError, socket.timeout, OSError) as e:
            raise Exit(UNREACHABLE, f"the daemon at {self.where} stopped answering: {e}")
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            raise Exit(FAILED, f"the daemon answered {response.status} with something that is not JSON")

    def call(self, method, path, body=None, missing=None):
        """The answer's JSON document; a 4xx/5xx becomes Exit(1) with the daemon's message."""
        status, doc = self.answer(method, path, body)
        if status >= 400:
            raise_error(status, doc, missing)
        return doc


def raise_error(status, doc, missing=None):
    error = doc.get("error", {}) if isinstance(doc, dict) else {}
    code = error.get("code", "")
    if status == 404 and code == "not_found" and missing:
        raise Exit(FAILED, missing)
    if status == 401:
        reason = error.get("message") or "unauthorized"
        raise Exit(FAILED, f"the daemon refused the request ({reason}): is this the right --config?")
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


def require_running(statedir):
    """Exit(UNREACHABLE) unless a process holds the state directory's lock: nothing is sent to a stale endpoint."""
    try:
        pid = statedir.lock_holder()
    except FileNotFoundError:
        pid = None
    except OSError:
        return  # cannot tell (no /proc, or not our directory): the token's permissions will say
    if pid is None:
        raise Exit(UNREACHABLE, f"gridbackupd is not running with this configuration "
                                f"(no process holds {statedir.lock_file})")


def _socket_reachable(path, owner):
    """True if the daemon's unix socket answers; Exit if a process of another user is behind it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        connect_unix(sock, path)
        check_peer(sock, owner, path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def make_client(config):
    statedir = config.statedir
    require_running(statedir)
    token = read_secret(statedir.api_token, "the API token")
    try:
        owner = os.stat(statedir.root).st_uid
    except OSError as e:
        raise Exit(FAILED, f"cannot see the state directory {statedir.root}: {e.strerror}")
    if _socket_reachable(statedir.api_socket, owner):
        return Client(("unix", statedir.api_socket), token, statedir.api_socket, owner)
    description, endpoint = listener(config)
    return Client(endpoint, token, description, owner)


def listener(config):
    """
    ``(description, parsed)`` of the daemon's ``[api] listen`` port as it
    bound it (state_dir/api_endpoint holds the port that ``tcp:0`` got).
    """
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
    return description, endpoint


def path_query(path):
    """The query for one snapshot path given on the command line (bytes as the OS gave them)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "path_b64=" + urllib.parse.quote(base64.urlsafe_b64encode(raw).decode("ascii"))
    return "path=" + urllib.parse.quote(raw, safe="/")
