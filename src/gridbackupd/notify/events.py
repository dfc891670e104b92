"""
The notification document every target receives (the JSON schema in the
README): one flat object whose ``event`` names what happened.  Built here
only, so every transport sends the same fields.
"""

SCHEMA = 1

# Lasting conditions: announced when they start, repeated at most every
# ``repeat_every`` while they last, and their end announced once (``healthy``).
CONDITIONS = ("backup_failed", "snapshot_stale", "uploads_stalled", "writer_lock_held",
              "check_damage", "repair_failed", "drill_failed")
# Events that happen once.
ONCE = ("crash_recovered", "healthy", "test")
EVENTS = CONDITIONS + ONCE

TITLES = {
    "backup_failed": "backup failed",
    "snapshot_stale": "no recent complete snapshot",
    "uploads_stalled": "uploads are stalled",
    "writer_lock_held": "another machine holds the writer lock",
    "check_damage": "a check found damage",
    "repair_failed": "a repair failed",
    "drill_failed": "a restore drill failed",
    "crash_recovered": "recovered from a crash, work redone",
    "healthy": "back to healthy",
    "test": "test notification",
}


def document(event, host, time, message, *, condition=None, since=None, repeat=False, active=(),
             details=None):
    """
    The notification as sent: ``event`` (one of EVENTS), ``host``, ``time``
    (Unix seconds), ``title``, ``message`` (one line), ``condition`` (the
    condition this is about: itself, or for ``healthy`` the one that ended),
    ``since`` (when the condition started), ``repeat`` (a reminder of a
    condition announced before), ``active`` (the conditions still on) and
    ``details`` (an object, per event).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    return {
        "schema": SCHEMA,
        "event": event,
        "host": host,
        "time": time,
        "title": f"gridbackup on {host}: {TITLES[event]}",
        "message": message,
        "condition": condition,
        "since": since,
        "repeat": repeat,
        "active": sorted(active),
        "details": details or {},
    }
