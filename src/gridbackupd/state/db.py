"""
The local SQLite state: open, upgrade, and run short transactions.

The database is a cache of what is on the grid plus the queue of work not
yet done there; it is never the only copy of anything that was uploaded.
Migrations are data: an ordered list of scripts, the schema version in
``PRAGMA user_version``, upgraded on open inside ``BEGIN IMMEDIATE``; a
database newer than this code is refused rather than guessed at.
"""

import contextlib
import os
import sqlite3

from gridbackupd.errors import DiskFull, GridBackupError, disk_full, is_disk_full

MIGRATIONS = [
    # 1: the first schema.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        kind TEXT,
        parent TEXT,
        host TEXT NOT NULL,
        paths TEXT NOT NULL DEFAULT '[]',
        tags TEXT NOT NULL DEFAULT '[]',
        requested REAL NOT NULL,
        started REAL,
        finished REAL,
        files INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        errors TEXT NOT NULL DEFAULT '[]',
        log_path TEXT,
        log_cap TEXT,
        complete INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE packs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        cap TEXT,
        size INTEGER NOT NULL,
        commit_name TEXT
    );
    CREATE TABLE blobs (
        hash TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        state TEXT NOT NULL,
        priority REAL NOT NULL DEFAULT 0,
        source_path BLOB,
        source_offset INTEGER,
        pack_id INTEGER REFERENCES packs(id),
        offset INTEGER,
        length INTEGER,
        compression TEXT
    );
    CREATE INDEX blobs_by_state ON blobs(state, priority DESC);
    CREATE INDEX blobs_by_pack ON blobs(pack_id);
    CREATE TABLE snapshot_blobs (
        snapshot TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (snapshot, hash)
    ) WITHOUT ROWID;
    CREATE TABLE commits (
        name TEXT PRIMARY KEY,
        cap TEXT NOT NULL,
        linked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE restores (
        id TEXT PRIMARY KEY,
        snapshot TEXT NOT NULL,
        paths TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        finished REAL,
        files_done INTEGER NOT NULL DEFAULT 0,
        files_total INTEGER NOT NULL DEFAULT 0,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER NOT NULL DEFAULT 0,
        errors TEXT NOT NULL DEFAULT '[]'
    );
    """,
    # 2: the upload queue's ageing rank and inline blobs (queue.py, uploader.py).
    # rank = priority - age_weight * queued_hours, so "ORDER BY rank DESC" is
    # the order of priority + age_weight * hours waited, on an index.
    # inline_data holds a very small blob's bytes (it has no pack), and
    # commit_name the commit whose index segment carries them.
    """
    ALTER TABLE blobs ADD COLUMN queued REAL NOT NULL DEFAULT 0;
    ALTER TABLE blobs ADD COLUMN mtime_ns INTEGER;
    ALTER TABLE blobs ADD COLUMN rank REAL NOT NULL DEFAULT 0;
    ALTER TABLE blobs ADD COLUMN inline_data BLOB;
    ALTER TABLE blobs ADD COLUMN commit_name TEXT;
    UPDATE blobs SET rank = priority;
    DROP INDEX blobs_by_state;
    CREATE INDEX blobs_by_rank ON blobs(state, rank DESC, hash);
    """,
    # 3: a restore's result beyond its counters (restore.py): JSON with
    # "pending" (files whose content is not uploaded yet), "plan" (a dry
    # run's summary) and "files_verified".
    """
    ALTER TABLE restores ADD COLUMN result TEXT NOT NULL DEFAULT '{}';
    """,
    # 4: the queue's totals (count and bytes pending), which every status
    # and metrics request reads on the reactor thread, from an index alone:
    # 1.9 s without it for a million pending blobs, 57 ms with it.
    """
    CREATE INDEX blobs_by_state_size ON blobs(state, size);
    """,
    # 5: maintenance jobs (jobs.py, maintenance.py): one row per run, and the
    # items a run has finished, so that a run interrupted by a restart
    # resumes where it was.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        requested REAL NOT NULL,
        started REAL,
        finished REAL,
        options TEXT NOT NULL DEFAULT '{}',
        progress TEXT NOT NULL DEFAULT '{}',
        result TEXT NOT NULL DEFAULT '{}',
        error TEXT
    );
    CREATE INDEX jobs_by_kind ON jobs(kind, requested);
    CREATE TABLE job_items (
        job TEXT NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (job, item)
    ) WITHOUT ROWID;
    """,
    # 6: the identity of a pending blob's file as the scan saw it (queue.py,
    # upload/packer.py): the packer reads only that file, reached as the
    # scan reached it.  source_base is how many bytes of source_path are the
    # directory opened by its path (the root's parent); NULL in rows queued
    # before, which are checked for their type and walked from "/".
    """
    ALTER TABLE blobs ADD COLUMN source_dev INTEGER;
    ALTER TABLE blobs ADD COLUMN source_ino INTEGER;
    ALTER TABLE blobs ADD COLUMN source_base INTEGER;
    """,
    # upload_samples: what the uploader did, one row a minute, for the
    # console's plots (state/series.py); two days are kept.
    """
    CREATE TABLE upload_samples (
        time REAL PRIMARY KEY,
        uploaded_bytes INTEGER NOT NULL,
        backlog_bytes INTEGER NOT NULL,
        backlog_blobs INTEGER NOT NULL
    );
    """,
    # scan: how a snapshot's scan found its entries (scan/jobs.py): 'full', a
    # walk of every path, or 'watched', a walk of the directories a watcher
    # saw change, the rest taken from the parent.  Earlier ones were full.
    """
    ALTER TABLE snapshots ADD COLUMN scan TEXT NOT NULL DEFAULT 'full';
    """,
    # notifications (state/notifications.py, gridbackupd.notify): what was
    # sent to the [notify] targets with each target's delivery state, and the
    # lasting conditions with when each was last announced (repeat_every
    # holds across restarts).
    """
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        event TEXT NOT NULL,
        condition TEXT,
        body TEXT NOT NULL,
        deliveries TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE notify_conditions (
        condition TEXT PRIMARY KEY,
        since REAL NOT NULL,
        last_sent REAL NOT NULL
    );
    """,
    # snapshot_figures, snapshot_changes: what changed in each snapshot
    # against the one before of its host (state/changes.py): its figures,
    # and one row per changed path (a path's history is an index lookup).
    """
    CREATE TABLE snapshot_figures (
        snapshot TEXT PRIMARY KEY,
        parent TEXT,
        files_added INTEGER NOT NULL,
        files_changed INTEGER NOT NULL,
        files_deleted INTEGER NOT NULL,
        entries_added INTEGER NOT NULL,
        entries_changed INTEGER NOT NULL,
        entries_deleted INTEGER NOT NULL,
        bytes_added INTEGER NOT NULL,
        bytes_deleted INTEGER NOT NULL
    );
    CREATE INDEX snapshot_figures_parent ON snapshot_figures (parent);
    CREATE TABLE snapshot_changes (
        snapshot TEXT NOT NULL,
        path BLOB NOT NULL,
        change TEXT NOT NULL,
        kind TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        PRIMARY KEY (snapshot, path)
    ) WITHOUT ROWID;
    CREATE INDEX snapshot_changes_path ON snapshot_changes (path);
    """,
    # snapshot_totals: how many entries, files (and hard links) and bytes a
    # snapshot holds, as its scan counted them (scan/compare.py): a watched
    # scan of its child counts by difference, without reading what it takes
    # from it unchanged.  None for a snapshot recovered or resumed.
    """
    CREATE TABLE snapshot_totals (
        snapshot TEXT PRIMARY KEY,
        entries INTEGER NOT NULL,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    """,
]


