"""
The ``notifications`` and ``notify_conditions`` tables: what the daemon
told (or is telling) its notification targets, with each target's delivery
state, and the conditions that last, with when each was last announced, so
that ``repeat_every`` holds across restarts.  Also the few reads of other
tables the notifier's conditions need.  Only this module writes the tables;
``gridbackupd.notify`` owns the meaning.
"""

import json

from gridbackupd.state import db as dbmod

KEEP = 200  # notifications kept; older ones are dropped as new ones come
COLUMNS = "id, time, event, condition, body, deliveries"


def add(conn, time, event, condition, body, deliveries, keep=KEEP, change=None):
    """
    Record a notification (its JSON body and per-target delivery state);
    its id.  ``change``, "started", "repeated" or "ended", records that
    change of ``condition`` in the same transaction: a condition is never
    marked announced without its notification, nor told twice.
    """
    with dbmod.transaction(conn):
        if change is not None:
            _CONDITION_CHANGES[change](conn, condition, time)
        cur = conn.execute(
            "INSERT INTO notifications (time, event, condition, body, deliveries) VALUES (?, ?, ?, ?, ?)",
            (time, event, condition, json.dumps(body), json.dumps(deliveries)))
        conn.execute("DELETE FROM notifications WHERE id <= ?", (cur.lastrowid - keep,))
    return cur.lastrowid


def set_delivery(conn, notification_id, target, delivery):
    """Replace one target's delivery state of a notification (gone already is fine)."""
    with dbmod.transaction(conn):
        row = conn.execute("SELECT deliveries FROM notifications WHERE id = ?", (notification_id,)).fetchone()
        if row is None:
            return
        deliveries = json.loads(row[0])
        deliveries[target] = delivery
        conn.execute("UPDATE notifications SET deliveries = ? WHERE id = ?",
                     (json.dumps(deliveries), notification_id))


def recent(conn, limit):
    """Up to ``limit`` notifications, newest first: (id, time, event, condition, body, deliveries), decoded."""
    rows = conn.execute(f"SELECT {COLUMNS} FROM notifications ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [(i, t, e, c, json.loads(b), json.loads(d)) for i, t, e, c, b, d in rows]


def pending(conn):
    """The notifications with a delivery still ``pending`` (a restart cut its retries), oldest first."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM notifications WHERE deliveries LIKE '%\"pending\"%' ORDER BY id").fetchall()
    return [(i, t, e, c, json.loads(b), json.loads(d)) for i, t, e, c, b, d in rows]


def conditions(conn):
    """{condition: (since, last_sent)} of the conditions announced and not yet over."""
    return {c: (s, last) for c, s, last in conn.execute(
        "SELECT condition, since, last_sent FROM notify_conditions").fetchall()}


def _condition_started(conn, condition, now):
    conn.execute(
        "INSERT INTO notify_conditions (condition, since, last_sent) VALUES (?, ?, ?) "
        "ON CONFLICT(condition) DO UPDATE SET since = excluded.since, last_sent = excluded.last_sent",
        (condition, now, now))


def _condition_repeated(conn, condition, now):
    conn.execute("UPDATE notify_conditions SET last_sent = ? WHERE condition = ?", (now, condition))


def _condition_ended(conn, condition, now):
    conn.execute("DELETE FROM notify_conditions WHERE condition = ?", (condition,))


_CONDITION_CHANGES = {"started": _condition_started, "repeated": _condition_repeated, "ended": _condition_ended}


# -- what the conditions read of the other tables ------------------------------------


def newest_finished_snapshot(conn, host):
    """(id, state, errors JSON text) of ``host``'s newest snapshot past its scan, or None."""
    return conn.execute(
        "SELECT id, state, errors FROM snapshots WHERE host = ? AND state NOT IN ('queued', 'scanning') "
        "ORDER BY id DESC LIMIT 1", (host,)).fetchone()


def snapshots_after(conn, host, after):
    """(id, state) of ``host``'s snapshots finished (complete, incomplete or failed) with id > ``after``."""
    return conn.execute(
        "SELECT id, state FROM snapshots WHERE host = ? AND id > ? "
        "AND state IN ('complete', 'incomplete', 'failed') ORDER BY id", (host, after or "")).fetchall()


def newest_snapshot_id(conn, host):
    row = conn.execute("SELECT max(id) FROM snapshots WHERE host = ?", (host,)).fetchone()
    return row[0]


def first_requested(conn):
    """When the first snapshot was requested, or None: a set never complete is stale from then."""
    return conn.execute("SELECT min(requested) FROM snapshots").fetchone()[0]


def last_job(conn, kind):
    """(id, state, result JSON text, error) of the run of ``kind`` that finished last, or None."""
    return conn.execute(
        "SELECT id, state, result, error FROM jobs WHERE kind = ? AND state IN ('done', 'failed') "
        "ORDER BY finished DESC, id DESC LIMIT 1", (kind,)).fetchone()


def work_left(conn):
    """What a daemon killed mid-way left half-done, as short phrases (empty: nothing to redo)."""
    left = []
    scans = conn.execute("SELECT count(*) FROM snapshots WHERE state = 'scanning'").fetchone()[0]
    if scans:
        left.append(f"{scans} interrupted scan(s) resumed")
    unlinked = conn.execute("SELECT count(*) FROM commits WHERE linked = 0").fetchone()[0]
    if unlinked:
        left.append(f"{unlinked} commit(s) linked")
    jobs = conn.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0]
    if jobs:
        left.append(f"{jobs} maintenance job(s) resumed")
    restores = conn.execute("SELECT count(*) FROM restores WHERE state = 'running'").fetchone()[0]
    if restores:
        left.append(f"{restores} restore(s) resumed")
    return left
