"""
The ``jobs`` and ``job_items`` tables: maintenance runs, and the items a
run has finished.

A job is ``queued``, ``running``, then ``done`` or ``failed``.  A stopped
run goes back to ``queued`` with its progress, and keeps its items, so the
next start resumes it; a finished run drops its items.  The schedule reads
the same table (when a kind was last requested), so it survives restarts.
Only this module writes the tables; ``maintenance.scheduler`` owns the
meaning.
"""

from gridbackupd.state import db as dbmod

COLUMNS = "id, kind, state, requested, started, finished, options, progress, result, error"
EPOCH_KEY = "maintenance_epoch"


def start_schedule(conn, now):
    """At start: runs left ``running`` are ``queued`` again; the schedule's epoch is set once, never moved."""
    with dbmod.transaction(conn):
        conn.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")
        if dbmod.get_meta(conn, EPOCH_KEY) is None:
            dbmod.set_meta(conn, EPOCH_KEY, repr(now))


def epoch(conn):
    """When the schedule first started (seconds), or None before it ever did; reads only."""
    value = dbmod.get_meta(conn, EPOCH_KEY)
    return float(value) if value is not None else None


def last_requested(conn, kind):
    """When a run of ``kind`` was last requested, finished or not; None if never."""
    return conn.execute("SELECT max(requested) FROM jobs WHERE kind = ?", (kind,)).fetchone()[0]


def find_queued(conn, kind, options):
    """The id of a queued run of ``kind`` with exactly these options (JSON text), or None."""
    row = conn.execute(
        "SELECT id FROM jobs WHERE kind = ? AND state = 'queued' AND options = ?",
        (kind, options)).fetchone()
    return row[0] if row is not None else None


def add(conn, job_id, kind, requested, options):
    """A new run is ``queued`` with its options (JSON text) and empty progress and result."""
    with dbmod.transaction(conn):
        conn.execute(
            "INSERT INTO jobs (id, kind, state, requested, options) VALUES (?, ?, 'queued', ?, ?)",
            (job_id, kind, requested, options))


def next_queued(conn):
    """(id, kind, options JSON) of the run requested first among the queued, or None."""
    return conn.execute(
        "SELECT id, kind, options FROM jobs WHERE state = 'queued' "
        "ORDER BY requested, id LIMIT 1").fetchone()


def mark_running(conn, job_id, started):
    """The runner took the run: ``running`` since ``started``."""
    with dbmod.transaction(conn):
        conn.execute("UPDATE jobs SET state = 'running', started = ? WHERE id = ?", (started, job_id))


def requeue(conn, job_id, progress):
    """A stopped run is ``queued`` again with its progress (JSON text); its items stay for the resume."""
    with dbmod.transaction(conn):
        conn.execute("UPDATE jobs SET state = 'queued', progress = ? WHERE id = ?", (progress, job_id))


def finish(conn, job_id, kind, state, finished, error, progress, result, keep):
    """
    A run ends (done or failed) with its figures; its items go, and only
    the ``keep`` newest finished runs of its kind stay.
    """
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE jobs SET state = ?, finished = ?, error = ?, progress = ?, result = ? WHERE id = ?",
            (state, finished, error, progress, result, job_id))
    with dbmod.transaction(conn):
        conn.execute("DELETE FROM job_items WHERE job = ?", (job_id,))
        conn.execute(
            "DELETE FROM jobs WHERE kind = ? AND state IN ('done', 'failed') AND id NOT IN "
            "(SELECT id FROM jobs WHERE kind = ? AND state IN ('done', 'failed') "
            " ORDER BY requested DESC LIMIT ?)", (kind, kind, keep))


def get(conn, job_id):
    """The run's row (``COLUMNS``, JSON fields as text), or None."""
    return conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()


def recent(conn, limit, kind=None):
    """Up to ``limit`` rows (``COLUMNS``), newest request first, of one kind or all."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM jobs WHERE ? IS NULL OR kind = ? "
        "ORDER BY requested DESC, id DESC LIMIT ?", (kind, kind, limit)).fetchall()


def last_finished(conn, kind):
    """(id, state, finished, error) of the run of ``kind`` that finished last, or None."""
    return conn.execute(
        "SELECT id, state, finished, error FROM jobs WHERE kind = ? AND state IN "
        "('done', 'failed') ORDER BY finished DESC LIMIT 1", (kind,)).fetchone()


def item_done(conn, job_id, item):
    """Whether the run has marked ``item`` finished; reads only."""
    return conn.execute(
        "SELECT 1 FROM job_items WHERE job = ? AND item = ?", (job_id, item)).fetchone() is not None


def done_items(conn, job_id):
    """The set of items the run has marked finished; reads only."""
    return {row[0] for row in conn.execute("SELECT item FROM job_items WHERE job = ?", (job_id,))}


def mark_items_done(conn, job_id, items):
    """Items once marked stay marked until the run finishes (marking twice is a no-op)."""
    with dbmod.transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO job_items (job, item) VALUES (?, ?)",
            [(job_id, item) for item in items])