class DatabaseError(GridBackupError):
    """The local database cannot be used as it is."""


def open_database(path):
    """
    Open (creating if needed) the state database at ``path`` and bring its
    schema up to date.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # It holds the caps of every pack and log: owner only, like private/.
    # (SQLite gives its -wal and -shm files the database file's mode.)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"{path}: cannot open the state database: {e}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    upgrade(conn, path)
    return conn


def upgrade(conn, path="database"):
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise DatabaseError(
                f"{path}: schema version {version} is newer than this gridbackupd "
                f"understands ({len(MIGRATIONS)}); upgrade gridbackupd"
            )
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def connect(path, **kwargs):
    """
    Another connection to an open state database, for a worker thread's
    long read or write: it waits for the daemon's writes (WAL) rather than
    failing with "database is locked".
    """
    conn = sqlite3.connect(path, **kwargs)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def connect_writer(path):
    """
    Another connection for a worker thread's many short write transactions
    (a scan queueing its blobs): autocommit and ``synchronous=NORMAL``, as
    the daemon's own connection.
    """
    conn = connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def read_only_connection(path):
    """A connection that can only read the state database at ``path`` (SQLite refuses its writes)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def database_path(conn):
    """The file of ``conn``'s main database, for a worker thread's own connection to it."""
    return conn.execute("PRAGMA database_list").fetchone()[2]


@contextlib.contextmanager
def worker_connection(path):
    """``with worker_connection(db_path) as conn:`` a ``connect``ed connection, closed after."""
    conn = connect(path)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(conn):
    """
    One short write transaction: committed on success, rolled back on error.

    Inside another transaction it is a savepoint of that one, so a named
    transition of state/ is atomic whether it runs alone or as a part of a
    larger step (the outer transaction then decides what becomes durable).
    """
    if conn.in_transaction:
        conn.execute("SAVEPOINT nested")
        try:
            yield conn
        except BaseException:
            # A full disk may have rolled back the whole transaction already.
            if conn.in_transaction:
                conn.execute("ROLLBACK TO nested")
                conn.execute("RELEASE nested")
            raise
        else:
            conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as e:
        # SQLite rolls back by itself after some errors (a full disk), and a
        # COMMIT that failed may leave the transaction open: never both
        # "cannot rollback" hiding the error and a transaction left open.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if is_disk_full(e) and not isinstance(e, DiskFull):
            raise disk_full("the database", os.path.dirname(database_path(conn))) from e
        raise


def get_meta(conn, key, default=None):
    """The value stored under ``key`` in ``meta``, or ``default``."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(conn, key, value):
    """Store ``value`` under ``key`` in ``meta``, replacing any earlier value."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def delete_meta(conn, key):
    """Remove ``key`` from ``meta`` (absent already is fine)."""
    conn.execute("DELETE FROM meta WHERE key = ?", (key,))
