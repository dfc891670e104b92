"""
Who gets the API token (issue 12): the ``gridbackup`` command never sends
it to a stranger.  A fake server squats the API port before the command
runs (the daemon down, starting, or its port taken) and records every byte
it gets; the token never is among them.  The daemon accepts a signed
request once within its time window, refuses a replay, a stale time and a
wrong signature with a JSON 401, and still takes the README's curl recipes
(Bearer) as written.  It always listens on ``state_dir/api.sock`` too, so
one that lost its TCP port keeps answering and says why.
"""

import base64
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from gridbackupd import apisign
from gridbackupd.api.http import listen, listen_unix
from gridbackupd.cli import client
from gridbackupd.cli import main as cli
from gridbackupd.config import parse_config
from gridbackupd.errors import ConfigError
from gridbackupd.service import from_config
from gridbackupd.statedir import StateDir
from tests.integration.test_cli import gridbackup
from tests.support import REPO
from tests.support.daemoncase import DaemonTestCase, write_config
from tests.support.rawhttp import raw_request, tcp_endpoint
from tests.support.sharedgrid import shared_node_url

TOKEN = "squatted-token-0123456789abcdefghijklmnopqrstu"


class _Squatter(Protocol):
    def dataReceived(self, data):
        self.factory.received.append(data)
        if b"\r\n\r\n" in b"".join(self.factory.received):
            body = b'{"state": "ready", "scan": {"running": false}}'
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                                 b"Connection: close\r\n\r\n" + body)
            self.transport.loseConnection()


class Squatter(Factory):
    """Another user's program on the API port: answers like the daemon would, keeps what it got."""

    protocol = _Squatter

    def __init__(self):
        self.received = []

    def got(self):
        return b"".join(self.received)


