"""
Everything reachable from a backup set's root cap, and a resumable,
bounded-parallel run of one operation over it: what lease renewal and
check/repair share.

The walk lists every directory it meets, not only the ones the layout
(docs/FORMAT.md "On-grid layout") names: a child we do not know is still
reachable, so it must be kept alive and checked like the rest.  Each object
is named by its path under the root (``/`` for the root itself), a name that
stays the same from run to run, so a resumed job can recognise the objects
it has finished.
"""

from __future__ import annotations

from collections import deque
from typing import cast

import attr
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridbackupd.grid.caps import is_literal, scrub_caps
from gridbackupd.maintenance.jobs import JobStopped
from gridbackupd.model import short_cap

__all__ = ["ROOT", "Reachable", "ReachableRun", "for_each_reachable", "walk"]

_log = Logger(namespace="gridbackupd.maintenance.reachable")

ROOT = "/"
# Failures kept (name and reason) in a job's result; the rest are only counted.
MAX_FAILURES_LISTED = 100
# Finished items are written to job_items this many at a time.
MARK_BATCH = 100
# Objects found and waiting to be processed before the walk waits for room.
HIGH_WATER = 1000


@attr.frozen
class Reachable:
    """
    One object reachable from the root: ``name`` is its path under the root
    (``/`` for the root), ``kind`` is ``"dirnode"``, ``"filenode"`` or
    ``"unknown"`` (as Tahoe lists it).
    """

    name: str
    cap: str | None = attr.field(repr=False)
    kind: str

    @property
    def literal(self) -> bool:
        return is_literal(self.cap)


def _child_name(parent: str, name: str) -> str:
    return name if parent == ROOT else f"{parent}/{name}"


async def walk(client, rootcap: str, visit, parallel: int = 8, on_error=None,
               check_stopping=None, throttle=None) -> int:
    """
    Call ``visit(obj)`` (synchronously) for every object reachable from
    ``rootcap``, the root first, each once (an object linked under two
    names is visited under the first found), as the listings come in; list
    at most ``parallel`` directories at a time.  Return how many objects
    were visited.

    A directory that cannot be listed is still visited; ``on_error(obj,
    exception)`` hears of it (without ``on_error`` the exception is
    raised once the walk is over).  ``check_stopping()`` is called before
    each listing; what it raises ends the walk.  ``throttle()``, if given,
    is awaited before each listing: a caller that cannot keep up with what
    is found holds the walk back that way.
    """
    semaphore = DeferredSemaphore(max(1, int(parallel)))
    seen = {rootcap}
    pending: deque[Deferred] = deque()
    errors: list[BaseException] = []
    visited = 0

    def found(obj):
        nonlocal visited
        visited += 1
        visit(obj)
        if obj.kind == "dirnode" and obj.cap is not None:
            pending.append(semaphore.run(lambda: Deferred.fromCoroutine(list_one(obj))))

    async def list_one(obj):
        if check_stopping is not None:
            check_stopping()
        if throttle is not None:
            await throttle()
        try:
            children = await client.list_dir(obj.cap)
        except Exception as e:
            if on_error is None:
                raise
            on_error(obj, e)
            return
        for name in sorted(children):
            child = children[name]
            caps = {c for c in (child.rw_uri, child.ro_uri) if c}
            if caps & seen:
                # Linked twice (a pack in two commits, a link back up):
                # visited once, under the name it was first found by.
                continue
            seen.update(caps)
            found(Reachable(_child_name(obj.name, name), child.cap, child.kind))

    found(Reachable(ROOT, rootcap, "dirnode"))
    # Listings add to ``pending`` while we wait: await until none is left,
    # every one of them, so that no failure goes unhandled.
    while pending:
        try:
            await pending.popleft()
        except BaseException as e:  # noqa: B902 (re-raised below)
            errors.append(e)
    _raise_first(errors)
    return visited


def _raise_first(errors):
    """Raise a JobStopped among ``errors`` if there is one, else the first error."""
    if errors:
        stops = [e for e in errors if isinstance(e, JobStopped)]
        raise (stops or errors)[0]


