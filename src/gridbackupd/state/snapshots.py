"""
The ``snapshots`` table: one row per backup, from request to published log.

A snapshot goes ``queued`` → ``scanning`` → ``uploading`` (its log is
written and its blobs are queued) → ``complete`` or ``incomplete`` (its log
is linked on the grid; incomplete when some of its files changed before
they could be read).  A scan that cannot run ends ``failed``; a scan
interrupted by a stop goes back to ``queued``.  Each move is one function
here, and each runs as one transaction (a savepoint of the caller's, if
there is one), so that a crash leaves a row in one state or the next.

``snapshot_blobs`` lists the blobs an ``uploading`` snapshot still waits
for; it is emptied once the snapshot's log is published.

``resolve`` is the one answer to "which snapshot is `latest` (or as of a
time)": every API endpoint and the restore engine ask it, so ``gridbackup
ls latest`` and ``gridbackup restore latest`` never pick different
snapshots of a backup set that several hosts share.
"""

import datetime
import json
import os

from gridbackupd.errors import Invalid, NotFound
from gridbackupd.format import chain
from gridbackupd.state import db as dbmod

# -- from request to scan ------------------------------------------------------


def create_queued(conn, snapshot_id, host, paths, tags, requested, scan="full"):
    """A new request is ``queued``, with no start, no errors and no log."""
    with dbmod.transaction(conn):
        conn.execute(
            "INSERT INTO snapshots (id, state, host, paths, tags, requested, scan) "
            "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
            (snapshot_id, host, json.dumps(list(paths)), json.dumps(list(tags)), requested, scan),
        )


def set_scan(conn, snapshot_id, scan):
    """How the snapshot's entries are found: 'full' (every path walked) or 'watched'."""
    with dbmod.transaction(conn):
        conn.execute("UPDATE snapshots SET scan = ? WHERE id = ?", (scan, snapshot_id))