def listen_squatter(testcase):
    squatter = Squatter()
    port = reactor.listenTCP(0, squatter, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return squatter, port.getHost().port


def reveals(data, token):
    """Whether ``data`` holds the token in any form a reader could undo."""
    forms = [token, base64.b64encode(token.encode()).decode(), token.encode().hex()]
    return any(form.encode() in data for form in forms)


def offline_state(testcase, endpoint):
    """A configuration whose state_dir has a token and an ``api_endpoint``, but no daemon."""
    base = os.path.abspath(testcase.mktemp())
    config = write_config(base, "http://127.0.0.1:9/", ["/tmp"])
    statedir = StateDir(os.path.join(base, "state"))
    statedir.make_private()
    with open(statedir.api_token, "w") as f:
        f.write(TOKEN + "\n")
    with open(statedir.api_endpoint, "w") as f:
        f.write(endpoint + "\n")
    return config, statedir


class SquatterTests(TestCase):
    """The command against a squatted port, with no daemon (fast: no grid)."""

    async def test_daemon_down_sends_nothing(self):
        squatter, port = listen_squatter(self)
        config, statedir = offline_state(self, f"tcp:{port}:interface=127.0.0.1")
        code, out, err = await gridbackup("--config", config, "status")
        self.assertEqual(code, 3, err)
        self.assertIn("not running", err)
        self.assertEqual(squatter.got(), b"")

    async def test_daemon_restarting_gets_signed_request_only(self):
        # The lock is held (a daemon is starting), but the endpoint it wrote last time is squatted.
        squatter, port = listen_squatter(self)
        config, statedir = offline_state(self, f"tcp:{port}:interface=127.0.0.1")
        lock = statedir.lock()
        self.addCleanup(lock.release)
        code, out, err = await gridbackup("--config", config, "status")
        self.assertEqual(code, 3, err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("not as this gridbackupd", err)
        self.assertEqual(out, b"")
        got = squatter.got()
        self.assertIn(b"GET /v1/status", got)
        self.assertIn(b"Authorization: GridBackup-HMAC ts=", got)
        self.assertFalse(reveals(got, TOKEN), got)


NOBODY = 65534

_FOREIGN_SOCKET = """
import os, socket, sys
os.chdir(sys.argv[1])
s = socket.socket(socket.AF_UNIX)
s.bind("api.sock")
os.setgid(%d)
os.setuid(%d)
s.listen(5)  # SO_PEERCRED: the credentials at listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    print(repr(data), flush=True)
    c.close()
""" % (NOBODY, NOBODY)


class PeerCredentialTests(SynchronousTestCase):
    def test_socket_of_another_user_is_refused(self):
        if os.geteuid() != 0:
            self.skipTest("needs root, to drop to nobody")
        config, statedir = offline_state(self, "tcp:1:interface=127.0.0.1")
        lock = statedir.lock()
        self.addCleanup(lock.release)
        proc = subprocess.Popen([sys.executable, "-c", _FOREIGN_SOCKET, statedir.root],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.assertEqual(proc.stdout.readline(), b"listening\n")
        err = io.StringIO()
        code = cli.main(["--config", config, "status"], io.StringIO(), err)
        err = err.getvalue()
        self.assertEqual(code, 1, err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(f"runs as uid {NOBODY}", err)
        proc.kill()
        rest = proc.stdout.read()
        self.assertNotIn(b"GridBackup", rest)
        self.assertNotIn(TOKEN.encode(), rest)

    def test_peer_check_with_injected_credentials(self):
        class Sock:
            def __init__(self, uid):
                self.uid = uid

            def getsockopt(self, level, option, size):
                assert (level, option, size) == (socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                return client._UCRED.pack(4242, self.uid, self.uid)

        client.check_peer(Sock(1000), 1000, "/x/api.sock")
        with self.assertRaises(client.Exit) as caught:
            client.check_peer(Sock(1001), 1000, "/x/api.sock")
        self.assertEqual(caught.exception.code, client.FAILED)
        self.assertIn("uid 1001", caught.exception.message)


def signed(method, target, body=b"", token=None, ts=None, nonce=None, sig=None):
    header, nonce = apisign.authorization(token, method, target, body, now=ts, nonce=nonce)
    if sig is not None:
        header = re.sub(r"sig=\w+", f"sig={sig}", header)
    data = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: {header}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    return data, nonce


class SignedRequestTests(DaemonTestCase):
    files = 5

    async def request(self, data):
        status, headers, body = await raw_request(tcp_endpoint(self.daemon), data)
        return status, headers, json.loads(body)

    def assertUnauthorized(self, answer, words):
        status, headers, doc = answer
        self.assertEqual(status, 401, doc)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(doc["error"]["code"], "unauthorized")
        self.assertIn(words, doc["error"]["message"])
        self.assertNotIn(apisign.RESPONSE_HEADER.lower(), headers)

    async def test_signed_requests(self):
        token = self.daemon.token
        data, nonce = signed("GET", "/v1/status", token=token)
        status, headers, doc = await self.request(data)
        self.assertEqual(status, 200, doc)
        self.assertEqual(doc["state"], "ready")
        self.assertEqual(headers[apisign.RESPONSE_HEADER.lower()], apisign.response_signature(token, nonce))
        # The same bytes again: a replay.
        self.assertUnauthorized(await self.request(data), "used already")
        # A time out of the window, either way.
        for ts in (time.time() - 120, time.time() + 120):
            self.assertUnauthorized(await self.request(signed("GET", "/v1/status", token=token, ts=ts)[0]),
                                    "off the daemon's clock")
        # Wrong signatures: another token, a forged one, another body than the one signed.
        self.assertUnauthorized(await self.request(signed("GET", "/v1/status", token=token + "x")[0]),
                                "signature is wrong")
        self.assertUnauthorized(await self.request(signed("GET", "/v1/status", token=token, sig="00" * 32)[0]),
                                "signature is wrong")
        data, _ = signed("POST", "/v1/uploads/pause", b"{}", token=token)
        self.assertUnauthorized(await self.request(data.replace(b"\r\n\r\n{}", b"\r\n\r\n[]")),
                                "signature is wrong")
        # A signed request with a body and a query goes through.
        status, headers, doc = await self.request(
            signed("GET", "/v1/snapshots?limit=1", token=token)[0])
        self.assertEqual(status, 200, doc)

    async def test_readme_curl_recipes(self):
        with open(os.path.join(REPO, "README.md")) as f:
            readme = f.read()
        await self.backup()
        port = self.daemon.port.getHost().port
        # The one-line recipes that need no other variable than $TOKEN.
        recipes = [line for line in readme.splitlines()
                   if line.startswith("curl -s ") and 'Bearer $TOKEN" ' in line and "127.0.0.1:7234/" in line
                   and not re.search(r"\$(?!TOKEN\b)\w", line)]
        self.assertGreaterEqual(len(recipes), 6, recipes)
        env = dict(os.environ, TOKEN=self.daemon.token)
        for recipe in recipes:
            line = recipe.replace("127.0.0.1:7234", f"127.0.0.1:{port}") + ' -w "\\n%{http_code}"'
            out, err, code = await getProcessOutputAndValue("/bin/sh", ["-c", line], env=env)
            self.assertEqual(code, 0, (recipe, err))
            self.assertIn(out.rstrip()[-3:], (b"200", b"202"), (recipe, out[-300:]))

    async def test_cli_uses_the_socket_and_cleans_up_at_stop(self):
        statedir = self.daemon.statedir
        self.assertTrue(stat.S_ISSOCK(os.stat(statedir.api_socket).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(statedir.api_socket).st_mode), 0o600)
        made = parse_config(self.config_path)
        unix = await deferToThread(client.make_client, made)
        self.assertEqual(unix.endpoint, ("unix", statedir.api_socket))
        self.assertEqual((await deferToThread(unix.call, "GET", "/v1/status"))["state"], "ready")
        # Without the socket, over TCP, signed: the daemon signs its answers back.
        self.patch(client, "_socket_reachable", lambda path, owner: False)
        tcp = await deferToThread(client.make_client, made)
        self.assertEqual(tcp.endpoint, ("tcp", "127.0.0.1", self.daemon.port.getHost().port))
        self.assertEqual((await deferToThread(tcp.call, "GET", "/v1/status"))["state"], "ready")
        await self.daemon.stopService()
        self.assertFalse(os.path.exists(statedir.api_endpoint))
        self.assertFalse(os.path.exists(statedir.api_socket))


class LostTCPTests(TestCase):
    timeout = 240

    async def test_port_taken_runs_on_the_socket(self):
        squatter, port = listen_squatter(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "data"))
        config_path = write_config(base, await shared_node_url(), [os.path.join(base, "data")],
                                   listen=f"tcp:{port}:interface=127.0.0.1")
        daemon = from_config(reactor, parse_config(config_path))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        with open(daemon.statedir.api_token) as f:
            token = f.read().strip()
        code, out, err = await gridbackup("--config", config_path, "status", "--json")
        self.assertEqual(code, 0, err)
        doc = json.loads(out)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", doc["api"]["tcp_error"])
        self.assertIn("in use", doc["api"]["tcp_error"])
        self.assertEqual(doc["api"]["tcp_error"].count("\n"), 0)
        self.assertIsNone(doc["api"]["socket_error"])
        self.assertEqual(squatter.got(), b"")
        self.assertFalse(reveals(squatter.got(), token))
        stopped: Deferred = daemon.stopService()
        await stopped
        self.assertFalse(os.path.exists(daemon.statedir.api_endpoint))


class SocketTests(TestCase):
    """A unix socket of the API: 0600 from its bind, any path length, a private directory."""

    def private_dir(self, name="gb-"):
        directory = tempfile.mkdtemp(prefix=name)
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    async def test_never_wider_than_0600(self):
        path = os.path.join(self.private_dir(), "api.sock")
        seen = []
        real_chmod = os.chmod

        def chmod(target, mode, *args, **kwargs):
            seen.append((mode, stat.S_IMODE(os.stat(target).st_mode)))
            return real_chmod(target, mode, *args, **kwargs)

        self.patch(os, "chmod", chmod)
        port = await listen(reactor, "unix:" + path, Site(Resource()))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        # Twisted's default chmods the bound socket to 0666 before anyone restricts it.
        self.assertTrue(seen)
        for asked, before in seen:
            self.assertEqual((asked & 0o077, before & 0o077), (0, 0), seen)
        await port.stopListening()
        self.assertFalse(os.path.exists(path))

    async def test_long_path(self):
        directory = os.path.join(self.private_dir(), "d" * 120)
        os.mkdir(directory, 0o700)
        path = os.path.join(directory, "api.sock")
        port = await listen_unix(reactor, path, Site(Resource()))
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with socket.socket(socket.AF_UNIX) as sock:
            client.connect_unix(sock, path)
            client.check_peer(sock, os.geteuid(), path)
        await port.stopListening()
        self.assertFalse(os.path.exists(path))

    def test_configured_socket_directory_must_be_private(self):
        directory = self.private_dir()
        base = os.path.abspath(self.mktemp())
        config = write_config(base, "http://127.0.0.1:9/", ["/tmp"], listen=f"unix:{directory}/api.sock")
        self.assertEqual(parse_config(config).api_listen, f"unix:{directory}/api.sock")
        for mode in (0o701, 0o710, 0o720, 0o755):
            os.chmod(directory, mode)
            with self.assertRaises(ConfigError) as caught:
                parse_config(config)
            message = str(caught.exception)
            self.assertEqual(message.count("\n"), 0)
            self.assertIn("[api] listen", message)
            self.assertIn(f"mode {mode:o}", message)
        os.chmod(directory, 0o700)
        os.chown(directory, NOBODY, NOBODY)
        with self.assertRaises(ConfigError) as caught:
            parse_config(config)
        self.assertIn(f"uid {NOBODY}", str(caught.exception))
