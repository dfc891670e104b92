"""
The control API of a whole daemon in this process, on the shared real grid:
hostile requests get the right JSON 4xx/5xx, a unix socket is private, and
the browsing endpoints (files, content, diff, figures, metrics) answer what
the backed-up tree holds.
"""

import base64
import hashlib
import json
import os
import shutil
import stat
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.api import browse
from gridbackupd.format.pack import encode_blob
from gridbackupd.state import db as dbmod
from tests.support.daemoncase import DaemonTestCase
from tests.support.rawhttp import raw_request, tcp_endpoint


class _HangUp(Protocol):
    """Asks, and drops the connection at the first bytes of the answer."""

    def __init__(self, data):
        self.data = data
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.done.callback(None)


class DaemonCase(DaemonTestCase):
    files = 40

    def make_tree(self):
        super().make_tree()
        # Between the log's inline limit and the index's: its bytes live in the index.
        with open(os.path.join(self.tree, "docs", "small.txt"), "wb") as f:
            f.write(b"0123456789" * 100)


class HostileRequestTests(DaemonCase):
    """Each hostile request gets its 4xx as JSON, never a traceback or HTML."""

    def assertError(self, result, status, code=None):
        got_status, headers, body = result
        self.assertEqual(got_status, status, body)
        self.assertEqual(headers.get("content-type"), "application/json")
        doc = json.loads(body)
        self.assertEqual(set(doc), {"error"})
        self.assertEqual(set(doc["error"]), {"code", "message"})
        if code is not None:
            self.assertEqual(doc["error"]["code"], code)
        self.assertNotIn(b"Traceback", body)
        self.assertNotIn(b"<html", body.lower())
        return doc

    def request(self, method, path, headers=(), body=b"", auth=True):
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
        if auth:
            lines.append(f"Authorization: Bearer {self.daemon.token}")
        lines.extend(headers)
        if body and not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        return raw_request(tcp_endpoint(self.daemon), data)

    async def test_hostile(self):
        r = await self.request("GET", "/v1/status", auth=False)
        self.assertError(r, 401, "unauthorized")
        r = await self.request("GET", "/v1/status", auth=False,
                               headers=[f"Authorization: Bearer {self.daemon.token}x"])
        self.assertError(r, 401, "unauthorized")
        r = await self.request("GET", "/v1/status", auth=False,
                               headers=[f"Authorization: Basic {self.daemon.token}"])
        self.assertError(r, 401, "unauthorized")
        # Authentication comes before routing: an unknown route tells nothing without a token.
        r = await self.request("GET", "/nowhere", auth=False)
        self.assertError(r, 401)

        self.assertError(await self.request("GET", "/nowhere"), 404, "not_found")
        self.assertError(await self.request("GET", "/v1/snapshots/nope"), 404, "unknown_snapshot")
        self.assertError(await self.request("GET", "/v1/snapshots/nope/files"), 404, "unknown_snapshot")
        self.assertError(await self.request("GET", "/v1/restores/nope"), 404, "unknown_restore")
        self.assertError(await self.request("DELETE", "/v1/status"), 405, "method_not_allowed")
        self.assertError(await self.request("PUT", "/v1/backups"), 405, "method_not_allowed")

        def post(body, **kw):
            return self.request("POST", "/v1/restores", body=body, **kw)

        self.assertError(await post(b"{not json"), 400, "bad_json")
        self.assertError(await post(b"\xff\xfe"), 400, "bad_json")
        self.assertError(await post(b"[1, 2]"), 400, "bad_json")
        self.assertError(await post(b""), 400, "bad_request")
        bad = [
            {"target": "relative/dir"},
            {"target": "/tmp/x/../y"},
            {"target": "/tmp/x", "paths": ["/a/../b"]},
            {"target": "/tmp/x", "paths": "/a"},
            {"target": "/tmp/x", "overwrite": "yes"},
            {"target": "/tmp/x", "surprise": 1},
            {"snapshot": 7, "target": "/tmp/x"},
            {},
        ]
        for doc in bad:
            self.assertError(await post(json.dumps(doc).encode()), 400, "bad_request")

        # Refused from its Content-Length, before any body is sent.
        r = await self.request("POST", "/v1/restores", headers=["Content-Length: 1000000000"])
        self.assertError(r, 413, "too_large")
        # A chunked body that grows past the limit.
        chunk = b"x" * 40000
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        r = await self.request("POST", "/v1/restores", headers=["Transfer-Encoding: chunked"], body=body)
        self.assertError(r, 413, "too_large")

        # Requests twisted.web cannot parse: still a JSON 400.
        for raw in (b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nNo colon here\r\n\r\n",
                    b"POST /v1/restores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
                    b"POST /v1/restores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n{}",
                    b"GARBAGE\r\n\r\n"):
            self.assertError(await raw_request(tcp_endpoint(self.daemon), raw), 400, "bad_http")

        for query in ("limit=0", "limit=x", "limit=99999999", "cursor=%25%25", "recursive=maybe",
                      "path=relative", "path=/a/../b", "path_b64=!!"):
            self.assertError(await self.request("GET", "/v1/snapshots/latest/files?" + query),
                             400, "bad_request")
        self.assertError(await self.request("GET", "/v1/snapshots/latest/content"), 400, "bad_request")
        self.assertError(await self.request("GET", "/v1/snapshots/latest/files"), 404, "unknown_snapshot")
        self.assertError(await self.request("GET", "/v1/snapshots?limit=-1"), 400, "bad_request")
        self.assertError(await self.request("GET", "/v1/diff?from=a"), 400, "bad_request")

    async def test_unexpected_error_is_json_500(self):
        def boom():
            raise RuntimeError("secret internals")

        self.patch(self.daemon, "grid_status", boom)
        r = await self.request("GET", "/v1/status")
        doc = self.assertError(r, 500, "internal_error")
        self.assertNotIn("secret internals", doc["error"]["message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class UnixSocketTests(DaemonCase):
    @property
    def listen(self):
        # A socket path must fit in 108 bytes: not under trial's deep temp dir.
        directory = tempfile.mkdtemp(prefix="gb-")
        self.addCleanup(shutil.rmtree, directory, True)
        return "unix:" + os.path.join(directory, "api.sock")

    async def test_unix_socket_is_private_and_answers(self):
        with open(os.path.join(self.daemon.config.state_dir, "api_endpoint")) as f:
            written = f.read().strip()
        self.assertTrue(written.startswith("unix:/"), written)
        path = written[len("unix:"):]
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        data = (f"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Authorization: Bearer {self.daemon.token}\r\n\r\n").encode()
        status, headers, body = await raw_request(UNIXClientEndpoint(reactor, path), data)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["state"], "ready")


class BrowseTests(DaemonCase):
    async def test_browse_content_diff_metrics(self):
        first = await self.backup()
        tree = self.tree
        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}/files?path={tree}")
        self.assertEqual(code, 200, doc)
        self.assertEqual(doc["entry"]["kind"], "dir")
        names = {e["path"].rsplit("/", 1)[1] for e in doc["entries"]}
        self.assertEqual(names, {n.decode("utf-8", "replace") for n in os.listdir(os.fsencode(tree))})
        latin = [e for e in doc["entries"] if "path_b64" in e]
        self.assertEqual(len(latin), 1)
        self.assertEqual(base64.b64decode(latin[0]["path_b64"]),
                         os.fsencode(tree) + b"/caf\xe9-latin1.txt")
        link = [e for e in doc["entries"] if e["path"].endswith("link-to-letter")][0]
        self.assertEqual((link["kind"], link["target"]), ("symlink", "docs/letter.txt"))

        # The root: the directories above the backed-up tree are listed as virtual.
        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}/files")
        self.assertEqual(code, 200, doc)
        self.assertEqual([(e["path"], e.get("virtual")) for e in doc["entries"]],
                         [("/" + tree.split("/")[1], True)])

        # Pages: recursive, three at a time, add up to the whole tree, in order.
        seen, cursor = [], None
        while True:
            query = f"path={tree}&recursive=true&limit=3" + (f"&cursor={cursor}" if cursor else "")
            code, doc = await self.api.call("GET", f"/v1/snapshots/{first}/files?{query}")
            self.assertEqual(code, 200, doc)
            self.assertLessEqual(len(doc["entries"]), 3)
            seen.extend(e["path"] for e in doc["entries"])
            cursor = doc["next_cursor"]
            if cursor is None:
                break
        walked = sum(len(d) + len(f) for _, d, f in os.walk(tree))
        self.assertEqual(len(seen), walked)
        self.assertEqual(len(set(seen)), walked)

        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}/files?path={tree}/nothing-here")
        self.assertEqual((code, doc["error"]["code"]), (404, "unknown_path"))

        # Content: a chunked large file, a small one, an inline one, a non-UTF-8 name.
        def get(path):
            data = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    f"Authorization: Bearer {self.daemon.token}\r\n\r\n").encode()
            return raw_request(tcp_endpoint(self.daemon), data)

        for rel in ("photos/big.raw", "docs/letter.txt", "docs/small.txt", "tiny", "empty"):
            with open(os.path.join(tree, rel), "rb") as f:
                expected = f.read()
            status, headers, body = await get(f"/v1/snapshots/latest/content?path={tree}/{rel}")
            self.assertEqual(status, 200, rel)
            self.assertEqual(headers["content-type"], "application/octet-stream")
            self.assertEqual(headers["content-length"], str(len(expected)))
            self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(expected).hexdigest(), rel)
        # A client that hangs up in the middle of a large file: nothing logged, the daemon goes on.
        hangup = _HangUp((f"GET /v1/snapshots/latest/content?path={tree}/photos/big.raw HTTP/1.1\r\n"
                          f"Host: 127.0.0.1\r\nAuthorization: Bearer {self.daemon.token}\r\n\r\n").encode())
        await connectProtocol(tcp_endpoint(self.daemon), hangup)
        await hangup.done
        status, headers, body = await get(f"/v1/snapshots/latest/content?path={tree}/tiny")
        self.assertEqual((status, body), (200, b"tiny\n"))
        b64 = base64.urlsafe_b64encode(os.fsencode(tree) + b"/caf\xe9-latin1.txt").decode()
        status, headers, body = await get(f"/v1/snapshots/latest/content?path_b64={b64}")
        self.assertEqual((status, body), (200, b"not utf-8 name\n"))
        code, doc = await self.api.call("GET", f"/v1/snapshots/latest/content?path={tree}/docs")
        self.assertEqual((code, doc["error"]["code"]), (400, "not_a_file"))
        code, doc = await self.api.call("GET", "/v1/snapshots/latest/content")
        self.assertEqual(code, 400)

        # A second snapshot: one file changed, one added, one deleted.
        with open(os.path.join(tree, "docs", "letter.txt"), "wb") as f:
            f.write(b"changed\n" * 100)
        with open(os.path.join(tree, "new.txt"), "wb") as f:
            f.write(b"new file\n" * 30)
        os.unlink(os.path.join(tree, "tiny"))
        second = await self.backup()
        expected = {(f"{tree}/docs/letter.txt", "changed"), (f"{tree}/new.txt", "added"),
                    (f"{tree}/tiny", "deleted")}
        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}/diff/{second}")
        self.assertEqual(code, 200, doc)
        got = {(c["path"], c["change"]) for c in doc["changes"]}
        # Directories whose mtime changed are reported too.
        self.assertTrue(expected <= got, got)
        self.assertIn((tree, "changed"), got)
        self.assertLessEqual({p for p, c in got - expected}, {tree, f"{tree}/docs"})
        changed = [c for c in doc["changes"] if c["path"].endswith("letter.txt")][0]
        self.assertEqual((changed["before"]["size"], changed["size"]), (3300, 800))
        code, doc2 = await self.api.call("GET", f"/v1/diff?from={first}&to=latest&limit=2")
        self.assertEqual(code, 200)
        self.assertEqual(len(doc2["changes"]), 2)
        self.assertIsNotNone(doc2["next_cursor"])
        code, doc3 = await self.api.call(
            "GET", f"/v1/diff?from={first}&to=latest&cursor={doc2['next_cursor']}")
        self.assertEqual(doc2["changes"] + doc3["changes"], doc["changes"])

        # Figures against the snapshot before.
        code, doc = await self.api.call("GET", f"/v1/snapshots/{second}")
        figures = doc["figures"]
        self.assertEqual(figures["parent"], first)
        self.assertEqual((figures["files_added"], figures["files_changed"], figures["files_deleted"]),
                         (1, 1, 1))
        self.assertEqual(figures["bytes_added"], 800 + 270)
        self.assertEqual(figures["errors"], 0)
        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}")
        self.assertIsNone(doc["figures"]["parent"])
        self.assertEqual(doc["figures"]["files_added"], doc["files"])
        # Stored with the snapshot: answered with every log moved away.
        logs = [r[0] for r in self.daemon.conn.execute("SELECT log_path FROM snapshots")]
        for path in logs:
            os.rename(path, path + ".away")
        code, doc = await self.api.call("GET", f"/v1/snapshots/{second}")
        self.assertEqual(doc["figures"], figures)
        code, doc = await self.api.call("GET", "/v1/snapshots")
        self.assertEqual([s["figures"]["files_added"] for s in doc["snapshots"]],
                         [doc["snapshots"][0]["files"], 1])
        # A file's history: every snapshot it changed in.
        code, doc = await self.api.call("GET", f"/v1/history?path={tree}/docs/letter.txt")
        self.assertEqual(code, 200, doc)
        self.assertEqual([(v["snapshot"], v["change"], v["size"]) for v in doc["versions"]],
                         [(first, "added", 3300), (second, "changed", 800)])
        code, doc = await self.api.call("GET", f"/v1/history?path={tree}/tiny&host={self.daemon.config.hostname}")
        self.assertEqual([(v["snapshot"], v["change"]) for v in doc["versions"]],
                         [(first, "added"), (second, "deleted")])
        for path in logs:
            os.rename(path + ".away", path)

        # Snapshot list pages.
        code, doc = await self.api.call("GET", "/v1/snapshots?limit=1")
        self.assertEqual(([s["id"] for s in doc["snapshots"]], doc["next_cursor"]), ([first], first))
        code, doc = await self.api.call("GET", f"/v1/snapshots?limit=1&cursor={first}")
        self.assertEqual(([s["id"] for s in doc["snapshots"]], doc["next_cursor"]), ([second], None))

        # Metrics, in the Prometheus text format.
        response = await self.api.http.get(self.api.base + "/metrics",
                                           headers={"Authorization": [f"Bearer {self.api.token}"]})
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        text = (await response.content()).decode()
        from prometheus_client.parser import text_string_to_metric_families
        samples = {s.name + json.dumps(s.labels, sort_keys=True): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        self.assertEqual(samples['gridbackup_snapshots{"state": "complete"}'], 2)
        self.assertEqual(samples['gridbackup_state{"state": "ready"}'], 1)
        self.assertGreaterEqual(samples["gridbackup_grid_servers_connected{}"], 3)
        self.assertLess(samples["gridbackup_last_complete_snapshot_age_seconds{}"], 120)
        self.assertGreater(samples["gridbackup_upload_bytes_total{}"], 1_000_000)
        self.assertEqual(samples["gridbackup_upload_queue_blobs{}"], 0)
        response = await self.api.http.get(self.api.base + "/metrics")
        self.assertEqual(response.code, 401)
        await response.content()

        # A damaged log: a JSON 500 that says so, and the snapshot itself still shows.
        [log_path] = self.daemon.conn.execute(
            "SELECT log_path FROM snapshots WHERE id = ?", (first,)).fetchone()
        with open(log_path, "r+b") as f:
            f.seek(20)
            f.write(b"garbage" * 10)
        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}/files?path={tree}")
        self.assertEqual((code, doc["error"]["code"]), (500, "log_unreadable"))
        code, doc = await self.api.call("GET", f"/v1/snapshots/{first}")
        self.assertEqual(code, 200)


