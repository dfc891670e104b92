"""
The notifier's logic on a Clock: which conditions it sees, that a lasting
one is repeated at most every ``repeat_every`` (also across a restart) and
its end announced once, retries with backoff, the stale-snapshot
condition as time passes, and the [notify] configuration's checks.  The
transports against real receivers are in tests/integration/test_notify.py.
"""

import json
import os
import sqlite3

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.config import parse_config
from gridbackupd.errors import ConfigError
from gridbackupd.notify import notifier as notifiermod
from gridbackupd.notify.conditions import Sources
from gridbackupd.notify.events import EVENTS
from gridbackupd.notify.notifier import RETRY_DELAYS, Notifier
from gridbackupd.notify.wiring import notifier as wired_notifier
from gridbackupd.state import db as dbmod
from gridbackupd.state import jobs as jobstate
from gridbackupd.state import notifications as stored
from gridbackupd.state import snapshots

DAY = 86400.0
T0 = 1_800_000_000.0


class Target:
    """A target under the test's control: each send waits for the test's answer."""

    name = "webhook"
    where = "example.org"

    def __init__(self):
        self.sent = []
        self.pending = []

    def wants(self, event):
        return True

    def send(self, doc):
        self.sent.append(doc)
        d = Deferred()
        self.pending.append(d)
        return d

    def answer(self, ok=True):
        d = self.pending.pop(0)
        if ok:
            d.callback(None)
        else:
            d.errback(RuntimeError("HTTP 500 from example.org"))


class Flags:
    def __init__(self):
        self.stalled = None
        self.lock = None
        self.protected = None

    def sources(self):
        return Sources(stalled=lambda: self.stalled, lock_error=lambda: self.lock,
                       protected_as_of=lambda: self.protected)


