"""``snapshots.reroot_logs``: the logs of a moved state_dir are found again, and only those."""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots


class RerootTests(SynchronousTestCase):
    def test_reroot(self):
        base = os.path.abspath(self.mktemp())
        logs = os.path.join(base, "logs")
        os.makedirs(logs)
        conn = dbmod.open_database(os.path.join(base, "state.sqlite"))
        self.addCleanup(conn.close)
        for sid, path in [("a", "/gone/state/logs/a.log"), ("b", "/gone/state/logs/b.log"),
                          ("c", os.path.join(logs, "c.log")), ("d", None)]:
            conn.execute("INSERT INTO snapshots (id, host, state, requested, errors, log_path) "
                         "VALUES (?, 'h', 'complete', 0, '[]', ?)", (sid, path))
        for name in ("a.log", "c.log"):
            open(os.path.join(logs, name), "wb").close()
        self.assertEqual(snapshots.reroot_logs(conn, logs), 1)
        paths = dict(conn.execute("SELECT id, log_path FROM snapshots"))
        # b's log is nowhere: its row is left as it was (a missing log is reported where it is read).
        self.assertEqual(paths, {"a": os.path.join(logs, "a.log"), "b": "/gone/state/logs/b.log",
                                 "c": os.path.join(logs, "c.log"), "d": None})
        self.assertEqual(snapshots.reroot_logs(conn, logs), 0)
