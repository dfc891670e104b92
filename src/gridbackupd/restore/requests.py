"""
Restore requests: what to restore (``latest``, an id or a time; which paths;
where), the queue of requests, and their status.

A request is a row in the database (``state.restores``); requests run one
after another through the ``RestoreEngine``.  A restore the daemon's stop
interrupts stays ``running`` in the table and is queued again at the next
start; the files it had put in place are found there and kept.
"""

import json
import secrets
import time

from twisted.logger import Logger

from gridbackupd.errors import Conflict, DomainError, NotFound, TahoeError, one_line
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.restore.engine import Cancelled, RestoreEngine, RestoreProgress
from gridbackupd.restore.gridwait import DEFAULT_TIMEOUT
from gridbackupd.restore.targetfs import UnsafePath
from gridbackupd.runner import QueuedRunner
from gridbackupd.state import restores, snapshots

FINAL_STATES = ("done", "failed", "cancelled")


class Restorer(QueuedRunner):
    """The queue of restore requests and its runner, one restore at a time."""

    log = Logger()
    what = "restore runner"
    final_states = FINAL_STATES

    def __init__(self, reactor, conn, client_getter, pool, tmpdir, hostname=None, grid_wait=DEFAULT_TIMEOUT):
        super().__init__()
        self.reactor = reactor
        self.conn = conn
        self.hostname = hostname
        self.engine = RestoreEngine(reactor, conn, client_getter, pool, tmpdir, grid_wait=grid_wait)
        self.progress = {}

    # -- requests ------------------------------------------------------------

    def resolve_snapshot(self, spec):
        """
        'latest', an id or {"as_of": ISO time} -> (id, log_path, log_cap),
        as ``state.snapshots.resolve`` picks it; NotFound if there is
        no such snapshot.  An id may name an unfinished one (what is
        uploaded is restored, the rest is listed as pending).
        """
        row = snapshots.with_log(self.conn, snapshots.resolve(self.conn, spec, self.hostname))
        if row is None:
            raise NotFound("unknown_snapshot", f"no snapshot {spec!r} to restore from")
        return row

    def request(self, snapshot, paths, target, overwrite=False, dry_run=False, verify=False):
        snapshot_id, _, _ = self.resolve_snapshot(snapshot)
        restore_id = "r-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
        options = {"paths": paths, "overwrite": overwrite, "dry_run": dry_run, "verify": verify}
        restores.add(self.conn, restore_id, snapshot_id, options, target, time.time())
        self.kick()
        return restore_id

    def cancel(self, restore_id):
        """
        Cancel a queued or running restore.  A running one stops between
        spans: files not finished are removed (their temporary files), files
        already in place stay.  Cancelling a cancelled one is a no-op;
        a finished one is a Conflict.
        """
        state = restores.state_of(self.conn, restore_id)
        if state is None:
            raise NotFound("unknown_restore", f"no restore {restore_id!r}")
        if state in ("done", "failed"):
            raise Conflict("restore_finished", f"restore {restore_id} has already finished ({state})")
        live = self.progress.get(restore_id)
        if live is not None:
            live.cancelled = True
        elif state == "queued" or state == "running":
            self._finish(restore_id, "cancelled", RestoreProgress())
            self.waiters.fire(restore_id, "cancelled")
        return self.status(restore_id)

    def recover_interrupted(self):
        restores.requeue_running(self.conn)

    def state_of(self, restore_id):
        return restores.state_of(self.conn, restore_id)

    def status(self, restore_id):
        result = restores.get(self.conn, restore_id)
        if result is None:
            raise NotFound("unknown_restore", f"no restore {restore_id!r}")
        options = json.loads(result.pop("options"))
        extra = json.loads(result.pop("result") or "{}")
        result["paths"] = options.get("paths") or []
        for key in ("overwrite", "dry_run", "verify"):
            result[key] = bool(options.get(key, False))
        result["errors"] = json.loads(result["errors"])
        result["pending"] = extra.get("pending", [])
        if "plan" in extra:
            result["plan"] = extra["plan"]
        if "files_verified" in extra:
            result["files_verified"] = extra["files_verified"]
        result["setid_dropped"] = extra.get("setid_dropped", 0)
        result["unchanged"] = extra.get("unchanged", 0)
        result["waiting_for"] = result["waiting_since"] = None
        live = self.progress.get(restore_id)
        if live is not None:
            result.update(
                files_done=live.files_done, files_total=live.files_total,
                bytes_done=live.bytes_done, bytes_total=live.bytes_total,
                errors=list(live.errors), pending=list(live.pending),
                waiting_for=live.waiting_for, waiting_since=live.waiting_since,
                setid_dropped=live.setid_dropped, unchanged=live.unchanged,
            )
            if live.cancelled:
                result["cancel_requested"] = True
        return result

    # -- running ---------------------------------------------------------------

    def run(self, snapshot_id, paths, target, overwrite, progress, dry_run=False, verify=False):
        """Restore now, outside the queue (a drill does): see ``RestoreEngine.run``."""
        return self.engine.run(snapshot_id, paths, target, overwrite, progress,
                               dry_run=dry_run, verify=verify)

    def interrupt(self):
        """Stop after the files being written; an unfinished restore resumes on the next start."""
        self.engine.stopping = True

    def next_queued(self):
        return restores.next_queued(self.conn)

    async def run_one(self, row):
        restore_id, snapshot_id, options, target = row
        progress = self.progress[restore_id] = RestoreProgress()
        restores.mark_running(self.conn, restore_id)
        try:
            await self.run(
                snapshot_id, options["paths"], target, options["overwrite"], progress,
                dry_run=options.get("dry_run", False), verify=options.get("verify", False),
            )
            state = "done" if not progress.errors else "failed"
        except Cancelled:
            state = "cancelled"
        except (LogFormatError, DomainError, TahoeError, OSError, UnsafePath) as e:
            # Bad snapshot data, a grid or a target that fails us: the
            # restore's errors say it; no traceback needed.
            if self.stopping:
                return False
            self.log.warn("restore {id} failed: {error}", id=restore_id, error=one_line(e))
            progress.errors.append({"path": None, "reason": one_line(e)})
            state = "failed"
        except Exception as e:
            if self.stopping:
                return False
            self.log.failure("restore {id} failed", id=restore_id)
            progress.errors.append({"path": None, "reason": one_line(e)})
            state = "failed"
        if self.stopping and state != "cancelled":
            return False
        self._finish(restore_id, state, progress)
        del self.progress[restore_id]
        self.log.info("restore {id}: {state}, {files} files, {errors} errors, {pending} pending",
                      id=restore_id, state=state, files=progress.files_done,
                      errors=len(progress.errors), pending=len(progress.pending))
        self.waiters.fire(restore_id, state)

    def _finish(self, restore_id, state, progress):
        extra = {"pending": progress.pending}
        if progress.plan is not None:
            extra["plan"] = progress.plan
        if progress.files_verified is not None:
            extra["files_verified"] = progress.files_verified
        if progress.setid_dropped:
            extra["setid_dropped"] = progress.setid_dropped
        if progress.unchanged:
            extra["unchanged"] = progress.unchanged
        restores.finish(self.conn, restore_id, state, time.time(), progress.files_done,
                        progress.files_total, progress.bytes_done, progress.bytes_total,
                        progress.errors, extra)