class NotifierTests(SynchronousTestCase):
    def setUp(self):
        self.conn = dbmod.open_database(os.path.join(self.mktemp(), "state.db"))
        self.addCleanup(self.conn.close)
        self.clock = Clock()
        self.clock.advance(T0)
        self.flags = Flags()
        self.target = Target()

    def make(self, target=None, **kw):
        n = Notifier(self.clock, self.conn, "h1", [target or self.target], repeat_every=kw.pop("repeat_every", DAY),
                     stale_after=kw.pop("stale_after", 0), sources=self.flags.sources(), **kw)
        n.startService()
        self.addCleanup(lambda: n.running and n.stopService())
        return n

    def events(self):
        return [(d["event"], d["condition"], d["repeat"]) for d in self.target.sent]

    def answer_all(self):
        while self.target.pending:
            self.target.answer()

    def test_repeat_at_most_every_repeat_every_and_one_end(self):
        self.make()
        self.flags.stalled = {"since": T0, "reason": "snapshot s is uploading while nothing is in flight"}
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(self.events(), [("uploads_stalled", "uploads_stalled", False)])
        self.answer_all()
        for _ in range(20):  # an hour and more of looks: no repeat yet
            self.clock.advance(300)
        self.assertEqual(len(self.target.sent), 1)
        self.clock.advance(DAY)
        self.assertEqual(self.events()[1:], [("uploads_stalled", "uploads_stalled", True)])
        self.answer_all()
        self.flags.stalled = None
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(self.events()[2:], [("healthy", "uploads_stalled", False)])
        self.answer_all()
        for _ in range(10):
            self.clock.advance(DAY / 4)
        self.assertEqual(len(self.target.sent), 3)
        first = self.target.sent[0]
        self.assertEqual(first["message"], "snapshot s is uploading while nothing is in flight")
        self.assertEqual(first["active"], ["uploads_stalled"])
        self.assertEqual(self.target.sent[2]["active"], [])
        states = [d["webhook"]["state"] for _, _, _, _, _, d in stored.recent(self.conn, 10)]
        self.assertEqual(states, ["sent"] * 3)

    def test_repeats_survive_a_restart(self):
        n = self.make()
        self.flags.lock = "the backup set's writer lock is held by laptop"
        self.clock.advance(notifiermod.POLL)
        self.answer_all()
        n.stopService()
        self.clock.advance(DAY / 2)
        self.make()
        self.clock.advance(notifiermod.POLL * 3)
        self.assertEqual(self.events(), [("writer_lock_held", "writer_lock_held", False)])
        self.clock.advance(DAY / 2)
        self.assertEqual(self.events()[1:], [("writer_lock_held", "writer_lock_held", True)])

    def test_a_condition_is_announced_with_its_notification_or_not_at_all(self):
        """The condition's row and its notification's are one transaction: a failed write leaves neither."""
        n = self.make()
        self.flags.lock = "the backup set's writer lock is held by laptop"
        real_add = stored.add

        def failing_add(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")

        stored.add = failing_add
        try:
            self.assertRaises(sqlite3.OperationalError, n.check)
        finally:
            stored.add = real_add
        self.assertEqual(stored.conditions(self.conn), {})
        self.assertEqual(stored.recent(self.conn, 10), [])
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(self.events(), [("writer_lock_held", "writer_lock_held", False)])
        self.assertEqual(set(stored.conditions(self.conn)), {"writer_lock_held"})

    def test_retries_with_backoff_on_the_clock(self):
        n = self.make()
        seen = []
        n.observers.append(lambda i, name, d: seen.append(dict(d)))
        notification_id = n.notify("test", "hello")
        self.target.answer(ok=False)
        self.assertEqual(seen[-1]["state"], "pending")
        self.assertEqual(seen[-1]["error"], "HTTP 500 from example.org")
        self.clock.advance(RETRY_DELAYS[0] - 0.5)
        self.assertEqual(len(self.target.sent), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.target.sent), 2)
        self.target.answer(ok=False)
        self.clock.advance(RETRY_DELAYS[1] - 0.5)
        self.assertEqual(len(self.target.sent), 2)
        self.clock.advance(0.5)
        self.target.answer(ok=True)
        self.assertEqual(seen[-1]["state"], "sent")
        self.assertEqual(seen[-1]["attempts"], 3)
        row = stored.recent(self.conn, 1)[0]
        self.assertEqual((row[0], row[5]["webhook"]["state"]), (notification_id, "sent"))
        self.clock.advance(DAY)
        self.assertEqual(len(self.target.sent), 3)

    def test_gives_up_after_the_last_retry(self):
        n = self.make()
        n.notify("test", "hello")
        for delay in RETRY_DELAYS:
            self.target.answer(ok=False)
            self.clock.advance(delay)
        self.target.answer(ok=False)
        self.clock.advance(DAY)
        self.assertEqual(len(self.target.sent), len(RETRY_DELAYS) + 1)
        delivery = stored.recent(self.conn, 1)[0][5]["webhook"]
        self.assertEqual((delivery["state"], delivery["attempts"]), ("failed", len(RETRY_DELAYS) + 1))

    def test_pending_deliveries_are_sent_after_a_restart(self):
        n = self.make()
        n.notify("test", "hello")
        self.target.answer(ok=False)
        n.stopService()  # its retry is cancelled; the row stays pending
        target = Target()
        self.make(target=target)
        self.assertEqual([d["message"] for d in target.sent], ["hello"])
        target.answer()
        self.assertEqual(stored.recent(self.conn, 1)[0][5]["webhook"]["attempts"], 2)

    def test_stale_snapshot_as_the_clock_advances(self):
        snapshots.create_queued(self.conn, "s1", "h1", ["/d"], [], T0)
        snapshots.mark_complete(self.conn, "s1", "URI:DIR2-CHK:x", True)
        self.make(stale_after=2 * DAY)
        self.clock.advance(DAY)
        self.clock.advance(DAY - 60)
        self.assertEqual(self.events(), [])
        self.clock.advance(120)
        self.assertEqual(self.events(), [("snapshot_stale", "snapshot_stale", False)])
        self.assertIn("2.0 days old", self.target.sent[0]["message"])
        self.answer_all()
        # A newer complete snapshot ends it.
        snapshots.create_queued(self.conn, "s2", "h1", ["/d"], [], self.clock.seconds())
        snapshots.mark_complete(self.conn, "s2", "URI:DIR2-CHK:y", True)
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(self.events()[1:], [("healthy", "snapshot_stale", False)])

    def test_protected_as_of_counts_over_the_newest_snapshot(self):
        snapshots.create_queued(self.conn, "s1", "h1", ["/d"], [], T0)
        snapshots.mark_complete(self.conn, "s1", "URI:DIR2-CHK:x", True)
        # A watched machine, quiet but safe: nothing changed since 2.5 days after s1.
        self.flags.protected = T0 + 2.5 * DAY
        self.make(stale_after=2 * DAY)
        self.clock.advance(3 * DAY)
        self.assertEqual(self.events(), [])
        self.clock.advance(2 * DAY)
        self.assertEqual(self.events(), [("snapshot_stale", "snapshot_stale", False)])

    def test_never_complete_is_stale_from_the_first_request(self):
        snapshots.create_queued(self.conn, "s1", "h1", ["/d"], [], T0)
        self.make(stale_after=DAY)
        self.clock.advance(DAY + notifiermod.POLL)
        self.assertEqual(self.events(), [("snapshot_stale", "snapshot_stale", False)])
        self.assertIn("no snapshot has completed", self.target.sent[0]["message"])

    def test_backup_failed_until_one_completes(self):
        self.make()
        snapshots.create_queued(self.conn, "s1", "h1", ["/d"], [], T0)
        snapshots.mark_failed(self.conn, "s1", T0, [{"path": None, "reason": "pre_command failed (exit status 1)"}])
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(self.events(), [("backup_failed", "backup_failed", False)])
        self.assertEqual(self.target.sent[0]["message"],
                         "snapshot s1 failed: pre_command failed (exit status 1)")
        self.assertEqual(self.target.sent[0]["details"], {"snapshot": "s1"})
        # Another host's snapshot says nothing of ours.
        snapshots.create_queued(self.conn, "s2", "other", ["/d"], [], T0)
        snapshots.mark_complete(self.conn, "s2", "URI:x", True)
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(len(self.target.sent), 1)
        snapshots.create_queued(self.conn, "s3", "h1", ["/d"], [], T0)
        snapshots.mark_complete(self.conn, "s3", "URI:y", True)
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(self.events()[1:], [("healthy", "backup_failed", False)])

    def test_maintenance_results(self):
        self.make()

        def job(job_id, kind, state, result, error=None):
            jobstate.add(self.conn, job_id, kind, self.clock.seconds(), "{}")
            jobstate.mark_running(self.conn, job_id, self.clock.seconds())
            jobstate.finish(self.conn, job_id, kind, state, self.clock.seconds(), error, "{}",
                            json.dumps(result), keep=50)

        job("c1", "check", "done", {"unhealthy": 2, "repaired": 1, "still_unhealthy": 1, "unrecoverable": 0})
        job("d1", "drill", "done", {"files": 20, "ok": 19, "failed": [{"path": "/d/x", "reason": "bad"}]})
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(sorted(e for e, _, _ in self.events()), ["check_damage", "drill_failed", "repair_failed"])
        messages = {d["event"]: d["message"] for d in self.target.sent}
        self.assertEqual(messages["check_damage"], "check c1 found 2 unhealthy objects (1 repaired)")
        self.assertEqual(messages["drill_failed"], "drill d1: 1 of 20 files did not restore correctly")
        self.answer_all()
        self.clock.advance(1)
        job("c2", "check", "done", {"unhealthy": 0})
        job("d2", "drill", "failed", {}, error="the grid is not connected")
        self.clock.advance(notifiermod.POLL)
        self.assertEqual(sorted((e, c) for e, c, _ in self.events()[3:]),
                         [("healthy", "check_damage"), ("healthy", "repair_failed")])

    def test_crash_recovered_names_the_work_redone(self):
        snapshots.create_queued(self.conn, "s1", "h1", ["/d"], [], T0)
        snapshots.mark_scanning(self.conn, "s1", T0)
        config = parse_config(write_ini(self, ""))
        n = wired_notifier(self.clock, self.conn, None, config, lambda: (None, None), crashed=True)
        rows = stored.recent(self.conn, 5)
        self.assertEqual([(r[2], r[4]["message"]) for r in rows], [
            ("crash_recovered", "the daemon was not stopped cleanly; on restart: 1 interrupted scan(s) resumed")])
        self.assertEqual(n.targets, [])
        wired_notifier(self.clock, self.conn, None, config, lambda: (None, None), crashed=False)
        self.assertEqual(len(stored.recent(self.conn, 5)), 1)

    def test_every_event_has_a_title(self):
        from gridbackupd.notify.events import TITLES

        self.assertEqual(set(TITLES), set(EVENTS))


