"""
The console's side of the listener (issue 14), through a real daemon: a
one-time code becomes a session cookie and is spent; cookie requests that
change anything need the CSRF value; a request naming another host (DNS
rebinding) or sent by a page of another site is refused; every answer
carries the strict headers; the token never appears in a URL or a page.
"""

import io
import json
import os
import shutil
import tempfile

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool

from gridbackupd.api.console import CSP
from gridbackupd.cli import main as cli
from gridbackupd.upload.sampler import UploadSampler
from tests.support.daemoncase import DaemonTestCase


class Browserish:
    """A client that keeps cookies by hand and sends exactly the headers it is given."""

    def __init__(self, testcase, base):
        self.base = base
        self.cookies = {}
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        testcase.addCleanup(pool.closeCachedConnections)

    async def request(self, method, path, body=None, headers=None):
        h = {}
        if self.cookies:
            h["Cookie"] = ["; ".join(f"{k}={v}" for k, v in self.cookies.items())]
        h.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, self.base + path, data=data, headers=h,
                                           allow_redirects=False)
        content = await response.content()
        for raw in response.headers.getRawHeaders("set-cookie", []):
            pair = raw.split(";")[0]
            name, _, value = pair.partition("=")
            if "Max-Age=0" in raw:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response, content


class ConsoleAuthTests(DaemonTestCase):
    files = 5

    def browser(self):
        return Browserish(self, self.api.base)

    async def code(self):
        status, body = await self.api.call("POST", "/v1/ui/code")
        self.assertEqual(status, 201, body)
        self.assertNotIn(self.daemon.token, json.dumps(body))
        return body

    async def signed_in(self):
        b = self.browser()
        body = await self.code()
        response, _ = await b.request("GET", body["path"])
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("location"), ["/"])
        return b

    async def test_one_time_code_gives_a_session_once(self):
        body = await self.code()
        b = self.browser()
        response, _ = await b.request("GET", body["path"])
        self.assertEqual(response.code, 303)
        cookies = response.headers.getRawHeaders("set-cookie")
        session_cookie = [c for c in cookies if c.startswith("gb_session=")][0]
        csrf_cookie = [c for c in cookies if c.startswith("gb_csrf=")][0]
        for part in ("HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"):
            self.assertIn(part, session_cookie)
        self.assertNotIn("HttpOnly", csrf_cookie)
        self.assertNotIn("Secure", session_cookie)  # plain HTTP on loopback
        for cookie in cookies:
            self.assertNotIn(self.daemon.token, cookie)
        response, content = await b.request("GET", "/v1/status")
        self.assertEqual(response.code, 200, content)
        response, content = await b.request("GET", "/v1/session")
        self.assertTrue(json.loads(content)["signed_in"])
        # Spent: a second browser with the same URL gets nothing.
        other = self.browser()
        response, _ = await other.request("GET", body["path"])
        self.assertEqual(response.headers.getRawHeaders("location"), ["/?login=expired"])
        self.assertEqual(other.cookies, {})
        response, _ = await other.request("GET", "/v1/status")
        self.assertEqual(response.code, 401)

    async def test_changing_requests_need_csrf(self):
        b = await self.signed_in()
        response, content = await b.request("POST", "/v1/uploads/pause")
        self.assertEqual(response.code, 403)
        self.assertEqual(json.loads(content)["error"]["code"], "csrf")
        self.assertFalse(self.daemon.uploader.paused)
        response, content = await b.request("POST", "/v1/uploads/pause",
                                            headers={"X-CSRF-Token": ["wrong"]})
        self.assertEqual(response.code, 403)
        response, content = await b.request("POST", "/v1/uploads/pause",
                                            headers={"X-CSRF-Token": [b.cookies["gb_csrf"]]})
        self.assertEqual(response.code, 200, content)
        self.assertTrue(self.daemon.uploader.paused)

    async def test_cross_site_requests_refused(self):
        b = await self.signed_in()
        csrf = {"X-CSRF-Token": [b.cookies["gb_csrf"]]}
        for headers in ({"Sec-Fetch-Site": ["same-site"]}, {"Sec-Fetch-Site": ["cross-site"]},
                        {"Origin": ["http://127.0.0.1:1"]}, {"Origin": ["null"]}):
            response, content = await b.request("POST", "/v1/uploads/pause", headers={**headers, **csrf})
            self.assertEqual(response.code, 403, headers)
            self.assertEqual(json.loads(content)["error"]["code"], "cross_site")
        port = self.daemon.port.getHost().port
        response, content = await b.request("GET", "/v1/status", headers={
            "Sec-Fetch-Site": ["same-origin"], "Origin": [f"http://127.0.0.1:{port}"]})
        self.assertEqual(response.code, 200, content)
        self.assertFalse(self.daemon.uploader.paused)

    async def test_other_host_names_refused(self):
        b = self.browser()
        port = self.daemon.port.getHost().port
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            response, content = await b.request("GET", "/", headers={"Host": [host]})
            self.assertEqual(response.code, 421, host)
            self.assertEqual(json.loads(content)["error"]["code"], "wrong_host")
        status, body = await self.api.call("GET", "/v1/status", headers={"Host": [f"localhost:{port}"]})
        self.assertEqual(status, 200)
        status, body = await self.api.call("GET", "/v1/status", headers={"Host": ["rebound.example"]})
        self.assertEqual(status, 421)

    async def test_login_form_and_logout(self):
        b = self.browser()
        response, content = await b.request("POST", "/v1/session", {"token": "wrong"})
        self.assertEqual(response.code, 401)
        self.assertEqual(b.cookies, {})
        response, content = await b.request("POST", "/v1/session", {"token": self.daemon.token})
        self.assertEqual(response.code, 204, content)
        response, _ = await b.request("GET", "/v1/status")
        self.assertEqual(response.code, 200)
        key = b.cookies["gb_session"]
        response, _ = await b.request("DELETE", "/v1/session", headers={"X-CSRF-Token": [b.cookies["gb_csrf"]]})
        self.assertEqual(response.code, 204)
        self.assertEqual(b.cookies, {})
        b.cookies["gb_session"] = key  # a kept copy of the cookie is dead too
        response, _ = await b.request("GET", "/v1/status")
        self.assertEqual(response.code, 401)

    async def test_strict_headers_everywhere(self):
        b = self.browser()
        for path in ("/", "/v1/status", "/nope", "/static/../../etc/passwd"):
            response, _ = await b.request("GET", path)
            self.assertEqual(response.headers.getRawHeaders("content-security-policy"), [CSP], path)
            self.assertEqual(response.headers.getRawHeaders("x-content-type-options"), ["nosniff"])
            self.assertIn("frame-ancestors 'none'", CSP)
        response, _ = await b.request("GET", "/static/../../etc/passwd")
        self.assertEqual(response.code, 404)

    async def test_series(self):
        status, body = await self.api.call("GET", "/v1/series")
        self.assertEqual(status, 200)
        self.assertEqual(body["uploads"], [])
        sampler = UploadSampler(self.daemon.conn, self.daemon.uploader)
        sampler.sample()
        status, body = await self.api.call("GET", "/v1/series")
        [sample] = body["uploads"]
        self.assertEqual(set(sample), {"time", "uploaded_bytes", "backlog_bytes", "backlog_blobs"})

    async def test_ui_command_prints_url_first(self):
        out, err = io.StringIO(), io.StringIO()
        code = await deferToThread(cli.main, ["--config", self.config_path, "ui", "--no-browser"], out, err)
        self.assertEqual(code, 0, err.getvalue())
        first = out.getvalue().splitlines()[0]
        port = self.daemon.port.getHost().port
        self.assertTrue(first.startswith(f"http://127.0.0.1:{port}/login?code="), first)
        self.assertNotIn(self.daemon.token, out.getvalue())
        # The URL works in a browser.
        b = self.browser()
        response, _ = await b.request("GET", first[len(f"http://127.0.0.1:{port}"):])
        self.assertEqual(response.headers.getRawHeaders("location"), ["/"])
        self.assertIn("gb_session", b.cookies)


class ConsoleUnixOnlyTests(DaemonTestCase):
    files = 2

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="gbui")
        os.chmod(directory, 0o700)
        self.addCleanup(shutil.rmtree, directory, True)
        self.listen = f"unix:{directory}/api.sock"
        return super().setUp()

    async def test_ui_needs_tcp(self):
        out, err = io.StringIO(), io.StringIO()
        code = await deferToThread(cli.main, ["--config", self.config_path, "ui", "--no-browser"], out, err)
        self.assertEqual(code, 1)
        self.assertIn("TCP", err.getvalue())
        self.assertIn("tunnel", err.getvalue())
        self.assertEqual(out.getvalue(), "")
