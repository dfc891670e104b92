"""
Notifications through real receivers: a twisted.web server for the webhook
(signature, schema, no secret in the body) and the ping URL (``/fail`` on a
failed snapshot), a twisted.mail SMTP server (the mail arrives, with AUTH
when a user is set), a command reading the event on stdin; and a real
daemon whose backup fails (a pre_command exiting 1) telling the webhook
``backup_failed`` within 10 s, listing it in GET /v1/notifications, and
``gridbackup notify test`` printing each target's result.
"""

import hashlib
import hmac
import json
import os
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from gridbackupd.cli.main import main as cli_main
from gridbackupd.config import parse_config
from gridbackupd.notify.command import CommandTarget
from gridbackupd.notify.events import EVENTS
from gridbackupd.notify.mail import MailTarget
from gridbackupd.notify.notifier import RETRY_DELAYS, Notifier
from gridbackupd.notify.ping import PingTarget
from gridbackupd.notify.webhook import WebhookTarget
from gridbackupd.service import from_config
from gridbackupd.state import db as dbmod
from gridbackupd.state import notifications as stored
from gridbackupd.state import snapshots
from tests.support.daemoncase import api_client, write_config
from tests.support.receivers import HTTPReceiver, SMTPReceiver
from tests.support.sharedgrid import shared_node_url
from tests.support.trees import make_tree

SECRET_PATH = "/hooks/T0SECRET/B1SECRET"
KEY = b"signing-key-0123"
FIELDS = {"schema", "event", "host", "time", "title", "message", "condition", "since", "repeat", "active",
          "details"}


def check_schema(testcase, doc):
    testcase.assertEqual(set(doc), FIELDS)
    testcase.assertIn(doc["event"], EVENTS)
    testcase.assertEqual(doc["schema"], 1)
    testcase.assertIsInstance(doc["time"], float)


