"""The state database: created at the current schema, upgraded in place, newer refused."""

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.state import db


class DatabaseTests(SynchronousTestCase):
    def path(self):
        d = self.mktemp()
        os.makedirs(d)
        return os.path.join(d, "state.sqlite")

    def test_new_database_is_current(self):
        conn = db.open_database(self.path())
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], len(db.MIGRATIONS))
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertTrue({"snapshots", "blobs", "packs", "commits", "restores"} <= tables)

    def test_reopen_keeps_data(self):
        path = self.path()
        conn = db.open_database(path)
        with db.transaction(conn):
            db.set_meta(conn, "k", "v")
        conn.close()
        conn = db.open_database(path)
        self.assertEqual(db.get_meta(conn, "k"), "v")

    def test_newer_database_refused(self):
        path = self.path()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {len(db.MIGRATIONS) + 1}")
        conn.close()
        with self.assertRaises(db.DatabaseError) as ctx:
            db.open_database(path)
        self.assertIn("newer", str(ctx.exception))

    def test_blob_identity_migration_upgrades_an_existing_database(self):
        """
        Migration 6 on a database of schema 5 (as made before it): a pending
        blob keeps its row, with no identity (the packer then only checks
        that it reads a regular file), and a new scan's queueing sets it.
        """
        from gridbackupd.scan.values import NewBlob
        from gridbackupd.state import queue

        path = self.path()
        old = sqlite3.connect(path, isolation_level=None)
        for script in db.MIGRATIONS[:5]:
            for statement in script.split(";"):
                if statement.strip():
                    old.execute(statement)
        old.execute("PRAGMA user_version = 5")
        old.execute("INSERT INTO blobs (hash, size, state, source_path, source_offset, queued, rank) "
                    "VALUES (?, 10, 'pending', ?, 0, 1, 5)", ("a" * 64, b"/home/x"))
        old.close()
        conn = db.open_database(path)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], len(db.MIGRATIONS))
        self.assertEqual(queue.next_batch(conn, 100, set()),
                         [queue.QueuedBlob("a" * 64, 10, b"/home/x", 0, None, None, None)])
        with db.transaction(conn):
            queue.add_blobs(conn, "s1", [NewBlob("a" * 64, 10, b"/home/y", 0, 0, 7, 8, 5)])
        self.assertEqual(queue.next_batch(conn, 100, set()),
                         [queue.QueuedBlob("a" * 64, 10, b"/home/y", 0, 7, 8, 5)])

    def test_failed_transaction_rolls_back(self):
        conn = db.open_database(self.path())
        with self.assertRaises(ZeroDivisionError):
            with db.transaction(conn):
                db.set_meta(conn, "k", "v")
                1 / 0
        self.assertIsNone(db.get_meta(conn, "k"))

    def test_nested_transaction_is_a_savepoint(self):
        """A transition inside a larger step: its failure undoes only its own writes."""
        conn = db.open_database(self.path())
        with db.transaction(conn):
            db.set_meta(conn, "outer", "1")
            with self.assertRaises(ZeroDivisionError):
                with db.transaction(conn):
                    db.set_meta(conn, "inner", "1")
                    1 / 0
            with db.transaction(conn):
                db.set_meta(conn, "kept", "1")
        self.assertFalse(conn.in_transaction)
        self.assertEqual(db.get_meta(conn, "outer"), "1")
        self.assertIsNone(db.get_meta(conn, "inner"))
        self.assertEqual(db.get_meta(conn, "kept"), "1")

    def test_outer_rollback_undoes_nested(self):
        conn = db.open_database(self.path())
        with self.assertRaises(ZeroDivisionError):
            with db.transaction(conn):
                with db.transaction(conn):
                    db.set_meta(conn, "inner", "1")
                1 / 0
        self.assertIsNone(db.get_meta(conn, "inner"))


class PreflightTests(SynchronousTestCase):
    """The start-up check must not create the database: its absence means recovery."""

    def test_preflight_leaves_a_missing_database_missing(self):
        from gridbackupd.config import parse_config
        from gridbackupd.service import preflight

        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        path = os.path.join(d, "gridbackup.ini")
        with open(path, "w") as f:
            f.write("[gridbackup]\nstate_dir = %(here)s/state\n[tahoe]\nnode_url = http://127.0.0.1:9/\n")
        preflight(parse_config(path))
        self.assertTrue(os.path.isdir(os.path.join(d, "state")))
        self.assertFalse(os.path.exists(os.path.join(d, "state", "state.sqlite")))
