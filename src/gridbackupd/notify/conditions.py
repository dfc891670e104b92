"""
What is wrong now: each lasting condition, read from the state database
and from what the running parts say (``Sources``), as ``{condition:
(message, details)}``.  Reads only, on the reactor thread; every read is
one short query, so it can run every few seconds.
"""

import json

import attr

from gridbackupd.errors import one_line
from gridbackupd.state import notifications as stored


def _none():
    return None


@attr.frozen
class Sources:
    """What the running parts say, each a callable (None while that part is not running)."""

    stalled: object = _none  # the uploader's stall ({"since", "reason"}) or None
    lock_error: object = _none  # why this daemon does not write (another machine's lock), or None
    protected_as_of: object = _none  # when the data was last known safe (watching), or None


def current(conn, host, now, stale_after, sources):
    """``{condition: (message, details)}`` of every condition on now."""
    found: dict[str, tuple[str, dict]] = {}
    _backup_failed(conn, host, found)
    _stale(conn, now, stale_after, sources, found)
    stalled = sources.stalled()
    if stalled:
        found["uploads_stalled"] = (one_line(stalled.get("reason") or "uploads are stalled"),
                                    {"since": stalled.get("since")})
    lock = sources.lock_error()
    if lock:
        found["writer_lock_held"] = (one_line(lock), {})
    _maintenance(conn, found)
    return found


def _backup_failed(conn, host, found):
    row = stored.newest_finished_snapshot(conn, host)
    if row is None or row[1] != "failed":
        return
    snapshot_id, _, errors = row
    reasons = [e.get("reason") for e in json.loads(errors or "[]") if isinstance(e, dict) and e.get("reason")]
    why = reasons[0] if reasons else "no reason recorded"
    found["backup_failed"] = (one_line(f"snapshot {snapshot_id} failed: {why}"), {"snapshot": snapshot_id})


def _stale(conn, now, stale_after, sources, found):
    if stale_after <= 0:
        return
    protected = sources.protected_as_of()
    if protected is None:
        from gridbackupd.state import snapshots

        protected = snapshots.newest_complete_time(conn)
    since = protected if protected is not None else stored.first_requested(conn)
    if since is None or now - since < stale_after:
        return
    if protected is None:
        message = f"no snapshot has completed since the first was requested {_ago(now - since)} ago"
    else:
        message = f"the newest complete snapshot is {_ago(now - protected)} old"
    found["snapshot_stale"] = (message, {"protected_as_of": protected, "stale_after": stale_after})


def _ago(seconds):
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"


def _maintenance(conn, found):
    check = stored.last_job(conn, "check")
    if check is not None and check[1] == "done":
        job_id, _, result, _ = check
        r = json.loads(result or "{}")
        if r.get("unhealthy"):
            found["check_damage"] = (
                f"check {job_id} found {r['unhealthy']} unhealthy objects "
                f"({r.get('repaired', 0)} repaired)", {"job": job_id, "unhealthy": r["unhealthy"]})
        lost = (r.get("still_unhealthy") or 0) + (r.get("unrecoverable") or 0)
        if lost:
            found["repair_failed"] = (
                f"check {job_id}: {r.get('still_unhealthy', 0)} objects still unhealthy after repair, "
                f"{r.get('unrecoverable', 0)} unrecoverable", {"job": job_id})
    drill = stored.last_job(conn, "drill")
    if drill is not None:
        job_id, state, result, error = drill
        r = json.loads(result or "{}")
        if state == "failed":
            found["drill_failed"] = (one_line(f"drill {job_id} failed: {error or 'no reason recorded'}"),
                                     {"job": job_id})
        elif r.get("failed") or r.get("error"):
            n = len(r.get("failed") or [])
            why = f"{n} of {r.get('files', 0)} files did not restore correctly" if n else r.get("error")
            found["drill_failed"] = (one_line(f"drill {job_id}: {why}"), {"job": job_id})