class SharedSetTests(DaemonCase):
    """Two hosts share one backup set: `latest` is this host's newest complete snapshot everywhere."""

    files = 10

    async def test_ls_and_restore_pick_the_same_latest(self):
        mine = await self.backup()
        # The other host's snapshot is newer (its id sorts after) and complete.
        with dbmod.transaction(self.daemon.conn):
            self.daemon.conn.execute(
                "INSERT INTO snapshots (id, state, kind, parent, host, paths, tags, requested, started, "
                "finished, files, bytes, errors, log_path, log_cap, complete) "
                "SELECT 'zz-other', state, kind, parent, 'otherhost', paths, tags, requested, started, "
                "finished, files, bytes, errors, log_path, log_cap, complete FROM snapshots WHERE id = ?",
                (mine,))
        self.assertNotEqual(self.daemon.config.hostname, "otherhost")

        code, doc = await self.api.call("GET", "/v1/snapshots/latest")
        self.assertEqual((code, doc["id"], doc["host"]), (200, mine, self.daemon.config.hostname))
        code, doc = await self.api.call("GET", f"/v1/snapshots/latest/files?path={self.tree}")
        self.assertEqual((code, doc["snapshot"]), (200, mine))
        code, doc = await self.api.call("GET", "/v1/diff?from=latest&to=zz-other")
        self.assertEqual((code, doc["from"]), (200, mine))
        state, status = await self.restore({"snapshot": "latest", "target": os.path.join(self.base, "r")})
        self.assertEqual((state, status["snapshot"]), ("done", mine))


