"""
Forgetting snapshots: which ones go (a retention policy, or ids a person
named), and the order that keeps every other snapshot restorable at every
moment, a crash included.

A kept snapshot whose log is an increment on a forgotten one would lose
its base, so its log is first rewritten as a full log (same id, same
entries) and linked in place of the old one; only then are the forgotten
logs unlinked from ``snapshots/`` and deleted here.  Each step can be done
again after a crash: the same full log is the same bytes, and unlinking a
log that is already gone is a no-op.  The blobs only forgotten snapshots
used are left to ``prune.py``.
"""

import contextlib
import os

import attr
from twisted.logger import Logger

from gridbackupd import crashpoints
from gridbackupd.changes import compute
from gridbackupd.format import chain
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logreader import read_header
from gridbackupd.format.logwriter import LogWriter
from gridbackupd.maintenance.retention import SnapshotInfo, apply_policy
from gridbackupd.scan.watched import REVISIT_SUFFIX
from gridbackupd.state import changes, snapshots
from gridbackupd.state import db as dbmod

log = Logger()

# Only a snapshot whose log is on the grid, or one that failed, can be
# forgotten: a queued, scanning or uploading one is still being made.
PUBLISHED = ("complete", "incomplete")
FORGETTABLE = PUBLISHED + ("failed",)


@attr.frozen
class ForgetPlan:
    forget: tuple  # snapshot ids, newest first
    keep: dict  # id -> reasons (policy runs) or ("not named",)
    rewrite_full: tuple  # kept ids whose parent is forgotten: their logs become full
    refused: tuple = ()  # (id, reason) for named ids that cannot be forgotten

    def as_dict(self, conn=None):
        hosts = snapshots.hosts(conn) if conn is not None else {}
        return {
            "forget": list(self.forget),
            "keep": [{"id": i, "host": hosts.get(i), "reasons": list(r)}
                     for i, r in sorted(self.keep.items(), reverse=True)],
            "rewrite_full": list(self.rewrite_full),
            "refused": [{"id": i, "reason": r} for i, r in self.refused],
        }


def plan_forget(conn, policy=None, ids=None, tz=None):
    """
    What forgetting would do: by ``policy`` (a RetentionPolicy) over the
    published snapshots, or the snapshots named in ``ids``.
    """
    rows = snapshots.lineage(conn)
    states = {r[0]: r[1] for r in rows}
    refused = []
    if ids is not None:
        forget = []
        for snapshot_id in dict.fromkeys(ids):
            state = states.get(snapshot_id)
            if state is None:
                refused.append((snapshot_id, "no such snapshot"))
            elif state not in FORGETTABLE:
                refused.append((snapshot_id, f"it is {state}: a snapshot still being made "
                                             "cannot be forgotten"))
            else:
                forget.append(snapshot_id)
        forget = sorted(forget, reverse=True)
        keep = {r[0]: ("not named",) for r in rows if r[0] not in set(forget)}
    else:
        decision = apply_policy(
            [SnapshotInfo(r[0], r[2], r[3]) for r in rows if r[1] in PUBLISHED], policy, tz=tz)
        forget = list(decision.forget)
        keep = dict(decision.keep)
    gone = set(forget)
    rewrite = sorted(r[0] for r in rows if r[0] not in gone and r[4] in gone)
    return ForgetPlan(tuple(forget), keep, tuple(rewrite), tuple(refused))


