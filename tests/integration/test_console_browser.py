"""
The web console in a real browser (headless Chromium through Selenium) on a
real daemon (``twistd gridbackup`` in its own process, on its embedded
grid): signing in through the one-time URL, the overview turning
"protected" after a backup started from the page, browsing to a file and
downloading it, a restore run from the form, and a page of another origin
that can neither read the API nor change anything.  Every screen is saved
at 1280x800 and 390 px wide under the test's temporary directory
(``_trial_temp/console-browser-*/screens/``), with no horizontal scroll,
and the browser's console must stay free of errors and CSP violations.

One daemon and one browser serve the whole class (trial has no
setUpClass: the first test starts them, the last one or the end of the
process stops them); the tests run in the order of their names, each making
sure of what it needs first.
"""

import atexit
import http.server
import json
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from tests.support import browser as browsermod
from tests.support.process import Daemon, free_port
from tests.support.trees import make_tree

CONFIG = """\
[gridbackup]
state_dir = %(here)s/state
[tahoe]
node_url = embedded
[backup]
paths =
    {tree}
scan_interval = 0
# The test starts the backups it wants (watching would start one at once).
watch = no
[api]
listen = tcp:{port}:interface=127.0.0.1
"""

#: A name a careless page would turn into markup.
HTML_NAME = '<img src=x onerror="document.title=1">.txt'

#: What another origin's page tries (served by a second local server).
EVIL_JS = """
const api = new URLSearchParams(location.search).get("api");
const out = {};
async function attempt(name, fn) {
  try { out[name] = await fn(); } catch (e) { out[name] = "refused: " + e.name; }
}
await attempt("read_status", async () => {
  const r = await fetch(api + "/v1/status", {credentials: "include"});
  return "read " + r.status + ": " + (await r.text()).slice(0, 80);
});
await attempt("read_session", async () => {
  const r = await fetch(api + "/v1/session", {credentials: "include"});
  return "read " + r.status;
});
await attempt("pause", async () => {
  await fetch(api + "/v1/uploads/pause", {method: "POST", credentials: "include", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: "{}"});
  return "sent";
});
document.body.dataset.result = JSON.stringify(out);
"""
EVIL_HTML = b"""<!doctype html><html><head><meta charset="utf-8"><title>elsewhere</title>
<script type="module" src="/evil.js"></script></head><body><p>another site</p></body></html>"""