class ContentRunTests(SynchronousTestCase):
    """Neighbouring blobs of one pack are fetched in one ranged GET, in file order."""

    def test_runs(self):
        loc = [
            ("a", 10, ("CAP1", 0, 10, "none")),
            ("b", 10, ("CAP1", 10, 5, "zstd")),     # follows a: same run
            ("c", 10, ("CAP1", 100, 10, "none")),   # a gap: a new run
            ("d", 3, b"xyz"),                       # inline in the index
            ("e", 10, ("CAP2", 15, 10, "none")),
            ("f", 10, ("CAP1", 110, 10, "none")),   # CAP1 again, after CAP2: a new run
        ]
        runs = list(browse.content_runs(loc))
        self.assertEqual([(r.cap, r.start, r.end, [b[0] for b in r.blobs]) for r in runs], [
            ("CAP1", 0, 15, ["a", "b"]), ("CAP1", 100, 110, ["c"]), (None, 0, 3, ["d"]),
            ("CAP2", 15, 25, ["e"]), ("CAP1", 110, 120, ["f"])])
        # The size limit cuts a long run.
        runs = list(browse.content_runs(loc[:2], max_run=12))
        self.assertEqual(len(runs), 2)

    def test_decode_checks_hashes(self):
        plain = [b"hello world " * 20, b"second blob " * 30]
        stored = [encode_blob(p) for p in plain]
        offset, blobs = 7, []
        for p, (data, compression) in zip(plain, stored):
            blobs.append((hashlib.sha256(p).hexdigest(), len(p), offset, len(data), compression))
            offset += len(data)
        pack = b"x" * 7 + b"".join(d for d, _ in stored)
        run = browse.Run("CAP", 7, offset, tuple(blobs))
        self.assertEqual(browse.decode_run(run, pack[7:], 7), b"".join(plain))
        broken = pack[7:-1] + bytes([pack[-1] ^ 1])
        self.assertRaises(browse.CorruptContent, browse.decode_run, run, broken, 7)
        wrong = browse.Run("CAP", 7, offset, ((blobs[0][0],) + (len(plain[0]), 7 + len(stored[0][0]),
                                                                 len(stored[1][0]), stored[1][1]),))
        self.assertRaises(browse.CorruptContent, browse.decode_run, wrong, pack[7:], 7)