async def forget(ctx, plan):
    """Carry out ``plan``: rewrite, then unlink and delete.  Returns counts."""
    rewritten = 0
    for snapshot_id in plan.rewrite_full:
        ctx.check_stopping()
        if await _rewrite_full(ctx, snapshot_id):
            rewritten += 1
    forgotten = 0
    for snapshot_id in plan.forget:
        ctx.check_stopping()
        row = snapshots.log_of(ctx.conn, snapshot_id)
        if row is None:
            continue  # forgotten by an earlier, interrupted run
        _, log_path, log_cap = row
        if log_cap:
            await ctx.publisher.unlink_snapshot_log(snapshot_id)
            crashpoints.reached("forget.logs_unlinked")
        with dbmod.transaction(ctx.conn):
            snapshots.forget(ctx.conn, snapshot_id)
            changes.forget(ctx.conn, snapshot_id)
        if log_path:
            for path in (log_path, log_path + REVISIT_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        forgotten += 1
        ctx.progress["forgotten"] = forgotten
        log.info("forgot snapshot {id}", id=snapshot_id)
    # The figures of the kept snapshots that were counted against a forgotten one.
    await ctx.in_thread(compute.fill_missing, ctx.db_path)
    return {"snapshots_forgotten": forgotten, "logs_rewritten": rewritten}


async def _rewrite_full(ctx, snapshot_id):
    """
    Rewrite a kept snapshot's log as a full log, on the grid too if it is there.

    Whether the log is on the grid is read only under the publisher's
    writing lock, after every await: the publisher uploads and links a log
    under that lock, so a log still unpublished is replaced here before the
    publisher reads it (it then publishes the full log), and one published
    meanwhile is uploaded again as a full log and relinked.  A value read
    before an await is never written back.
    """
    row = snapshots.log_of(ctx.conn, snapshot_id)
    if row is None or row[0] == "full" or not row[1]:
        return False
    log_path = row[1]
    tmp = log_path + ".full"
    await ctx.in_thread(write_full_log, ctx.db_path, snapshot_id, tmp)
    try:
        async with ctx.publisher.writing():
            now = snapshots.log_of(ctx.conn, snapshot_id)
            on_grid = now is not None and now[2] is not None
            if not on_grid:
                os.replace(tmp, log_path)
                crashpoints.reached("forget.full_log_replaced")
                snapshots.mark_full(ctx.conn, snapshot_id)
                crashpoints.reached("forget.full_log_marked")
        if on_grid:
            cap = await ctx.client.upload_file(tmp)
            crashpoints.reached("forget.full_log_written")
            await ctx.publisher.link_snapshot_log(snapshot_id, cap)
            crashpoints.reached("forget.full_log_linked")
            os.replace(tmp, log_path)
            snapshots.mark_full(ctx.conn, snapshot_id, cap)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    log.info("rewrote the log of {id} as a full log: its parent is forgotten", id=snapshot_id)
    return True


def settle_replaced_logs(conn):
    """
    At start: a crash between replacing a kept snapshot's unpublished log
    by its full log and marking its row full (``forget.full_log_replaced``)
    leaves a row that names a parent while the log on disk has none.  The
    row is made to say what the file says, so that the snapshot never
    waits for a parent the resumed forget may drop first.  Returns the ids.
    """
    settled = []
    for snapshot_id, log_path in snapshots.unpublished_increments(conn):
        try:
            kind = read_header(log_path).kind
        except (OSError, LogFormatError):
            continue  # the scan's own recovery deals with a missing or partial log
        if kind == "full":
            snapshots.mark_full(conn, snapshot_id)
            settled.append(snapshot_id)
            log.info("the log of {id} was rewritten as a full log before a crash; its row says so now",
                     id=snapshot_id)
    return settled


def write_full_log(db_path, snapshot_id, out_path):
    """The complete entries of ``snapshot_id`` as one full log (a worker thread)."""
    with dbmod.worker_connection(db_path) as conn:
        resolve = snapshots.log_resolver(conn)
        log_path = resolve(snapshot_id)
        if log_path is None:
            raise chain.ChainError(f"snapshot {snapshot_id} has no local log")
        with chain.open_chain(log_path, resolve) as (header, entries):
            full = attr.evolve(header, kind="full", parent=None)
            with open(out_path, "wb") as f:
                with LogWriter(f, full) as writer:
                    for entry in entries:
                        writer.add(entry)
                f.flush()
                os.fsync(f.fileno())
