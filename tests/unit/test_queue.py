"""The blob queue: priorities, ageing, and what the API shows as next in line."""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.scan.values import NewBlob
from gridbackupd.state import db as dbmod
from gridbackupd.state import queue

NOW = 1_800_000_000.0
DAY = 86400


def blob(n, size, path, age_days=0.0):
    return NewBlob(f"{n:064x}", size, path, 0, int((NOW - age_days * DAY) * 1e9))


class PriorityTests(SynchronousTestCase):
    def test_each_term_counts(self):
        def p(**kw):
            return queue.priority(**{"mtime_ns": int(NOW * 1e9), "size": 4096,
                                                    "path": b"/home/a/x", "now": NOW, **kw})
        base = p()
        self.assertGreater(base, p(mtime_ns=int((NOW - 30 * DAY) * 1e9)))
        self.assertGreater(base, p(size=400_000_000))
        self.assertGreater(base, p(path=b"/usr/lib/x"))
        # A user root matches itself and below it, not a sibling with the same prefix.
        self.assertEqual(p(path=b"/root"), base)
        self.assertLess(p(path=b"/rootfs/x"), base)
        self.assertLess(p(path=b"/homeless/x"), base)

    def test_weights(self):
        w = queue.Weights(recency=0, small=0, user=7, age=0, user_roots=(b"/srv",))
        self.assertEqual(queue.priority(0, 1, b"/srv/a", NOW, w), 7)
        self.assertEqual(queue.priority(0, 1, b"/home/a", NOW, w), 0)
        self.assertEqual(queue.Weights.from_json(w.to_json()), w)