def write_ini(testcase, notify, secrets=None):
    base = os.path.abspath(testcase.mktemp())
    os.makedirs(base)
    for name, (content, mode) in (secrets or {}).items():
        path = os.path.join(base, name)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)
    path = os.path.join(base, "gridbackup.ini")
    with open(path, "w") as f:
        f.write("[gridbackup]\nstate_dir = %(here)s/state\n[tahoe]\nnode_url = http://127.0.0.1:3456/\n"
                + ("[notify]\n" + notify if notify else ""))
    return path


class NotifyConfigTests(SynchronousTestCase):
    def refused(self, notify, secrets=None):
        with self.assertRaises(ConfigError) as e:
            parse_config(write_ini(self, notify, secrets))
        message = str(e.exception)
        self.assertEqual(len(message.splitlines()), 1, message)
        return message

    def test_defaults(self):
        n = parse_config(write_ini(self, "")).notify
        self.assertEqual((n.stale_after, n.repeat_every, n.smtp_starttls, n.webhook), (2 * DAY, DAY, True, None))

    def test_a_secret_file_readable_by_others_is_refused(self):
        message = self.refused("webhook = https://hooks.example.org/x\n"
                               "webhook_secret_file = %(here)s/key\n", {"key": ("k3y-s3cret\n", 0o644)})
        self.assertIn("[notify] webhook_secret_file", message)
        self.assertIn("mode 644", message)
        self.assertIn("chmod 600", message)
        self.assertNotIn("k3y-s3cret", message)

    def test_a_0600_secret_file_is_taken(self):
        config = parse_config(write_ini(self, "webhook_file = %(here)s/url\nwebhook_secret_file = %(here)s/key\n",
                                        {"key": ("k\n", 0o600), "url": ("https://chat.example/T0/secret\n", 0o600)}))
        self.assertTrue(config.notify.webhook_file.endswith("/url"))
        self.assertNotIn("chat.example", repr(config))

    def test_a_url_file_readable_by_group_is_refused(self):
        self.refused("ping_url_file = %(here)s/url\n", {"url": ("https://hc-ping.com/uuid\n", 0o640)})

    def test_a_bad_url_shows_its_host_only(self):
        message = self.refused("webhook = ftp://chat.example/T0/s3cret\n")
        self.assertNotIn("s3cret", message)
        message = self.refused("ping_url_file = %(here)s/url\n", {"url": ("not a url s3cret\n", 0o600)})
        self.assertNotIn("s3cret", message)

    def test_mail_needs_its_addresses(self):
        self.assertIn("mail_to is missing", self.refused("smtp_host = mail.example.org\nmail_from = a@example.org\n"))
        self.assertIn("smtp_password_file", self.refused(
            "smtp_host = m.example.org\nmail_from = a@example.org\nmail_to = b@example.org\nsmtp_user = a\n"))
        self.assertIn("expected only with smtp_host", self.refused("mail_to = b@example.org\n"))
        self.assertIn("[notify] mail_to = 'nobody'", self.refused(
            "smtp_host = m.example.org\nmail_from = a@example.org\nmail_to = nobody\n"))

    def test_one_of_url_and_file(self):
        self.assertIn("not both", self.refused(
            "webhook = https://a.example/\nwebhook_file = %(here)s/u\n", {"u": ("https://b.example/\n", 0o600)}))
