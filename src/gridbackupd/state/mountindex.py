"""
The per-directory index of snapshots that ``gridbackup mount`` lists from.

A file of its own (``StateDir.mount_index``), not a table of
``state.sqlite``: building the index of a million-file snapshot is one
long transaction, which must not hold the daemon's database, and the mount
process reads it while the daemon writes.  It is a cache made from the
snapshot logs: losing it loses nothing (the daemon builds it again).

Tables: ``snaps`` (an indexed snapshot; its row is written in the same
transaction as its directories, so a snapshot is listed only once it is
whole), ``dirs`` (snapshot, directory path) -> listing hash, ``listings``
(hash -> a directory's listing, ``mount.listing``'s bytes: content
addressed, so a directory unchanged between snapshots is stored once), and
``links`` (the hard-link count of each hard-linked entry).
"""

import contextlib
import os
import sqlite3

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snaps (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    time REAL NOT NULL,
    complete INTEGER NOT NULL,
    entries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dirs (
    snapshot TEXT NOT NULL,
    path BLOB NOT NULL,
    listing BLOB NOT NULL,
    PRIMARY KEY (snapshot, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listings (
    hash BLOB PRIMARY KEY,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    snapshot TEXT NOT NULL,
    dir BLOB NOT NULL,
    name BLOB NOT NULL,
    nlink INTEGER NOT NULL,
    PRIMARY KEY (snapshot, dir, name)
) WITHOUT ROWID;
"""


class IndexMissing(Exception):
    """There is no mount index (the daemon has not built one yet)."""


def open_index(path, readonly=False):
    """
    The index database at ``path``: created (WAL, this schema) by the
    daemon; opened read-only by the mount (IndexMissing if absent).  A
    file of another schema version is emptied: it is only a cache.
    """
    if readonly:
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("SELECT 1 FROM snaps LIMIT 1").fetchall()
        except sqlite3.OperationalError as e:
            raise IndexMissing(f"{path}: {e}") from None
        return conn
    # Paths and metadata of every backed-up file: owner only, as state.sqlite.
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        for table in ("snaps", "dirs", "listings", "links"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.executescript(_SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn


# -- the daemon's side: writing ------------------------------------------------


def indexed_ids(conn):
    """The ids of the snapshots indexed."""
    return {row[0] for row in conn.execute("SELECT id FROM snaps")}


@contextlib.contextmanager
def writing_snapshot(conn, snapshot_id):
    """
    ``with writing_snapshot(conn, id) as w:`` one transaction that writes a
    snapshot's directories (``w.directory``, ``w.link``) and, last, its row
    (``w.finish``); an error rolls it all back.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        # A half-written earlier attempt cannot exist (one transaction), but
        # an index of the same id written before a forget and a recovery may.
        _drop_rows(conn, snapshot_id)
        yield _SnapshotWriter(conn, snapshot_id)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class _SnapshotWriter:
    def __init__(self, conn, snapshot_id):
        self.conn = conn
        self.snapshot_id = snapshot_id

    def directory(self, path, digest, data):
        """A directory of the snapshot and its listing (stored once per digest)."""
        self.conn.execute("INSERT OR IGNORE INTO listings (hash, data) VALUES (?, ?)", (digest, data))
        self.conn.execute("INSERT INTO dirs (snapshot, path, listing) VALUES (?, ?, ?)",
                          (self.snapshot_id, path, digest))

    def link(self, directory, name, nlink):
        self.conn.execute("INSERT OR REPLACE INTO links (snapshot, dir, name, nlink) VALUES (?, ?, ?, ?)",
                          (self.snapshot_id, directory, name, nlink))

    def finish(self, host, time, complete, entries):
        self.conn.execute("INSERT INTO snaps (id, host, time, complete, entries) VALUES (?, ?, ?, ?, ?)",
                          (self.snapshot_id, host, time, int(complete), entries))


def indexed(conn, snapshot_id):
    """``(time, complete, entries)`` of an indexed snapshot, or None."""
    return conn.execute("SELECT time, complete, entries FROM snaps WHERE id = ?", (snapshot_id,)).fetchone()


def copy_rows(conn, source, target):
    """The directories and hard-link counts of ``source`` become ``target``'s too (in ``writing_snapshot``)."""
    conn.execute("INSERT INTO dirs (snapshot, path, listing) SELECT ?, path, listing FROM dirs "
                 "WHERE snapshot = ?", (target, source))
    conn.execute("INSERT INTO links (snapshot, dir, name, nlink) SELECT ?, dir, name, nlink FROM links "
                 "WHERE snapshot = ?", (target, source))


def put_directory(conn, snapshot_id, path, digest, data):
    """A directory of a copied snapshot gets this listing, or is added with it (in ``writing_snapshot``)."""
    conn.execute("INSERT OR IGNORE INTO listings (hash, data) VALUES (?, ?)", (digest, data))
    conn.execute("INSERT OR REPLACE INTO dirs (snapshot, path, listing) VALUES (?, ?, ?)",
                 (snapshot_id, path, digest))


def is_directory(conn, snapshot_id, path):
    """Whether the snapshot's index has a listing for ``path``."""
    row = conn.execute("SELECT 1 FROM dirs WHERE snapshot = ? AND path = ?", (snapshot_id, path)).fetchone()
    return row is not None


def drop_directory(conn, snapshot_id, path):
    """A directory of a copied snapshot is no more (in ``writing_snapshot``; a no-op if it was not one)."""
    conn.execute("DELETE FROM dirs WHERE snapshot = ? AND path = ?", (snapshot_id, path))


def _drop_rows(conn, snapshot_id):
    for table, column in (("snaps", "id"), ("dirs", "snapshot"), ("links", "snapshot")):
        conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (snapshot_id,))


def drop_snapshots(conn, snapshot_ids):
    """Forget the index of these snapshots, and the listings no snapshot uses any more."""
    if not snapshot_ids:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for snapshot_id in snapshot_ids:
            _drop_rows(conn, snapshot_id)
        conn.execute("DELETE FROM listings WHERE hash NOT IN (SELECT listing FROM dirs)")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# -- the mount's side: reading ----------------------------------------------------


def snapshots(conn):
    """``(id, host, time, complete)`` of every indexed snapshot, oldest first."""
    return conn.execute("SELECT id, host, time, complete FROM snaps ORDER BY id").fetchall()


def listing(conn, snapshot_id, path):
    """The stored listing of a directory of a snapshot (bytes), or None if it is not one."""
    row = conn.execute(
        "SELECT l.data FROM dirs d JOIN listings l ON l.hash = d.listing "
        "WHERE d.snapshot = ? AND d.path = ?", (snapshot_id, path)).fetchone()
    return None if row is None else bytes(row[0])


def links(conn, snapshot_id, path):
    """{name: hard-link count} of the hard-linked entries of a directory."""
    return {bytes(name): nlink for name, nlink in conn.execute(
        "SELECT name, nlink FROM links WHERE snapshot = ? AND dir = ?", (snapshot_id, path))}