class _Elsewhere(http.server.BaseHTTPRequestHandler):
    """Another origin: the same host, another port."""

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/evil.js":
            body, ctype = EVIL_JS.encode(), "text/javascript"
        elif path == "/favicon.ico":
            body, ctype = b"", "image/x-icon"
        else:
            body, ctype = EVIL_HTML, "text/html"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ConsoleInBrowserTests(SynchronousTestCase):
    skip = browsermod.unavailable()
    started = False
    daemon = browser = elsewhere = None
    signed_in = False
    backed_up = None

    def setUp(self):
        if not type(self).started:
            type(self).start_shared()

    def tearDown(self):
        last = max(name for name in dir(type(self)) if name.startswith("test_"))
        if self._testMethodName == last:
            type(self).stop_shared()

    @classmethod
    def start_shared(cls):
        cls.started = True
        atexit.register(cls.stop_shared)
        cls.dir = tempfile.mkdtemp(prefix="console-browser-", dir=os.getcwd())
        cls.screens = os.path.join(cls.dir, "screens")
        cls.downloads = os.path.join(cls.dir, "downloads")
        os.makedirs(cls.screens)
        os.makedirs(cls.downloads)
        cls.tree = os.path.join(cls.dir, "data")
        make_tree(cls.tree, files=24)
        with open(os.path.join(cls.tree, "docs", HTML_NAME), "w") as f:
            f.write("shown as text\n")
        cls.port = free_port()
        cls.base = f"http://127.0.0.1:{cls.port}"
        with open(os.path.join(cls.dir, "gridbackup.ini"), "w") as f:
            f.write(CONFIG.format(tree=cls.tree, port=cls.port))
        cls.daemon = Daemon(None, cls.dir, cls.port)
        cls.daemon.start()
        cls._until(lambda: cls.api("GET", "/v1/status")[1].get("state") == "ready", "the daemon to be ready", 180)
        cls.browser = browsermod.Browser(os.path.join(cls.dir, "profile"), cls.downloads)

    @classmethod
    def stop_shared(cls):
        if cls.browser is not None:
            cls.browser.quit()
            cls.browser = None
        if cls.elsewhere is not None:
            cls.elsewhere.shutdown()
            cls.elsewhere.server_close()
            cls.elsewhere = None
        if cls.daemon is not None:
            cls.daemon.stop()
            cls.daemon = None

    # -- the daemon, as the bearer of its token ------------------------------

    @classmethod
    def api(cls, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        try:
            request = urllib.request.Request(cls.base + path, data=data, method=method,
                                             headers={"Authorization": f"Bearer {cls.daemon.token}"})
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        except (urllib.error.URLError, ConnectionError, FileNotFoundError):
            return 0, {}

    @classmethod
    def _until(cls, check, what, timeout=120):
        """Poll the daemon (another process) until ``check()`` is true."""
        deadline = time.monotonic() + timeout
        while not check():
            if cls.daemon.proc.poll() is not None:
                raise AssertionError(f"twistd exited with {cls.daemon.proc.returncode} waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

    # -- the browser ----------------------------------------------------------

    def open(self, hash_route):
        b = self.browser
        b.driver.get(f"{self.base}/#/{hash_route}")
        b.one("#nav:not([hidden])")

    def shoot(self, name, ready):
        """Screenshots of the screen shown at both widths; the page never scrolls sideways."""
        b = self.browser
        for width in (1280, 390):
            b.size(width)
            b.one(ready)
            time.sleep(0.3)  # let the layout settle after the resize
            scroll, inner = b.fits()
            self.assertLessEqual(scroll, inner, f"{name} at {width} px scrolls sideways")
            b.js("window.scrollTo(0, 0)")
            b.screenshot(os.path.join(self.screens, f"{name}-{width}.png"))
        b.size(1280)

    def assert_clean_log(self, allowed=()):
        """No console error and no CSP violation since the last look."""
        bad = [e["message"] for e in self.browser.collect_log()
               if e["level"] in ("SEVERE", "ERROR") or "Content Security Policy" in e["message"]]
        bad = [m for m in bad if not any(re.search(a, m) for a in allowed)]
        self.assertEqual(bad, [], "the browser's console has errors")

    def ensure_signed_in(self):
        if type(self).signed_in:
            return
        code, doc = self.api("POST", "/v1/ui/code")
        self.assertEqual(code, 201, doc)
        self.assertTrue(doc["path"].startswith("/login?code="), doc)
        self.browser.driver.get(self.base + doc["path"])
        self.browser.one("#nav:not([hidden])")
        type(self).signed_in = True

    def ensure_backup(self):
        if type(self).backed_up:
            return type(self).backed_up
        self.ensure_signed_in()
        self.open("overview")
        self.browser.one("#protection .banner-actions button.primary").click()
        self.browser.wait(lambda: self.css_one('#protection[data-level="green"]'),
                          "the overview to say protected", 180)
        code, doc = self.api("GET", "/v1/snapshots/latest")
        self.assertEqual(code, 200, doc)
        type(self).backed_up = doc["id"]
        return doc["id"]

    def css_one(self, selector):
        found = self.browser.css(selector)
        return found[0] if found else None

    # -- the tests --------------------------------------------------------------

    def test_1_sign_in(self):
        """The page asks to sign in; a bad link says so; the one-time URL signs in, once."""
        b = self.browser
        b.driver.get(self.base + "/")
        b.one("#login:not([hidden]) #token")
        self.assertTrue(b.one("#login-message").get_attribute("hidden"))
        self.shoot("login", "#login:not([hidden])")
        b.driver.get(self.base + "/login?code=not-a-code")
        message = b.one("#login-message:not([hidden])")
        self.assertIn("expired", message.text)
        self.assertEqual(b.js("return location.search"), "")

        code, doc = self.api("POST", "/v1/ui/code")
        self.assertEqual(code, 201, doc)
        b.driver.get(self.base + doc["path"])
        b.one("#nav:not([hidden])")
        self.assertEqual(b.js("return location.pathname + location.search"), "/")
        cookies = {c["name"]: c for c in b.driver.get_cookies()}
        self.assertTrue(cookies["gb_session"]["httpOnly"])
        self.assertEqual(cookies["gb_session"]["sameSite"], "Strict")
        self.assertNotIn("gb_session", b.js("return document.cookie"))
        self.assertIn("gb_csrf", b.js("return document.cookie"))
        type(self).signed_in = True
        # The code was used: a second visit is turned away (the cookie still signs in).
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.build_opener(_NoRedirect).open(self.base + doc["path"])
        self.assertEqual(e.exception.headers["Location"].split("/", 3)[-1] if "://" in e.exception.headers["Location"]
                         else e.exception.headers["Location"], "/?login=expired")
        # The 401 of GET /v1/session before signing in is the page asking, not a fault.
        self.assert_clean_log(allowed=[r"/v1/session .*401"])

    def test_2_overview_protected(self):
        """Not protected before the first backup; the button starts one; the page turns green by itself."""
        self.ensure_signed_in()
        self.open("overview")
        b = self.browser
        banner = b.one("#protection")
        self.assertEqual(banner.get_attribute("data-level"), "red")
        self.assertIn("Not protected", banner.text)
        b.js("window.__not_reloaded = true")
        self.ensure_backup()
        banner = b.one("#protection")
        self.assertIn("Protected", banner.text)
        self.assertTrue(b.js("return window.__not_reloaded === true"), "the overview reloaded the page")
        self.assertEqual(b.text("#last-snapshot"), type(self).backed_up)
        self.shoot("overview", '#protection[data-level="green"]')
        self.assert_clean_log()

    def test_3_browse_and_download(self):
        """From the latest snapshot's top, into photos/, a file's details, its download, byte for byte."""
        self.ensure_backup()
        b = self.browser
        self.open("browse")
        rows = b.wait(lambda: [e.text for e in b.css("table.listing a.name")], "the listing")
        self.assertIn("photos/", rows)
        # Names are text: the one that is not UTF-8 with its byte escaped, the HTML one as written.
        self.assertIn("caf\\xe9-latin1.txt", rows)
        self.shoot("browse", "table.listing a.name")
        [link] = [e for e in b.css("table.listing a.name") if e.text == "photos/"]
        link.click()
        b.wait(lambda: [e for e in b.css("table.listing a.name") if e.text == "big.raw"], "photos/").pop().click()
        details = b.one("#file-details")
        self.assertIn("big.raw", details.text)
        self.assertIn("1,500,000 bytes", details.text)
        self.shoot("file", "#file-details")
        b.one("#download").click()
        target = os.path.join(self.downloads, "big.raw")
        b.wait(lambda: os.path.exists(target) and not any(n.endswith(".crdownload") for n in os.listdir(self.downloads)),
               "the download", 60)
        with open(target, "rb") as got, open(os.path.join(self.tree, "photos", "big.raw"), "rb") as want:
            self.assertEqual(got.read(), want.read())
        self.open(f"browse?snapshot={type(self).backed_up}&path={self.tree}/docs")
        names = b.wait(lambda: [e.text for e in b.css("table.listing a.name")], "docs/")
        self.assertIn(HTML_NAME, names)
        self.assertEqual(b.js("return document.querySelectorAll('img[src=x]').length"), 0)
        self.assert_clean_log()

    def test_4_restore(self):
        """Tick docs/, choose a target, dry run, restore, see it finish; the files are back."""
        snapshot = self.ensure_backup()
        b = self.browser
        target = os.path.join(self.dir, "restored")
        self.open(f"restore?snapshot={snapshot}")
        row = b.wait(lambda: [e for e in b.css("table.listing tbody tr")
                              if e.find_element("css selector", "a.name").text == "docs/"], "the tree").pop()
        row.find_element("css selector", "input[type=checkbox]").click()
        self.assertIn(f"{self.tree}/docs", b.text("#restore-selected"))
        b.one("#restore-target").send_keys(target)
        self.assertFalse(b.one("#restore-run").is_enabled())
        b.one("#restore-dry-run").click()
        plan = b.wait(lambda: "Files" in b.text("#restore-plan") and b.text("#restore-plan"), "the plan")
        self.assertIn("Files", plan)
        self.assertFalse(os.path.exists(target), "a dry run wrote files")
        self.shoot("restore-form", "#restore-plan dl")
        b.one("#restore-run").click()
        b.wait(lambda: "id=" in b.driver.current_url, "the restore's page")
        b.wait(lambda: self.css_one('#restore-report[data-state="done"]'), "the restore to finish", 120)
        self.assertIn("done", b.text("#restore-report"))
        self.assertFalse(b.one("#restore-cancel", timeout=5).is_displayed())
        self.shoot("restore-report", '#restore-report[data-state="done"]')
        docs = os.path.join(self.tree, "docs")
        restored = target + docs
        for name in os.listdir(docs):
            with open(os.path.join(docs, name), "rb") as want, open(os.path.join(restored, name), "rb") as got:
                self.assertEqual(got.read(), want.read(), name)
        self.assert_clean_log()

    def test_5_other_origin_cannot_use_the_api(self):
        """A page from another local port, while this browser is signed in, reads nothing and changes nothing."""
        self.ensure_signed_in()
        cls = type(self)
        if cls.elsewhere is None:
            cls.elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Elsewhere)
            threading.Thread(target=cls.elsewhere.serve_forever, daemon=True).start()
        b = self.browser
        self.open("overview")  # signed in: the cookie is there to be abused
        self.assertIn("gb_csrf", b.js("return document.cookie"))
        b.driver.get(f"http://127.0.0.1:{cls.elsewhere.server_address[1]}/?api={self.base}")
        try:
            result = json.loads(b.wait(lambda: b.js("return document.body && document.body.dataset.result"), "the other page"))
        finally:
            # Its refused reads are errors in ITS console (not the console's): leave them out.
            b.collect_log()
        self.assertTrue(result["read_status"].startswith("refused"), result)
        self.assertTrue(result["read_session"].startswith("refused"), result)
        # The POST goes out (its answer is not for that page to see), and must change nothing.
        self.assertIn("pause", result)
        code, status = self.api("GET", "/v1/status")
        self.assertEqual(code, 200)
        self.assertFalse(status["upload"]["paused"], "a request from another origin paused uploads")

    def test_6_every_screen(self):
        """Snapshots with plots, a diff, a file's history, actions, a restore's page: drawn, no errors."""
        first = self.ensure_backup()
        b = self.browser
        with open(os.path.join(self.tree, "docs", "letter.txt"), "ab") as f:
            f.write(b"P.S. changed\n")
        code, doc = self.api("POST", "/v1/backups")
        self.assertEqual(code, 202, doc)
        second = doc["id"]
        self._until(lambda: self.api("GET", f"/v1/snapshots/{second}")[1].get("complete"), "the second snapshot", 120)
        self.open("snapshots")
        b.wait(lambda: len(b.css("#snapshot-table tbody tr")) == 2, "two snapshots listed")
        b.wait(lambda: len(b.css("svg.chart rect.bar")) >= 3, "the plots")
        self.shoot("snapshots", "svg.chart rect.bar")
        self.open(f"diff?from={first}&to={second}")
        rows = b.wait(lambda: [e.text for e in b.css("#diff-table tbody tr")], "the diff")
        self.assertTrue(any("letter.txt" in r for r in rows), rows)
        self.shoot("diff", "#diff-table tbody tr")
        # A file's history, once the daemon has the endpoint.
        if self.api("GET", f"/v1/history?path={self.tree}/docs/letter.txt")[0] == 200:
            self.open(f"history?path={self.tree}/docs/letter.txt")
            b.wait(lambda: len(b.css("table.history tbody tr")) >= 2, "the history")
            self.shoot("history", "table.history")
        self.open("actions")
        b.wait(lambda: "Running" in b.text("main") or "Paused" in b.text("main"), "the upload state")
        self.shoot("actions", "#forget-plan")
        b.one("#forget-run")
        self.assert_clean_log()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None
