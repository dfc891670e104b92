"""
The ``restores`` table: one row per restore request and its outcome.

A restore is ``queued``, then ``running``, then ``done``, ``failed`` or
``cancelled`` (a queued one may be cancelled straight away).  A run cut
short by a stop or a crash is ``running`` at the next start and goes back
to ``queued``: its files already in place are found there and kept.
Only this module writes the table; ``restore.requests`` owns the meaning.
"""

import json

from gridbackupd.state import db as dbmod

# Every state a restore can be in, in the order a restore goes through them.
STATES = ("queued", "running", "done", "failed", "cancelled")

FIELDS = ("id", "snapshot", "options", "target", "state", "created", "finished", "files_done",
          "files_total", "bytes_done", "bytes_total", "errors", "result")


def add(conn, restore_id, snapshot_id, options, target, created):
    """A new request is ``queued``, with its options as JSON and no figures yet."""
    with dbmod.transaction(conn):
        conn.execute(
            "INSERT INTO restores (id, snapshot, paths, target, state, created) "
            "VALUES (?, ?, ?, ?, 'queued', ?)",
            (restore_id, snapshot_id, json.dumps(options), target, created),
        )


def state_of(conn, restore_id):
    """The request's state, or None if there is no such request; reads only."""
    row = conn.execute("SELECT state FROM restores WHERE id = ?", (restore_id,)).fetchone()
    return row[0] if row is not None else None


def get(conn, restore_id):
    """The request's row as a dict of ``FIELDS`` (``options`` still JSON text), or None."""
    row = conn.execute(
        "SELECT id, snapshot, paths, target, state, created, finished, files_done, files_total, "
        "bytes_done, bytes_total, errors, result FROM restores WHERE id = ?",
        (restore_id,),
    ).fetchone()
    return dict(zip(FIELDS, row)) if row is not None else None


def next_queued(conn):
    """(id, snapshot id, options dict, target) of the oldest queued request, or None."""
    row = conn.execute(
        "SELECT id, snapshot, paths, target FROM restores WHERE state = 'queued' "
        "ORDER BY created LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    restore_id, snapshot_id, options, target = row
    return restore_id, snapshot_id, json.loads(options), target


def requeue_running(conn):
    """At start, a request left ``running`` by the last process is ``queued`` again."""
    with dbmod.transaction(conn):
        conn.execute("UPDATE restores SET state = 'queued' WHERE state = 'running'")


def mark_running(conn, restore_id):
    """The runner took the request: it is ``running`` until finished or requeued."""
    with dbmod.transaction(conn):
        conn.execute("UPDATE restores SET state = 'running' WHERE id = ?", (restore_id,))


def finish(conn, restore_id, state, finished, files_done, files_total, bytes_done, bytes_total,
           errors, result):
    """An end state (done, failed, cancelled) is written with its time, figures, errors and result at once."""
    with dbmod.transaction(conn):
        conn.execute(
            "UPDATE restores SET state = ?, finished = ?, files_done = ?, files_total = ?, "
            "bytes_done = ?, bytes_total = ?, errors = ?, result = ? WHERE id = ?",
            (state, finished, files_done, files_total, bytes_done, bytes_total,
             json.dumps(errors), json.dumps(result), restore_id),
        )


def count_by_state(conn):
    """{state: number of restores in it}, for the states that have any."""
    return dict(conn.execute("SELECT state, count(*) FROM restores GROUP BY state").fetchall())


def ids_after(conn, after, limit):
    """Up to ``limit`` request ids in the order they were made, after the request ``after`` (None: from the first)."""
    if after is None:
        rows = conn.execute("SELECT id FROM restores ORDER BY created, id LIMIT ?", (limit,)).fetchall()
    else:
        rows = conn.execute(
            "SELECT id FROM restores WHERE (created, id) > "
            "(SELECT created, id FROM restores WHERE id = ?) ORDER BY created, id LIMIT ?",
            (after, limit)).fetchall()
    return [row[0] for row in rows]