@attr.define(eq=False)
class ReachableRun:
    """
    The bookkeeping of one job run over the reachable objects: counts,
    failures (name and reason, never a cap) and the progress dict.
    """

    progress: dict
    total: int = 0
    done: int = 0
    skipped: int = 0
    resumed: int = 0
    failed: int = 0
    failures: list = attr.Factory(list)
    # Objects the job found wrong without failing to process them (an
    # unhealthy object): counted in the progress's ``errors`` too.
    problems: int = 0

    def fail(self, obj: Reachable, reason: str) -> None:
        """Record that ``obj`` failed (the reason must be cap-free: it is scrubbed again)."""
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_LISTED:
            self.failures.append({"name": obj.name, "reason": scrub_caps(reason)})
        self.update_progress()

    def update_progress(self) -> None:
        self.progress.update(
            done=self.done, total=self.total, errors=self.failed + self.problems,
            skipped=self.skipped, resumed=self.resumed,
        )

    def summary(self) -> dict:
        return {
            "objects": self.total,
            "skipped": self.skipped,
            "resumed": self.resumed,
            "failed": self.failed,
            "failures": list(self.failures),
            "failures_truncated": self.failed > len(self.failures),
        }


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return scrub_caps(f"{type(e).__name__}: {text}" if text else type(e).__name__)


async def for_each_reachable(ctx, process, parallel: int | None = None,
                             run: ReachableRun | None = None) -> ReachableRun:
    """
    Await ``process(obj)`` for every reachable object that has shares, at
    most ``parallel`` (default ``ctx.options["parallel"]``, 8) at a time,
    while the walk goes on.

    Resumable: objects in ``ctx.done_items()`` (finished by an interrupted
    run of this job) are not processed again (counted ``resumed``); a
    literal object is counted ``skipped``.  ``process`` returning True (or
    None) marks the object done, in batches of ``MARK_BATCH``; returning
    False leaves it to be processed again on resume; an exception is a
    failure of that object, recorded, and the run goes on.  ``JobStopped``
    ends the run (after marking what was finished).  ``run`` (made from
    ``ctx.progress`` if not given) keeps the counts.
    """
    if parallel is None:
        parallel = ctx.options.get("parallel", 8)
    parallel = max(1, int(parallel))
    if run is None:
        run = ReachableRun(ctx.progress)
    run.update_progress()
    already = ctx.done_items()
    to_mark: list[str] = []
    semaphore = DeferredSemaphore(parallel)
    # Objects found but not processed yet: past HIGH_WATER the walk waits.
    queued = 0
    room: list[Deferred] = []
    all_done: list[Deferred] = []
    errors: list[BaseException] = []

    def flush(force=False):
        if to_mark and (force or len(to_mark) >= MARK_BATCH):
            ctx.mark_done(list(to_mark))
            del to_mark[:]

    def finished(obj):
        run.done += 1
        to_mark.append(obj.name)
        flush()
        run.update_progress()

    async def one(obj):
        ctx.check_stopping()
        try:
            ok = await process(obj)
        except JobStopped:
            raise
        except Exception as e:
            _log.warn("{job}: {name} failed: {reason}", job=ctx.job_id, name=obj.name,
                      reason=_reason(e))
            run.fail(obj, _reason(e))
            return
        if ok is False:
            run.done += 1
            run.update_progress()
        else:
            finished(obj)

    def one_over(outcome):
        nonlocal queued
        queued -= 1
        if isinstance(outcome, Failure):
            errors.append(cast(BaseException, outcome.value))
        if queued <= HIGH_WATER // 2:
            waiting, room[:] = list(room), []
            for d in waiting:
                d.callback(None)
        if queued == 0:
            waiting, all_done[:] = list(all_done), []
            for d in waiting:
                d.callback(None)

    def throttle():
        if queued < HIGH_WATER:
            return succeed(None)
        d: Deferred[None] = Deferred()
        room.append(d)
        return d

    def visit(obj):
        nonlocal queued
        run.total += 1
        if obj.name in already:
            run.resumed += 1
            run.done += 1
        elif obj.cap is None:
            run.fail(obj, f"no cap for this {obj.kind} child")
        elif obj.literal:
            run.skipped += 1
            finished(obj)
        else:
            queued += 1
            semaphore.run(lambda: Deferred.fromCoroutine(one(obj))).addBoth(one_over)
        run.update_progress()

    def listing_failed(obj, e):
        if isinstance(e, JobStopped):
            raise e
        run.fail(obj, "listing its children failed: " + _reason(e))

    try:
        await walk(ctx.client, ctx.rootcap, visit, parallel, listing_failed, ctx.check_stopping,
                   throttle)
    except BaseException as e:  # noqa: B902 (re-raised below)
        errors.append(e)
    if queued:
        d: Deferred[None] = Deferred()
        all_done.append(d)
        await d
    flush(force=True)
    run.update_progress()
    _raise_first(errors)
    _log.info("{job}: {n} reachable objects under {root}", job=ctx.job_id, n=run.total,
              root=short_cap(ctx.rootcap))
    return run