def next_queued(conn):
    """The id of the oldest ``queued`` snapshot (the next to scan), or None."""
    row = conn.execute("SELECT id FROM snapshots WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
    return row[0] if row is not None else None


def scanning_ids(conn):
    """The ids of the snapshots left ``scanning`` (by a process that died or stopped)."""
    return [r[0] for r in conn.execute("SELECT id FROM snapshots WHERE state = 'scanning'")]


def requeue(conn, snapshot_id, keep_blobs):
    """
    An interrupted scan goes back to ``queued`` with no start and no errors;
    its queued blobs stay listed only if a checkpoint (``keep_blobs``) covers them.
    """
    with dbmod.transaction(conn):
        if not keep_blobs:
            conn.execute("DELETE FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,))
        conn.execute(
            "UPDATE snapshots SET state = 'queued', started = NULL, errors = '[]' WHERE id = ?",
            (snapshot_id,),
        )


def mark_scanning(conn, snapshot_id, started):
    """A snapshot being scanned is ``scanning`` with the time its scan started."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = 'scanning', started = ? WHERE id = ?", (started, snapshot_id)
        )


def set_kind(conn, snapshot_id, kind, parent):
    """A snapshot has a parent only if its log is incremental."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET kind = ?, parent = ? WHERE id = ?",
            (kind, parent if kind == "incremental" else None, snapshot_id),
        )


def tags(conn, snapshot_id):
    """The tags a snapshot was requested with (an empty list if unreadable)."""
    row = conn.execute("SELECT tags FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
    try:
        return json.loads(row[0]) if row else []
    except ValueError:
        return []


def newest_scanned(conn, host):
    """``[(id, log path)]`` of ``host``'s newest snapshot with a written log (at most one)."""
    return conn.execute(
        "SELECT id, log_path FROM snapshots WHERE host = ? AND log_path IS NOT NULL "
        "AND state IN ('uploading', 'complete', 'incomplete') ORDER BY id DESC LIMIT 1",
        (host,),
    ).fetchall()


def mark_failed(conn, snapshot_id, finished, errors):
    """A scan that could not be done is ``failed``, finished, with the reasons in its errors."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = 'failed', finished = ?, errors = ? WHERE id = ?",
            (finished, json.dumps(errors), snapshot_id),
        )


def errors_of(conn, snapshot_id):
    """A snapshot's errors (dicts with path and reason); an empty list if unknown or unreadable."""
    row = conn.execute("SELECT errors FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
    try:
        return [e for e in json.loads(row[0]) if isinstance(e, dict)] if row else []
    except ValueError:
        return []


def add_error(conn, snapshot_id, error):
    """Append one error to a snapshot's errors, the others kept."""
    with dbmod.transaction(conn):
        row = conn.execute("SELECT errors FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        errors = json.loads(row[0]) if row else []
        errors.append(error)
        conn.execute("UPDATE snapshots SET errors = ? WHERE id = ?", (json.dumps(errors), snapshot_id))


def reroot_logs(conn, logs_dir):
    """
    A state_dir moved (or copied back from a backup to another path): each
    recorded log that is not under ``logs_dir`` but whose ``<id>.log`` is
    there names it again; the number of rows changed.  Idempotent, so it
    runs at every start.
    """
    prefix = os.path.join(logs_dir, "")
    rows = conn.execute(
        "SELECT id, log_path FROM snapshots WHERE log_path IS NOT NULL AND substr(log_path, 1, ?) != ?",
        (len(prefix), prefix)).fetchall()
    moved = [(os.path.join(logs_dir, os.path.basename(path)), snapshot_id) for snapshot_id, path in rows
             if not os.path.exists(path) and os.path.exists(os.path.join(logs_dir, os.path.basename(path)))]
    with dbmod.transaction(conn):
        conn.executemany("UPDATE snapshots SET log_path = ? WHERE id = ?", moved)
    return len(moved)


def mark_uploading(conn, snapshot_id, *, kind, parent, started, finished, files, bytes, errors, log_path,
                   totals=None):
    """
    A scanned snapshot is ``uploading`` only with its finished log's path
    and its counts; ``totals``: (entries, files, bytes) it holds, if its
    scan counted them (see ``totals``).
    """
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = 'uploading', kind = ?, parent = ?, started = ?, "
            "finished = ?, files = ?, bytes = ?, errors = ?, log_path = ? WHERE id = ?",
            (kind, parent if kind == "incremental" else None, started, finished,
             files, bytes, json.dumps(errors), log_path, snapshot_id),
        )
        conn.execute("DELETE FROM snapshot_totals WHERE snapshot = ?", (snapshot_id,))
        if totals is not None:
            conn.execute("INSERT INTO snapshot_totals (snapshot, entries, files, bytes) VALUES (?, ?, ?, ?)",
                         (snapshot_id, *totals))


def totals(conn, snapshot_id):
    """(entries, files, bytes) the snapshot holds, as its scan counted them, or None if it did not."""
    row = conn.execute("SELECT entries, files, bytes FROM snapshot_totals WHERE snapshot = ?",
                       (snapshot_id,)).fetchone()
    return tuple(row) if row is not None else None


# -- from upload to published log ----------------------------------------------


def ready_to_publish(conn):
    """
    ``[(id, log path)]`` of the ``uploading`` snapshots whose blobs are all
    committed or stale, and whose parent (if any) has its log on the grid.
    """
    return conn.execute(
        "SELECT s.id, s.log_path FROM snapshots s WHERE s.state = 'uploading' AND NOT EXISTS ("
        "  SELECT 1 FROM snapshot_blobs sb JOIN blobs b ON b.hash = sb.hash "
        "  WHERE sb.snapshot = s.id AND b.state IN ('pending', 'uploaded')"
        # An incremental log is only worth linking once its parent's is:
        # a new machine reads the chain from the grid.
        ") AND (s.parent IS NULL OR EXISTS ("
        "  SELECT 1 FROM snapshots p WHERE p.id = s.parent AND p.log_cap IS NOT NULL"
        ")) ORDER BY s.id"
    ).fetchall()


def uploading_waits(conn):
    """
    What each ``uploading`` snapshot waits for, by id (reads only): ``[(id,
    blobs pending or uploaded, parent whose log is not on the grid or None)]``.
    """
    return conn.execute(
        "SELECT s.id, (SELECT count(*) FROM snapshot_blobs sb JOIN blobs b ON b.hash = sb.hash "
        "  WHERE sb.snapshot = s.id AND b.state IN ('pending', 'uploaded')), "
        "CASE WHEN s.parent IS NOT NULL AND NOT EXISTS ("
        "  SELECT 1 FROM snapshots p WHERE p.id = s.parent AND p.log_cap IS NOT NULL"
        ") THEN s.parent END "
        "FROM snapshots s WHERE s.state = 'uploading' ORDER BY s.id"
    ).fetchall()


def stale_blob_count(conn, snapshot_id):
    """How many of a snapshot's blobs changed on disk before they could be uploaded."""
    return conn.execute(
        "SELECT count(*) FROM snapshot_blobs sb JOIN blobs b ON b.hash = sb.hash "
        "WHERE sb.snapshot = ? AND b.state = 'stale'",
        (snapshot_id,),
    ).fetchone()[0]


def mark_complete(conn, snapshot_id, log_cap, complete):
    """
    A published snapshot is ``complete`` (or ``incomplete``, if not
    ``complete``) only with its log's cap, and no longer lists blobs.
    """
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE snapshots SET state = ?, log_cap = ?, complete = ? WHERE id = ?",
            ("complete" if complete else "incomplete", log_cap, int(bool(complete)), snapshot_id),
        )
        # What is committed no longer needs tracking per snapshot.
        conn.execute("DELETE FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,))


# -- for restores and drills ---------------------------------------------------


def with_log(conn, snapshot_id):
    """(id, log_path, log_cap) if the snapshot has a log here or on the grid, complete or not; else None."""
    return conn.execute(
        "SELECT id, log_path, log_cap FROM snapshots WHERE id = ? "
        "AND (log_path IS NOT NULL OR log_cap IS NOT NULL)",
        (snapshot_id,),
    ).fetchone()


def count_complete(conn):
    """How many snapshots are complete (every blob they name is on the grid)."""
    return conn.execute("SELECT count(*) FROM snapshots WHERE complete = 1").fetchone()[0]


def nth_complete(conn, n):
    """The id of the ``n``-th complete snapshot in id order (from 0), or None."""
    row = conn.execute(
        "SELECT id FROM snapshots WHERE complete = 1 ORDER BY id LIMIT 1 OFFSET ?", (n,)).fetchone()
    return row[0] if row is not None else None


# -- for forgetting, pruning and checking --------------------------------------

# A snapshot whose entries still count for pruning: on the grid, or on its way there.
USING_BLOBS = ("uploading", "complete", "incomplete")


def hosts(conn):
    """{snapshot id: host} of every snapshot."""
    return dict(conn.execute("SELECT id, host FROM snapshots"))


def lineage(conn):
    """(id, state, host, time, parent) of every snapshot; time is when it started, else was requested."""
    return conn.execute(
        "SELECT id, state, host, coalesce(started, requested), parent FROM snapshots"
    ).fetchall()


def children(conn):
    """{parent id: [ids of the snapshots whose log is an increment on it]}."""
    found: dict[str, list[str]] = {}
    for snapshot_id, parent in conn.execute("SELECT id, parent FROM snapshots WHERE parent IS NOT NULL"):
        found.setdefault(parent, []).append(snapshot_id)
    return found


def ids_on_grid(conn):
    """The ids of the snapshots whose log is linked on the grid, oldest request first."""
    return [row[0] for row in conn.execute(
        "SELECT id FROM snapshots WHERE log_cap IS NOT NULL ORDER BY requested, id")]


def ids_using_blobs(conn):
    """The ids of the snapshots whose entries keep their blobs alive (``USING_BLOBS``)."""
    marks = ",".join("?" * len(USING_BLOBS))
    return [row[0] for row in conn.execute(
        f"SELECT id FROM snapshots WHERE state IN ({marks})", USING_BLOBS)]


def log_of(conn, snapshot_id):
    """(kind, log_path, log_cap) of the snapshot, or None if there is no such snapshot."""
    return conn.execute(
        "SELECT kind, log_path, log_cap FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()


def unpublished_increments(conn):
    """(id, log path) of the scanned snapshots whose row says incremental and whose log is not on the grid."""
    return conn.execute(
        "SELECT id, log_path FROM snapshots WHERE kind = 'incremental' AND log_cap IS NULL "
        "AND log_path IS NOT NULL AND state = 'uploading' ORDER BY id").fetchall()


def mark_full(conn, snapshot_id, log_cap=None):
    """
    The snapshot's log was rewritten as a full log: no parent; its
    ``log_cap`` becomes the new log's cap if one is given, else it stays as
    it is (the publisher owns it until the log is on the grid).
    """
    with dbmod.transaction(conn):
        conn.execute("UPDATE snapshots SET kind = 'full', parent = NULL WHERE id = ?", (snapshot_id,))
        if log_cap is not None:
            conn.execute("UPDATE snapshots SET log_cap = ? WHERE id = ?", (log_cap, snapshot_id))


def forget(conn, snapshot_id):
    """The snapshot is gone, with the blobs it held on to, in one transaction (a no-op if already gone)."""
    with dbmod.transaction(conn):
        conn.execute("DELETE FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,))
        conn.execute("DELETE FROM snapshot_totals WHERE snapshot = ?", (snapshot_id,))
        conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))


# -- for disaster recovery -----------------------------------------------------


def put_recovered(conn, rows):
    """
    Recovered snapshots (dicts: id, state, kind, parent, host, paths, tags,
    started, finished, files, bytes, log_path, log_cap, complete) replace
    any rows of the same ids, all in one transaction; requested = started,
    no errors.
    """
    with dbmod.transaction(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO snapshots (id, state, kind, parent, host, paths, tags, "
            "requested, started, finished, files, bytes, errors, log_path, log_cap, complete) "
            "VALUES (:id, :state, :kind, :parent, :host, :paths, :tags, :started, :started, "
            ":finished, :files, :bytes, '[]', :log_path, :log_cap, :complete)",
            rows,
        )


# -- for the daemon: the scan schedule and waiting for a snapshot ---------------------


def last_requested(conn):
    """When the newest snapshot was requested (seconds since the epoch), or None if there is none."""
    return conn.execute("SELECT max(requested) FROM snapshots").fetchone()[0]


def newest_time(conn):
    """
    The latest time a snapshot was requested or started (seconds since the
    epoch), or None if there is none: a new snapshot's times are never
    earlier, so that their order is the order they were made in.
    """
    return conn.execute(
        "SELECT max(max(requested), coalesce(max(started), 0)) FROM snapshots").fetchone()[0]


def state_of(conn, snapshot_id):
    """A snapshot's state (queued ... complete, incomplete, failed), or None if there is no such snapshot."""
    row = conn.execute("SELECT state FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
    return row[0] if row is not None else None


# The columns of a snapshot's summary, in the order ``summaries`` and
# ``summary`` return them.
SUMMARY = ("id", "state", "kind", "host", "requested", "started", "finished", "files", "bytes",
           "errors", "complete", "scan")
_SUMMARY = ", ".join(SUMMARY)

SPEC_HELP = 'snapshot must be "latest", a snapshot id, or {"as_of": "<ISO 8601 time>"}'


# -- which snapshot a request means ------------------------------------------------


def parse_time(text):
    """An ISO 8601 time (a zone is optional: UTC is assumed) -> seconds since the epoch."""
    if not isinstance(text, str) or not text:
        raise Invalid("bad_request", "as_of must be an ISO 8601 time such as 2026-01-31T12:00:00Z")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise Invalid("bad_request", f"as_of is not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def check_spec(spec):
    """'latest', an id, or {"as_of": time}, returned as given; Invalid for anything else."""
    if isinstance(spec, str) and spec:
        return spec
    if isinstance(spec, dict) and set(spec) == {"as_of"}:
        parse_time(spec["as_of"])
        return spec
    raise Invalid("bad_request", SPEC_HELP)


def resolve(conn, spec, host):
    """
    'latest', an id or {"as_of": time} -> a snapshot id.  'latest' and
    as_of pick complete snapshots only, ``host``'s newest first and another
    host's only when ``host`` has none (a new machine restoring the old
    one's backups); as_of compares the scan's start (else the request time).
    An id is returned as given: the caller looks it up and says what is
    missing.  Invalid for a malformed spec, NotFound when none fits.
    """
    spec = check_spec(spec)
    if isinstance(spec, str) and spec != "latest":
        return spec
    if spec == "latest":
        row = conn.execute(
            "SELECT id FROM snapshots WHERE complete = 1 ORDER BY host = ? DESC, id DESC LIMIT 1",
            (host,),
        ).fetchone()
        missing = "there is no complete snapshot yet"
    else:
        row = conn.execute(
            "SELECT id FROM snapshots WHERE complete = 1 AND coalesce(started, requested) <= ? "
            "ORDER BY host = ? DESC, id DESC LIMIT 1",
            (parse_time(spec["as_of"]), host),
        ).fetchone()
        missing = f"there is no complete snapshot as of {spec['as_of']}"
    if row is None:
        raise NotFound("unknown_snapshot", missing)
    return row[0]


# -- what the API shows -----------------------------------------------------------


def last_complete(conn):
    """The summary row of the newest complete snapshot of any host (by id), or None."""
    return conn.execute(
        f"SELECT {_SUMMARY} FROM snapshots WHERE complete = 1 ORDER BY id DESC LIMIT 1"
    ).fetchone()


def summaries(conn, after, limit):
    """Up to ``limit`` summary rows of the snapshots whose id sorts after ``after``, in id order."""
    return conn.execute(
        f"SELECT {_SUMMARY} FROM snapshots WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    ).fetchall()


def detail(conn, snapshot_id):
    """A snapshot's summary row followed by its paths, tags and errors (JSON text); None if unknown."""
    return conn.execute(
        f"SELECT {_SUMMARY}, paths, tags, errors FROM snapshots WHERE id = ?", (snapshot_id,)
    ).fetchone()


def previous_logged(conn, snapshot_id, host):
    """The id of ``host``'s newest snapshot before ``snapshot_id`` that has a log, or None."""
    row = conn.execute(
        "SELECT id FROM snapshots WHERE id < ? AND host = ? AND log_path IS NOT NULL "
        "AND state NOT IN ('queued', 'scanning', 'failed') ORDER BY id DESC LIMIT 1",
        (snapshot_id, host),
    ).fetchone()
    return row[0] if row else None


# -- what the metrics count ---------------------------------------------------------


def count_by_state(conn):
    """{state: number of snapshots in it}, for the states that have any."""
    return dict(conn.execute("SELECT state, count(*) FROM snapshots GROUP BY state").fetchall())


def newest_complete_time(conn):
    """When the newest complete snapshot (by id) finished, else started or was requested; None if none."""
    row = conn.execute(
        "SELECT coalesce(finished, started, requested) FROM snapshots "
        "WHERE complete = 1 ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def newest_complete_started(conn):
    """When the newest complete snapshot (by id) started its scan (else was requested); None if none."""
    row = conn.execute(
        "SELECT coalesce(started, requested) FROM snapshots "
        "WHERE complete = 1 ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def newest_scanned_errors(conn):
    """The errors (JSON text) of the newest snapshot past its scan, or None if there is none."""
    row = conn.execute(
        "SELECT errors FROM snapshots WHERE state NOT IN ('queued', 'scanning') "
        "ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


# -- chains of logs ---------------------------------------------------------------


def log_link(conn, snapshot_id):
    """(kind, parent, log_path, state) of a snapshot, one link of its chain of logs; None if unknown."""
    return conn.execute(
        "SELECT kind, parent, log_path, state FROM snapshots WHERE id = ?", (snapshot_id,)
    ).fetchone()


def log_resolver(conn, fallback_dir=None):
    """
    A resolver for ``format.chain``: a snapshot id -> its recorded log if
    the file is there, else ``<id>.log`` in ``fallback_dir`` if that is,
    else None.  It queries ``conn`` when called: call it on that
    connection's thread.
    """
    fallback = chain.dir_resolver(fallback_dir) if fallback_dir is not None else None

    def resolve(snapshot_id):
        row = log_of(conn, snapshot_id)
        if row and row[1] and os.path.exists(row[1]):
            return row[1]
        return fallback(snapshot_id) if fallback is not None else None

    return resolve
