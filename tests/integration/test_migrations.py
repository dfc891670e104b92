"""
A database made by gridbackupd as of commit d7f75c6 (schema 5) is upgraded
by today's code and the backup set goes on from it (issue 18: new
migrations are tested by upgrading a database made by d7f75c6).

``tests/fixtures/d7f75c6`` was written by that commit's daemon
(``make.py`` there says how): its database as the daemon left it, its
logs, its root cap and what its fake grid held.  The fake grid is loaded
into today's fake, served on a loopback port, and today's daemon starts on
the old state directory, at the path it had (an upgrade happens in place;
the database records absolute paths).  Its migrations run to the newest
schema, the same as a new database's; the old snapshots are listed,
browsed and restored byte for byte; a new backup dedups against the old
blobs and restores byte for byte; every snapshot is reachable from the
root cap alone.
"""

import base64
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import sqlite3

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from gridbackupd.config import parse_config
from gridbackupd.grid.client import TahoeClient
from gridbackupd.service import from_config
from gridbackupd.state import db as dbmod
from gridbackupd.testing.configfile import write_config
from gridbackupd.testing.fake_tahoe import FakeTahoe
from gridbackupd.testing.fake_tahoe.node import _Link, _MutableDir
from tests.support import REPO
from tests.support.daemoncase import api_client
from tests.support.reachcheck import missing_from_root
from tests.support.trees import tree_listing

FIXTURE = os.path.join(REPO, "tests", "fixtures", "d7f75c6")
#: The fixture's schema version: what d7f75c6 wrote.
OLD_VERSION = 5


def load_grid(path):
    """A fake Tahoe holding what ``make.py`` dumped of the old one."""
    with open(path) as f:
        doc = json.load(f)
    fake = FakeTahoe()
    fake.files = {cap: base64.b64decode(data) for cap, data in doc["files"].items()}
    fake.mutable_dirs = {
        fp: _MutableDir(d["writecap"], d["readcap"], {n: _Link(*lk) for n, lk in d["children"].items()})
        for fp, d in doc["mutable_dirs"].items()}
    fake.immutable_dirs = {cap: {n: _Link(*lk) for n, lk in children.items()}
                           for cap, children in doc["immutable_dirs"].items()}
    fake._dir_counter = doc["dir_counter"]
    return fake


def schema(path):
    """Every table, index and its SQL, and the schema version."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        return rows, conn.execute("PRAGMA user_version").fetchone()[0]


def digests(root):
    """relative path -> SHA-256 of every file under ``root``."""
    found = {}
    for top, _, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


class FixtureTests(TestCase):
    def test_no_path_of_a_machine(self):
        """The fixture's data names no path but its own neutral base (no home, no work tree)."""
        with open(os.path.join(FIXTURE, "trees.json")) as f:
            base = json.load(f)["base"].encode()
        for top, _, files in os.walk(FIXTURE):
            for name in files:
                if name == "make.py":
                    continue
                with open(os.path.join(top, name), "rb") as f:
                    data = f.read()
                if name.endswith(".gz"):
                    data = gzip.decompress(data)
                for word in (b"/work/", b"/root/", b"/home/"):
                    self.assertNotIn(word, data, name)
                for found in re.finditer(rb"/tmp/", data):
                    self.assertTrue(data.startswith(base, found.start()),
                                    f"{name}: {data[found.start():found.start() + 40]!r}")


