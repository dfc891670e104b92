"""
The lease renewal job: keep every object of the backup set alive.

Storage servers that expire leases delete a share whose leases have all
run out (31 days by default in Tahoe).  A ``t=check&add-lease=true`` on an
object renews our lease on each of its shares that the check finds (it adds
one where we had none): so the job runs it on everything reachable from the
root, and on nothing else, which lets unlinked (forgotten) objects expire.
"""

from twisted.logger import Logger

from gridbackupd.maintenance.reachable import for_each_reachable

__all__ = ["renew_leases"]

_log = Logger(namespace="gridbackupd.maintenance.leases")


async def renew_leases(ctx) -> dict:
    """
    Renew the lease of every object reachable from ``ctx.rootcap``.

    Options: ``parallel`` (objects at a time, default 8).  Progress:
    ``done``, ``total``, ``errors``, ``skipped``, ``resumed``.  The result:
    ``objects`` (reachable), ``renewed``, ``skipped`` (literal: no shares),
    ``resumed`` (renewed by an earlier, interrupted run of this job),
    ``unhealthy`` (renewed, but the check found the object not healthy:
    run check_and_repair), ``failed``, ``failures`` (up to 100 of ``{"name", "reason"}``) and
    ``failures_truncated``.
    """
    renewed = unhealthy = 0

    async def renew(obj):
        nonlocal renewed, unhealthy
        answer = await ctx.client.check(obj.cap, add_lease=True)
        # The lease is renewed on every share the check found, whatever its
        # health; an unhealthy object is counted, for check_and_repair.
        renewed += 1
        results = answer.get("results") if isinstance(answer, dict) else None
        if isinstance(results, dict) and results.get("healthy") is False:
            unhealthy += 1

    run = await for_each_reachable(ctx, renew)
    result = run.summary()
    result["renewed"] = renewed
    result["unhealthy"] = unhealthy
    _log.info("{job}: renewed {renewed} leases, {skipped} literal, {resumed} already done, "
              "{failed} failed", job=ctx.job_id, renewed=renewed, skipped=run.skipped,
              resumed=run.resumed, failed=run.failed)
    return result
