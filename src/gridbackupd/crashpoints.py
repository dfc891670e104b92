"""
Named crash points: the places where a test may kill the daemon, so that
every durable step is proven to be finished by a restart.

Each durable step calls ``reached("name")`` right after its effect is
durable (a row committed, an object on the grid, a file renamed).  The
table ``POINTS`` is the registry the crash matrix reads: a point added
here is covered by the matrix without editing it.

The points do nothing unless ``GRIDBACKUP_TESTING=1`` is set together with
``GRIDBACKUP_CRASH_AT=name[:n]``: the process then ends with
``os._exit(137)`` (as a SIGKILL would, with nothing flushed) the n-th time
it passes that point (the first time when n is left out).

With ``GRIDBACKUP_TESTING=1``, ``GRIDBACKUP_CRASH_TRACE=file`` appends the
name of every point passed to that file, one a line, before any exit there:
the tests count from it what a run did across its crashes (the packs sent
to the grid, how often a point is passed, to crash at a random pass).
"""

import os
import threading

import attr

TESTING = "GRIDBACKUP_TESTING"
CRASH_AT = "GRIDBACKUP_CRASH_AT"
TRACE = "GRIDBACKUP_CRASH_TRACE"
EXIT_STATUS = 137


@attr.frozen
class Point:
    """A named durable step; ``scenario`` is what the matrix runs to reach it."""

    name: str
    scenario: str
    doc: str


POINTS: dict[str, Point] = {}


def _point(name, scenario, doc):
    POINTS[name] = Point(name, scenario, doc)


# Scenario "backup": a backup of a tree, from the request to a complete snapshot.
_point("scan.checkpoint_written", "backup", "a scan checkpoint is on disk")
_point("scan.log_finished", "backup", "the scan's log is written and its snapshot row is uploading")
_point("packer.pack_built", "backup", "a pack file is complete in the packs directory (wiped at start)")
_point("uploader.pack_uploaded", "backup", "a pack is on the grid, its row not yet updated")
_point("uploader.pack_recorded", "backup", "a pack's row holds its cap and its blobs are uploaded")
_point("publisher.index_uploaded", "backup", "a commit's index segment is on the grid")
_point("publisher.commit_made", "backup", "a commit's immutable directory is on the grid")
_point("publisher.commit_recorded", "backup", "the commit row is written, not linked")
_point("publisher.commit_linked", "backup", "the commit is linked under commits/, its row not yet marked")
_point("publisher.blobs_committed", "backup", "the commit's row is linked and its blobs committed")
_point("publisher.log_uploaded", "backup", "a snapshot's log is on the grid, not linked")
_point("publisher.log_linked", "backup", "a snapshot's log is linked under snapshots/")
_point("publisher.snapshot_complete", "backup", "the snapshot row is complete")
# Scenario "start": a restart of a daemon with work left over.
_point("start.grid_started", "start", "the grid answers with enough storage servers connected")
_point("start.leftovers_taken_over", "start", "leftover tahoe nodes were stopped or adopted")
_point("start.recovery_halfway", "start",
       "the start's recovery pass has linked the recorded commits, not yet committed or published")
# Scenario "forget": a forget by policy followed by a prune.
_point("forget.full_log_written", "forget", "a kept snapshot's full log is on the grid, not linked")
_point("forget.full_log_linked", "forget",
       "the full log is linked in place of the incremental one, the row not yet marked full")
_point("forget.logs_unlinked", "forget", "a forgotten snapshot's log is unlinked, its row not yet dropped")
_point("prune.packs_uploaded", "forget",
       "the repacked packs and the replacement commits are on the grid, the database unchanged")
_point("prune.commits_replaced", "forget", "the database names the replacement commits, none linked yet")
_point("prune.commits_linked", "forget", "the replacement commits are linked, the retired ones not yet unlinked")
_point("prune.retired_unlinked", "forget", "a retired commit is unlinked and its row dropped")
_point("figures.computed", "forget",
       "a kept snapshot's figures, counted against a forgotten one, are computed again and stored")
# Scenario "forget_uploading": a forget of a snapshot whose child is still uploading.
_point("forget.full_log_replaced", "forget_uploading",
       "a kept snapshot's log, not yet on the grid, is replaced by its full log, the row not yet marked full")
_point("forget.full_log_marked", "forget_uploading",
       "that snapshot's row is marked full (its log is published later, as a full log)")
# Scenario "mount_index": a backup, then its snapshot's index for gridbackup mount.
_point("mount.index_written", "mount_index", "a finished snapshot's per-directory mount index is committed")
# Scenario "seal": backups in buckets of one second (layout version 2), then a
# forget of the first: its bucket is sealed, then rewritten without it.
_point("buckets.opened", "seal", "a new open bucket is linked in its index")
_point("buckets.sealed_made", "seal", "an open bucket's sealed copy is on the grid, not linked")
_point("buckets.sealed_linked", "seal", "the sealed bucket is linked in place of the open one")
_point("buckets.rewritten", "seal", "a sealed bucket rewritten without (or with another) child is linked")
# Scenario "convert": a set written as layout version 1, then a start that converts it.
_point("convert.indexes_linked", "convert", "the v2 indexes are linked in the root next to v1")
_point("convert.bucket_made", "convert", "a sealed bucket of a v1 directory's children is on the grid")
_point("convert.bucket_linked", "convert", "that bucket is linked in its v2 index")
_point("convert.settings_written", "convert", "gridbackup.json says version 2; v1 still linked")
_point("convert.old_unlinked", "convert", "a v1 directory is unlinked from the root")
# Scenario "notify": a test notification to a webhook.
_point("notify.recorded", "notify",
       "a notification (and its condition's change) is recorded, nothing sent")
_point("notify.sent", "notify", "a target took the notification, its delivery not yet recorded")
# Scenario "restore": a whole-snapshot restore.
_point("restore.mid_file", "restore", "part of a file's content is written to its temporary name")
_point("restore.before_rename", "restore", "a file is complete under its temporary name, with its metadata")
_point("restore.after_rename", "restore", "a file is in place, the restore not yet done")


class _Trigger:
    """The parsed setting, and how often each point was passed."""

    def __init__(self, environ, exit):
        self.exit = exit
        self.name = None
        self.nth = 1
        self.passed = 0
        self.lock = threading.Lock()
        self.trace = None
        if environ.get(TESTING) != "1":
            return
        if environ.get(TRACE):
            self.trace = os.open(environ[TRACE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        spec = environ.get(CRASH_AT, "")
        if not spec:
            return
        name, _, nth = spec.partition(":")
        if name not in POINTS:
            raise ValueError(f"{CRASH_AT}={spec}: no crash point named {name!r}")
        self.name = name
        self.nth = int(nth) if nth else 1
        if self.nth < 1:
            raise ValueError(f"{CRASH_AT}={spec}: the count starts at 1")

    def reached(self, name):
        if self.trace is not None:
            os.write(self.trace, name.encode() + b"\n")
        if name != self.name:
            return
        with self.lock:
            self.passed += 1
            if self.passed == self.nth:
                self.exit(EXIT_STATUS)


_trigger: _Trigger | None = None


def configure(environ=None, exit=os._exit):
    """Read the setting again (at start, and in tests); an unknown name is an error."""
    global _trigger
    _trigger = _Trigger(os.environ if environ is None else environ, exit)
    return _trigger


def reached(name):
    """Mark that the durable step ``name`` is done; may end the process in tests."""
    if name not in POINTS:
        raise KeyError(f"unregistered crash point {name!r}")
    trigger = _trigger if _trigger is not None else configure()
    trigger.reached(name)