class TransportTests(TestCase):
    timeout = 60

    def setUp(self):
        self.conn = dbmod.open_database(os.path.join(self.mktemp(), "state.db"))
        self.addCleanup(self.conn.close)
        self.clock = Clock()
        self.clock.advance(time.time())

    def notifier(self, targets):
        n = Notifier(self.clock, self.conn, "h1", targets, repeat_every=86400, stale_after=0)
        n.startService()
        self.addCleanup(n.stopService)
        return n

    def delivered(self, n, count=1):
        """Fires with the list of deliveries once ``count`` attempts were recorded."""
        seen, d = [], Deferred()

        def observe(notification_id, name, delivery):
            seen.append((name, delivery))
            if len(seen) == count:
                d.callback(seen)
        n.observers.append(observe)
        return d.addTimeout(30, reactor)

    async def test_webhook_signed_with_the_schema_and_no_secret(self):
        receiver = HTTPReceiver(self)
        n = self.notifier([WebhookTarget(reactor, receiver.url(SECRET_PATH), KEY)])
        done = self.delivered(n)
        n.notify("backup_failed", "snapshot s1 failed: pre_command failed (exit status 1)",
                 condition="backup_failed", since=self.clock.seconds(), active={"backup_failed": 1})
        [(name, delivery)] = await done
        self.assertEqual((name, delivery["state"], delivery["error"]), ("webhook", "sent", None))
        [got] = receiver.received.items
        self.assertEqual((got["method"], got["path"]), ("POST", SECRET_PATH))
        self.assertEqual(got["headers"]["content-type"], "application/json")
        self.assertEqual(got["headers"]["x-gridbackup-event"], "backup_failed")
        expected = "sha256=" + hmac.new(KEY, got["body"], hashlib.sha256).hexdigest()
        self.assertEqual(got["headers"]["x-gridbackup-signature"], expected)
        doc = json.loads(got["body"])
        check_schema(self, doc)
        self.assertEqual((doc["event"], doc["host"], doc["active"]), ("backup_failed", "h1", ["backup_failed"]))
        self.assertNotIn(b"SECRET", got["body"])
        self.assertNotIn(KEY, got["body"])
        answer = json.dumps(n.recent(10))
        self.assertNotIn("SECRET", answer)
        self.assertIn(f"127.0.0.1:{receiver.port.getHost().port}", answer)

    async def test_webhook_retried_after_an_error_answer(self):
        receiver = HTTPReceiver(self, statuses=[500])
        n = self.notifier([WebhookTarget(reactor, receiver.url(SECRET_PATH))])
        first = self.delivered(n)
        n.notify("test", "hello")
        [(_, delivery)] = await first
        self.assertEqual(delivery["state"], "pending")
        self.assertEqual(delivery["error"], f"POST to 127.0.0.1:{receiver.port.getHost().port} answered HTTP 500")
        second = self.delivered(n)
        await deferLater(reactor, 0, lambda: None)  # the observer ran inside the attempt: let it end
        self.clock.advance(RETRY_DELAYS[0])
        [(_, delivery)] = await second
        self.assertEqual((delivery["state"], delivery["attempts"]), ("sent", 2))
        self.assertEqual([r["status"] for r in receiver.received.items], [500, 200])
        self.assertNotIn("x-gridbackup-signature", receiver.received.items[0]["headers"])

    async def test_webhook_unreachable_says_the_host_only(self):
        receiver = HTTPReceiver(self)
        url = receiver.url(SECRET_PATH)
        await receiver.port.stopListening()
        n = self.notifier([WebhookTarget(reactor, url)])
        results = await n.test()
        self.assertFalse(results["webhook"]["ok"])
        self.assertIn("127.0.0.1", results["webhook"]["error"])
        self.assertNotIn("SECRET", results["webhook"]["error"])

    async def test_ping_after_complete_and_fail_after_failed(self):
        receiver = HTTPReceiver(self)
        n = self.notifier([PingTarget(reactor, receiver.url("/ping/UUID-SECRET"))])
        snapshots.create_queued(self.conn, "s1", "h1", ["/d"], [], 1.0)
        snapshots.mark_complete(self.conn, "s1", "URI:x", True)
        n.tick()
        got = await receiver.received.count(1)
        snapshots.create_queued(self.conn, "s2", "h1", ["/d"], [], 2.0)
        snapshots.mark_failed(self.conn, "s2", 2.0, [{"path": None, "reason": "pre_command failed"}])
        n.tick()
        got = await receiver.received.count(2)
        self.assertEqual([(r["method"], r["path"]) for r in got],
                         [("GET", "/ping/UUID-SECRET"), ("GET", "/ping/UUID-SECRET/fail")])
        n.tick()  # nothing new: no ping
        self.assertEqual(n.recent(5)["targets"][0]["where"], f"127.0.0.1:{receiver.port.getHost().port}")
        self.assertEqual(len(receiver.received.items), 2)

    async def test_mail_arrives(self):
        server = SMTPReceiver(self)
        n = self.notifier([MailTarget(reactor, "127.0.0.1", server.port_number, False, None, None,
                                      "gridbackup@example.org", ["ops@example.org", "me@example.org"])])
        done = self.delivered(n)
        n.notify("uploads_stalled", "uploads are stalled", condition="uploads_stalled")
        [(_, delivery)] = await done
        self.assertEqual(delivery["state"], "sent", delivery)
        mails = await server.received.count(2)
        self.assertEqual(sorted(m["to"] for m in mails), ["me@example.org", "ops@example.org"])
        text = mails[0]["data"].decode()
        self.assertIn("Subject: gridbackup on h1: uploads are stalled", text)
        self.assertIn("X-Gridbackup-Event: uploads_stalled", text)
        doc = json.loads(text[text.index("{"):text.rindex("}") + 1])
        check_schema(self, doc)

    async def test_mail_with_a_login_and_a_wrong_password(self):
        server = SMTPReceiver(self, user="backup", password="pa55-SECRET")
        good = MailTarget(reactor, "127.0.0.1", server.port_number, False, "backup", "pa55-SECRET",
                          "gridbackup@example.org", ["ops@example.org"])
        results = await self.notifier([good]).test()
        self.assertEqual(results["mail"], {"ok": True, "error": None, "where": f"127.0.0.1:{server.port_number}"})
        [mail] = await server.received.count(1)
        self.assertNotIn(b"pa55-SECRET", mail["data"])
        bad = MailTarget(reactor, "127.0.0.1", server.port_number, False, "backup", "wrong-SECRET",
                         "gridbackup@example.org", ["ops@example.org"])
        results = await self.notifier([bad]).test()
        self.assertFalse(results["mail"]["ok"])
        self.assertNotIn("SECRET", results["mail"]["error"])
        self.assertEqual(len(server.received.items), 1)

    async def test_command_reads_the_event_on_stdin(self):
        pool = ThreadPool(0, 2)
        pool.start()
        self.addCleanup(pool.stop)
        out = os.path.abspath(self.mktemp())
        n = self.notifier([CommandTarget(reactor, pool, f'cat > {out}; echo "$GRIDBACKUP_EVENT" >> {out}', 10)])
        done = self.delivered(n)
        n.notify("drill_failed", "drill d1 failed", condition="drill_failed")
        [(_, delivery)] = await done
        self.assertEqual(delivery["state"], "sent", delivery)
        with open(out) as f:
            body, event = f.read().splitlines()
        check_schema(self, json.loads(body))
        self.assertEqual((json.loads(body)["event"], event), ("drill_failed", "drill_failed"))
        failing = self.notifier([CommandTarget(reactor, pool, "echo no route >&2; exit 2", 10)])
        results = await failing.test()
        self.assertEqual(results["command"]["error"], "command failed (exit status 2): no route")