class QueueTests(SynchronousTestCase):
    def setUp(self):
        base = self.mktemp()
        self.conn = dbmod.open_database(os.path.join(base, "state.sqlite"))
        self.addCleanup(self.conn.close)
        self.conn.execute("INSERT INTO snapshots (id, state, host, requested) VALUES ('s1', 'uploading', 'h', 0)")

    def add(self, blobs, now=NOW, weights=queue.DEFAULT_WEIGHTS):
        with dbmod.transaction(self.conn):
            queue.add_blobs(self.conn, "s1", blobs, now=now, weights=weights)

    def order(self, now=NOW):
        return [h.path for h in queue.head(self.conn, 100, now=now)]

    def test_order_recent_small_user_first(self):
        self.add([
            blob(1, 4_000_000_000, b"/var/iso/old.iso", age_days=400),
            blob(2, 2000, b"/home/me/notes.txt", age_days=0.01),
            blob(3, 2000, b"/etc/fstab", age_days=0.01),
            blob(4, 50_000_000, b"/home/me/video.mp4", age_days=0.01),
        ])
        # With the default weights a user file (4 points) outranks a system
        # file a thousand times smaller (3 points per decade).
        self.assertEqual(self.order(), [b"/home/me/notes.txt", b"/home/me/video.mp4",
                                        b"/etc/fstab", b"/var/iso/old.iso"])
        batch = queue.next_batch(self.conn, 10_000, set())
        self.assertEqual([b.source_path for b in batch], [b"/home/me/notes.txt"])
        # A batch is filled up to the target size; blobs being packed are skipped.
        batch = queue.next_batch(self.conn, 100_000_000, {batch[0].hash})
        self.assertEqual([b.source_path for b in batch], [b"/home/me/video.mp4", b"/etc/fstab"])

    def test_ageing_prevents_starvation(self):
        self.add([blob(1, 4_000_000_000, b"/var/iso/old.iso", age_days=400)])
        # A day later fresh user files keep arriving; the old blob has waited a day.
        later = NOW + DAY
        self.add([NewBlob(f"{2:064x}", 100, b"/home/me/new.txt", 0, int(later * 1e9))], now=later)
        self.assertEqual(self.order(later)[0], b"/var/iso/old.iso")
        # Its effective priority grew by 24 points (1 per hour by default).
        [old] = [h for h in queue.head(self.conn, 10, now=later) if h.path == b"/var/iso/old.iso"]
        [then] = [h for h in queue.head(self.conn, 10, now=NOW) if h.path == b"/var/iso/old.iso"]
        self.assertAlmostEqual(old.priority - then.priority, 24.0)

    def test_order_uses_the_index(self):
        plan = self.conn.execute(
            "EXPLAIN QUERY PLAN SELECT hash FROM blobs WHERE state = 'pending' "
            "ORDER BY rank DESC, hash LIMIT 5"
        ).fetchall()
        text = " ".join(str(r[-1]) for r in plan)
        self.assertIn("blobs_by_rank", text)
        self.assertNotIn("TEMP B-TREE", text)

    def test_changed_weights_rerank_pending(self):
        self.add([blob(1, 100, b"/srv/a"), blob(2, 100, b"/home/b")])
        self.assertEqual(self.order()[0], b"/home/b")
        w = queue.Weights(user_roots=(b"/srv",))
        self.assertTrue(queue.set_weights(self.conn, w, now=NOW))
        self.assertFalse(queue.set_weights(self.conn, w, now=NOW))
        self.assertEqual(self.order()[0], b"/srv/a")
        # New blobs (queued from the scanner's thread) use the stored weights.
        with dbmod.transaction(self.conn):
            queue.add_blobs(self.conn, "s1", [blob(3, 100, b"/srv/c")], now=NOW)
        self.assertEqual(set(self.order()[:2]), {b"/srv/a", b"/srv/c"})

    def test_requeue_keeps_queued_time_and_revives_stale(self):
        self.add([blob(1, 100, b"/x/a", age_days=50)])
        self.conn.execute("UPDATE blobs SET state = 'stale'")
        self.add([blob(1, 100, b"/x/b", age_days=0)], now=NOW + 3600)
        [(state, path, queued)] = self.conn.execute(
            "SELECT state, source_path, queued FROM blobs").fetchall()
        self.assertEqual((state, bytes(path), queued), ("pending", b"/x/b", NOW))
        # An uploaded blob is not queued again.
        self.conn.execute("UPDATE blobs SET state = 'committed'")
        self.add([blob(1, 100, b"/x/c")])
        self.assertEqual(self.conn.execute("SELECT state FROM blobs").fetchone()[0], "committed")
        self.assertEqual(queue.pending_totals(self.conn), (0, 0))


class UploadConfigTests(SynchronousTestCase):
    def parse(self, upload):
        from gridbackupd.config import parse_config

        base = self.mktemp()
        os.makedirs(base)
        path = os.path.join(base, "g.ini")
        with open(path, "w") as f:
            f.write("[gridbackup]\nstate_dir = /tmp/x\n[tahoe]\nnode_url = embedded\n[upload]\n" + upload)
        return parse_config(path).upload

    def test_keys(self):
        up = self.parse("inline_max = 2KiB\nmax_rate = 2MiB\nuser_roots =\n  /srv/home\n  /u/\n"
                        "weight_recency = 2.5\nweight_small = 0\nweight_user = 7\nweight_age = 0.5\n")
        self.assertEqual((up.inline_max, up.max_rate, up.user_roots), (2048, 2 * 1024**2, (b"/srv/home", b"/u")))
        self.assertEqual((up.weight_recency, up.weight_small, up.weight_user, up.weight_age), (2.5, 0, 7, 0.5))
        self.assertEqual(self.parse("").user_roots, (b"/home", b"/root"))

    def test_bad_values(self):
        from gridbackupd.errors import ConfigError

        for text, needle in [("inline_max = 1MiB", "at most 64KiB"),
                             ("max_rate = fast", "a size"), ("user_roots = home", "absolute"),
                             ("weight_age = -1", "a number"), ("weight_user = 1e9", "a number")]:
            e = self.assertRaises(ConfigError, self.parse, text + "\n")
            self.assertIn(needle, str(e))
            self.assertIn("[upload]", str(e))