class UpgradeTests(TestCase):
    timeout = 180

    async def setUp(self):
        with open(os.path.join(FIXTURE, "trees.json")) as f:
            self.made = json.load(f)
        self.base = self.made["base"]
        # The old state directory's own path, for one test process at a time.
        lock = os.open(self.base + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(self.base, ignore_errors=True)
        self.addCleanup(shutil.rmtree, self.base, True)
        self.state = os.path.join(self.base, "state")
        os.makedirs(os.path.join(self.state, "private"), mode=0o700)
        self.database = os.path.join(self.state, "state.sqlite")
        with gzip.open(os.path.join(FIXTURE, "state.sqlite.gz")) as f, open(self.database, "wb") as g:
            g.write(f.read())
        os.chmod(self.database, 0o600)
        shutil.copytree(os.path.join(FIXTURE, "logs"), os.path.join(self.state, "logs"))
        with open(os.path.join(FIXTURE, "rootcap")) as f:
            self.rootcap = f.read().strip()
        fd = os.open(os.path.join(self.state, "private", "rootcap"), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.rootcap + "\n")
        self.fake = load_grid(os.path.join(FIXTURE, "grid.json"))
        port = reactor.listenTCP(0, Site(self.fake.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.node_url = f"http://127.0.0.1:{port.getHost().port}/"
        self.tree = os.path.join(self.base, "data")

    async def start_daemon(self):
        # No maintenance on a schedule: the fixture's epoch is long past.
        extra = "[maintenance]\nlease_interval = 0\ncheck_interval = 0\ndrill_interval = 0\n"
        config = write_config(self.base, self.node_url, [self.tree], extra=extra,
                              hostname=self.made["hostname"])
        self.daemon = from_config(reactor, parse_config(config))
        self.daemon.startService()
        self.addCleanup(lambda: self.daemon.running and self.daemon.stopService())
        self.assertEqual(await self.daemon.when_ready(), "ready", self.daemon.error)
        self.api = api_client(self, self.daemon)

    async def call(self, method, path, body=None, expect=200):
        code, answer = await self.api.call(method, path, body)
        self.assertEqual(code, expect, answer)
        return answer

    async def restore(self, snapshot_id, name):
        """Restore a whole snapshot; the directory its tree is restored to."""
        target = os.path.join(self.base, name)
        answer = await self.call("POST", "/v1/restores", {"snapshot": snapshot_id, "target": target},
                                 expect=202)
        self.assertEqual(await self.daemon.wait_for_restore(answer["id"]), "done")
        return os.path.join(target, self.tree.lstrip("/"))

    async def test_upgrade_and_go_on(self):
        _, version = schema(self.database)
        self.assertEqual(version, OLD_VERSION)
        await self.start_daemon()

        # The migrations ran: the schema is the one a new database gets.
        fresh = os.path.join(self.mktemp(), "fresh.sqlite")
        dbmod.open_database(fresh).close()
        self.assertEqual(schema(self.database), schema(fresh))
        self.assertEqual(schema(self.database)[1], len(dbmod.MIGRATIONS))

        # The old snapshots, as the old daemon left them.
        first, second = self.made["snapshots"]
        listing = (await self.call("GET", "/v1/snapshots?limit=100"))["snapshots"]
        self.assertEqual(sorted((s["id"], s["state"], s["kind"]) for s in listing),
                         [(first, "complete", "full"), (second, "complete", "incremental")])
        files = await self.call("GET", f"/v1/snapshots/{second}/files?path={self.tree}&recursive=true")
        self.assertEqual({os.path.relpath(e["path"], self.tree): e["sha256"] for e in files["entries"]
                          if e["kind"] == "file"},
                         self.made["trees"][second])
        for snapshot_id in (first, second):
            restored = await self.restore(snapshot_id, f"restored-{snapshot_id}")
            self.assertEqual(digests(restored), self.made["trees"][snapshot_id])

        # A new backup on top of them: the old tree plus a new file.
        shutil.copytree(await self.restore(second, "old-tree"), self.tree)
        with open(os.path.join(self.tree, "sub", "after-upgrade.bin"), "wb") as f:
            f.write(os.urandom(30_000))
        third = (await self.call("POST", "/v1/backups", expect=202))["id"]
        self.assertEqual(await self.daemon.wait_for_snapshot(third), "complete")
        restored = await self.restore(third, "restored-new")
        self.assertEqual(tree_listing(restored), tree_listing(self.tree))
        with contextlib.closing(dbmod.read_only_connection(self.database)) as conn:
            # An increment on the old log, and the old blobs not sent again:
            # one pack more, for the new file.
            self.assertEqual(conn.execute("SELECT kind, parent FROM snapshots WHERE id = ?",
                                          (third,)).fetchone(), ("incremental", second))
            self.assertEqual(conn.execute("SELECT count(*) FROM packs").fetchone()[0], 3)

        client = TahoeClient(self.node_url)
        try:
            problems = await missing_from_root(client, self.rootcap, [first, second, third],
                                               os.path.join(self.base, "walk"))
        finally:
            await client.close()
        self.assertEqual(problems, [])