class DaemonNotifyTests(TestCase):
    """A real daemon on the shared grid whose backup fails; its webhook hears of it."""

    timeout = 240

    async def test_failed_backup_reaches_the_webhook_within_10_seconds(self):
        receiver = HTTPReceiver(self)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        tree = os.path.join(base, "data")
        make_tree(tree, files=5)
        url_file = os.path.join(base, "webhook-url")
        with open(url_file, "w") as f:
            f.write(receiver.url(SECRET_PATH) + "\n")
        os.chmod(url_file, 0o600)
        key_file = os.path.join(base, "webhook-key")
        with open(key_file, "wb") as f:
            f.write(KEY + b"\n")
        os.chmod(key_file, 0o600)
        config_path = write_config(
            base, await shared_node_url(), [tree],
            extra=f"[notify]\nwebhook_file = {url_file}\nwebhook_secret_file = {key_file}\n")
        with open(config_path) as f:
            text = f.read()
        with open(config_path, "w") as f:
            f.write(text.replace("scan_interval = 0\n",
                                 "scan_interval = 0\npre_command = echo disk not mounted >&2; exit 1\n"))
        daemon = from_config(reactor, parse_config(config_path))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        api = api_client(self, daemon)

        code, body = await api.call("POST", "/v1/backups")
        self.assertEqual(code, 202, body)
        self.assertEqual(await daemon.wait_for_snapshot(body["id"]), "failed")
        got = await receiver.received.next(timeout=10)
        doc = json.loads(got["body"])
        self.assertEqual((doc["event"], doc["details"]), ("backup_failed", {"snapshot": body["id"]}))
        self.assertIn("pre_command failed (exit status 1): disk not mounted", doc["message"])
        self.assertEqual(got["headers"]["x-gridbackup-signature"],
                         "sha256=" + hmac.new(KEY, got["body"], hashlib.sha256).hexdigest())

        async def sent():
            code, listed = await api.call("GET", "/v1/notifications")
            self.assertEqual(code, 200)
            return listed
        listed = await sent()
        self.assertEqual(listed["targets"], [{"name": "webhook", "where": receiver.url("")[7:]}])
        self.assertEqual([a["condition"] for a in listed["active"]], ["backup_failed"])
        self.assertEqual(listed["notifications"][0]["event"], "backup_failed")
        self.assertNotIn("SECRET", json.dumps(listed))
        self.assertEqual(stored.recent(daemon.conn, 1)[0][5]["webhook"]["state"], "sent")

        # gridbackup notify test: through the API, each target's result printed.
        out, err = _Out(), _Out()
        code = await deferToThread(cli_main, ["--config", config_path, "notify", "test"], out, err)
        self.assertEqual((code, err.text), (0, ""))
        self.assertEqual(out.text, f"webhook ({receiver.url('')[7:]}): sent\n")
        test_doc = json.loads(receiver.received.items[-1]["body"])
        self.assertEqual((test_doc["event"], test_doc["active"]), ("test", ["backup_failed"]))
        out = _Out()
        self.assertEqual(await deferToThread(cli_main, ["--config", config_path, "notify", "list"], out, err), 0)
        lines = out.text.splitlines()
        self.assertEqual(len(lines), 2, out.text)
        self.assertIn("test              a test notification (gridbackup notify test)  [webhook sent]", lines[0])
        self.assertIn("backup_failed     snapshot ", lines[1])

        # Killed with a scan half-done (its API endpoint file left behind): the
        # restart says so once, and does not repeat backup_failed.
        await daemon.stopService()
        conn = dbmod.open_database(daemon.statedir.database)
        snapshots.create_queued(conn, "20300101T000000.000000Z-00000000", "testhost", [tree], [], time.time())
        snapshots.mark_scanning(conn, "20300101T000000.000000Z-00000000", time.time())
        conn.close()
        with open(daemon.statedir.api_endpoint, "w") as f:
            f.write("tcp:127.0.0.1:1\n")
        heard = len(receiver.received.items)
        daemon = from_config(reactor, parse_config(config_path))
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        got = await receiver.received.next(timeout=10)
        doc = json.loads(got["body"])
        self.assertEqual((doc["event"], doc["details"]), ("crash_recovered", {"redone": ["1 interrupted scan(s) resumed"]}))
        self.assertEqual(await daemon.when_ready(), "ready", daemon.error)
        self.assertEqual(await daemon.wait_for_snapshot("20300101T000000.000000Z-00000000"), "failed")
        daemon.notifier.tick()
        await daemon.stopService()
        self.assertEqual([json.loads(r["body"])["event"] for r in receiver.received.items[heard:]],
                         ["crash_recovered"])


class _Out:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass
