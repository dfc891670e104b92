"""
The maintenance jobs of a backup set, on a schedule and on request: lease
renewal, check and repair, restore drills, and forget-and-prune by the
retention policy.

Jobs run one at a time, from the ``jobs`` table, oldest request first.  A
job that the daemon's stop interrupts stays ``queued`` and resumes, with
the items it had finished (``job_items``), at the next start; so does one
killed with the process (``running`` at start).  The schedule is kept in
the same table: a kind is due when its last run was requested longer ago
than its interval, so a restart neither repeats nor skips a weekly job.
While the daemon runs, "how long ago" is measured on the reactor's
(monotonic) clock from the recorded request, so a wall clock set back an
hour delays no job and one set forward a day runs none early; only at
start is the recorded wall time compared with the wall clock, and then a
request that seems to lie in the future counts as made just now.
Forget and prune hold the backup jobs' scan lock: no scan dedups against a
blob a prune is dropping.

A job that finds the grid away (the daemon still connecting, the client
node restarting) does not fail: it waits (``waiting_for: "grid"`` in its
progress) and runs again from the items it had finished, up to ``[tahoe]
grid_wait``; then it fails with one line.
"""

import json
import secrets
import time

import attr
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gridbackupd import clock as clockmod
from gridbackupd.errors import Invalid, NotFound, ReadOnly, one_line
from gridbackupd.maintenance.jobs import JobStopped
from gridbackupd.restore.gridwait import DEFAULT_TIMEOUT, GridWait
from gridbackupd.runner import QueuedRunner
from gridbackupd.state import jobs as jobstate

KINDS = ("leases", "check", "drill", "forget", "prune")
WRITING = ("forget", "prune")  # need a writable root and the scan lock
TICK = 60.0
KEEP_RUNS = 50  # finished runs of each kind kept in the table


def new_job_id(kind, now):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{kind}-" + secrets.token_hex(3)


async def run_leases(m, ctx):
    from gridbackupd.maintenance.leases import renew_leases

    return await renew_leases(ctx)


async def run_check(m, ctx):
    from gridbackupd.maintenance.checkrepair import check_and_repair

    return await check_and_repair(ctx)


async def run_drill(m, ctx):
    from gridbackupd.maintenance.drill import restore_drill

    return await restore_drill(ctx)


async def run_forget(m, ctx):
    from gridbackupd.maintenance.forget import forget, plan_forget

    ids = ctx.options.get("snapshots")
    if ids is None and m.retention.policy().empty:
        result = {"policy": "none: every snapshot is kept", "snapshots_forgotten": 0}
    else:
        plan = plan_forget(ctx.conn, m.retention.policy(), ids)
        ctx.progress.update(forget=len(plan.forget), rewrite_full=len(plan.rewrite_full))
        result = {"plan": plan.as_dict(), **await forget(ctx, plan)}
    if ctx.options.get("prune", True):
        result["prune"] = await run_prune(m, ctx)
    return result


async def run_prune(m, ctx):
    from gridbackupd.maintenance.prune import prune

    return await prune(ctx, repack_threshold=m.retention.repack_threshold, pack_size=m.pack_size)


RUNNERS = {"leases": run_leases, "check": run_check, "drill": run_drill,
           "forget": run_forget, "prune": run_prune}


class _ProgressFields:
    """A job's progress dict seen as the attributes GridWait sets; None removes the key."""

    _progress: dict

    def __init__(self, progress):
        object.__setattr__(self, "_progress", progress)

    def __setattr__(self, name, value):
        if value is None:
            self._progress.pop(name, None)
        else:
            self._progress[name] = value


class Maintenance(QueuedRunner):
    """
    The maintenance jobs' queue, schedule and runner.  ``template`` is what
    every job sees of the daemon (a JobContext without a job); forget and
    prune take ``scan_lock`` and first ask ``require_writable``.
    """

    log = Logger()
    what = "maintenance job"

    def __init__(self, reactor, template, settings, retention, pack_size, scan_lock,
                 require_writable, read_only=False, grid_wait=DEFAULT_TIMEOUT, wallclock=clockmod.wall):
        super().__init__()
        self.wallclock = wallclock  # for the times recorded; durations on the reactor
        self.grid_wait = grid_wait  # [tahoe] grid_wait
        self.reactor = reactor
        self.template = template
        self.conn = template.conn
        self.settings = settings  # [maintenance]
        self.retention = retention  # [retention]
        self.pack_size = pack_size  # [upload] pack_size, for repacking
        self.scan_lock = scan_lock
        self.require_writable = require_writable
        self.read_only = read_only
        self.current = None  # the JobContext of the running job
        self.current_kind = None
        self._loop = None
        self._requested_at: dict[str, float] = {}  # kind -> last request, on the reactor's clock

    def intervals(self):
        c, r = self.settings, self.retention
        return {
            "leases": c.lease_interval,
            "check": c.check_interval,
            "drill": c.drill_interval,
            # Forget and prune on a schedule only with a policy, only when writable.
            "forget": r.interval if not r.policy().empty and not self.read_only else 0,
        }

    def default_options(self, kind):
        c = self.settings
        return {
            "leases": {"parallel": c.parallel},
            "check": {"parallel": c.parallel, "verify_fraction": c.check_verify_fraction,
                      "repair": c.check_repair},
            "drill": {"files": c.drill_files},
            "forget": {"prune": True},
            "prune": {},
        }[kind]

    # -- start and stop ----------------------------------------------------

    def recover_interrupted(self):
        """Resume interrupted jobs (the grid side is up); the schedule starts now if it never did."""
        jobstate.start_schedule(self.conn, self.wallclock())

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(TICK, now=True)

    def interrupt(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.current is not None:
            self.current.stopping = True

    def tick(self):
        """Queue every job that is due, then run the queue."""
        for kind, interval in self.intervals().items():
            if interval > 0 and self._since_requested(kind, interval) >= interval:
                self.request(kind, scheduled=True)
        self.kick()

    def _since_requested(self, kind, interval):
        """
        Seconds since a job of this kind was last requested, on the
        reactor's clock; the first time, from the recorded wall time,
        between 0 (a request that seems to lie ahead: the clock was set
        back) and ``interval`` (due now: a daemon asleep for a week runs it
        once).
        """
        now = self.reactor.seconds()
        if kind not in self._requested_at:
            last = self._last_requested(kind)
            ago = self.wallclock() - last if last is not None else 0.0
            self._requested_at[kind] = now - min(max(ago, 0.0), interval)
        return now - self._requested_at[kind]

    def _last_requested(self, kind):
        """When a job of this kind was last requested; the schedule's start if never
        (a new backup set's leases are fresh, its first drill has nothing to restore)."""
        last = jobstate.last_requested(self.conn, kind)
        if last is not None:
            return last
        return jobstate.epoch(self.conn)

    # -- requests ------------------------------------------------------------

    def request(self, kind, options=None, scheduled=False):
        """Queue a job (or join one of the same kind and options that waits); its id."""
        if kind not in KINDS:
            raise Invalid("bad_request", f"unknown job kind {kind!r}; one of {list(KINDS)}")
        if kind in WRITING:
            self.require_writable()
        options = {**self.default_options(kind), **(options or {})}
        encoded = json.dumps(options, sort_keys=True)
        waiting = jobstate.find_queued(self.conn, kind, encoded)
        if waiting is not None:
            return waiting
        now = self.wallclock()
        job_id = new_job_id(kind, now)
        jobstate.add(self.conn, job_id, kind, now, encoded)
        self._requested_at[kind] = self.reactor.seconds()
        self.log.info("{how} {kind} job {id} queued", how="scheduled" if scheduled else "requested",
                      kind=kind, id=job_id)
        self.kick()
        return job_id

    # -- running -------------------------------------------------------------

    def next_queued(self):
        return jobstate.next_queued(self.conn)

    async def run_one(self, row):
        """Run one job; False if it was stopped (it resumes at the next start)."""
        job_id, kind, options = row
        ctx = self.context(job_id, json.loads(options))
        jobstate.mark_running(self.conn, job_id, self.wallclock())
        self.current, self.current_kind = ctx, kind
        lock = self.scan_lock if kind in WRITING else None
        state, result, error = "failed", {}, None
        try:
            if lock is not None:
                await lock.acquire()
            try:
                if kind in WRITING and ctx.publisher is None:
                    raise ReadOnly("read_only", "this daemon does not write to the backup set")
                result = await self._run_waiting_for_grid(kind, ctx)
                state = "done"
            finally:
                if lock is not None:
                    lock.release()
        except JobStopped:
            jobstate.requeue(self.conn, job_id, json.dumps(ctx.progress))
            self.log.info("{kind} job {id} stopped; it resumes at the next start", kind=kind, id=job_id)
            return False
        except Exception as e:
            error = one_line(e)
            self.log.failure("{kind} job {id} failed", kind=kind, id=job_id)
        finally:
            self.current = self.current_kind = None
        jobstate.finish(self.conn, job_id, kind, state, self.wallclock(), error,
                    json.dumps(ctx.progress), json.dumps(result, default=str), keep=KEEP_RUNS)
        self.log.info("{kind} job {id}: {state}", kind=kind, id=job_id, state=state)
        self.waiters.fire(job_id, state)
        return True

    async def _run_waiting_for_grid(self, kind, ctx):
        """The job's run, again from its finished items while the grid is away."""
        wait = GridWait(self.reactor, lambda: ctx.client, self.grid_wait, _ProgressFields(ctx.progress),
                        ctx.check_stopping)
        return await wait.call(lambda client: RUNNERS[kind](self, ctx))

    def context(self, job_id, options=None):
        """What a job (or a dry run of one) sees of the daemon."""
        return attr.evolve(self.template, job_id=job_id, options=options or {}, progress={})

    # -- for the API -------------------------------------------------------------

    def job(self, job_id):
        row = jobstate.get(self.conn, job_id)
        if row is None:
            raise NotFound("unknown_job", f"no job {job_id!r}")
        return self._doc(row)

    def _doc(self, row):
        job_id, kind, state, requested, started, finished, options, progress, result, error = row
        if self.current is not None and self.current.job_id == job_id:
            progress = self.current.progress
        else:
            progress = json.loads(progress)
        return {"id": job_id, "kind": kind, "state": state, "requested": requested,
                "started": started, "finished": finished, "options": json.loads(options),
                "progress": progress, "result": json.loads(result), "error": error}

    def jobs(self, limit=50, kind=None):
        return [self._doc(r) for r in jobstate.recent(self.conn, limit, kind)]

    def status(self):
        """Per kind: running or not, its progress, the last finished run, when it is next due."""
        intervals = self.intervals()
        out = {}
        for kind in KINDS:
            last = jobstate.last_finished(self.conn, kind)
            interval = intervals.get(kind, 0)
            current = self.current if self.current_kind == kind else None
            out[kind] = {
                "running": current is not None,
                "progress": current.progress if current is not None else None,
                "last": ({"id": last[0], "state": last[1], "finished": last[2], "error": last[3]}
                         if last else None),
                "interval": interval or None,
                "next_due": (self.wallclock() + interval - self._since_requested(kind, interval)
                             if interval > 0 else None),
            }
        return out
