"""Maintenance: forget snapshots (by the retention policy or by name), and run or follow jobs."""

from gridbackupd.api.http import Router
from gridbackupd.api.query import bool_field, json_body, query_arg, query_int
from gridbackupd.errors import Conflict, Invalid, Unavailable

router = Router()


def _maintenance(daemon):
    daemon.require_ready()
    if daemon.maintenance is None:
        raise Unavailable("starting", "maintenance starts once the grid is connected")
    return daemon.maintenance


_FORGET_KEYS = {"snapshots", "dry_run", "prune"}


@router.route("POST", "/v1/forget")
async def forget_snapshots(daemon, request):
    """Forget by the retention policy, or the snapshots named; a dry run says what would go."""
    from gridbackupd.maintenance.forget import plan_forget
    from gridbackupd.maintenance.prune import dry_run as prune_dry_run

    maintenance = _maintenance(daemon)
    daemon.require_writable()
    doc = json_body(request, _FORGET_KEYS)
    ids = doc.get("snapshots")
    if ids is not None and (not isinstance(ids, list) or not ids
                            or not all(isinstance(i, str) and i for i in ids)):
        raise Invalid("bad_request", "snapshots must be a non-empty list of snapshot ids")
    dry_run, prune = bool_field(doc, "dry_run"), bool_field(doc, "prune", True)
    policy = daemon.config.retention.policy()
    if ids is None and policy.empty:
        raise Conflict("no_policy",
                       "no retention policy is configured ([retention] keep_*): name the "
                       "snapshots to forget")
    plan = plan_forget(daemon.conn, policy, ids)
    if plan.refused:
        first = plan.refused[0]
        raise Conflict("cannot_forget", f"cannot forget {first[0]}: {first[1]}")
    answer = {"policy": policy.describe() if ids is None else None, **plan.as_dict(daemon.conn)}
    if dry_run:
        if prune:
            answer["prune"] = await prune_dry_run(
                maintenance.context("dry-run"), daemon.config.retention.repack_threshold,
                plan.forget)
        return 200, {"dry_run": True, **answer}
    options = {"prune": prune}
    if ids is not None:
        options["snapshots"] = plan.forget
    job_id = maintenance.request("forget", options)
    return 202, {"dry_run": False, "job": maintenance.job(job_id), **answer}


_JOB_KEYS = {"kind", "options"}


@router.route("POST", "/v1/jobs")
async def start_job(daemon, request):
    maintenance = _maintenance(daemon)
    doc = json_body(request, _JOB_KEYS)
    options = doc.get("options", {})
    if not isinstance(options, dict):
        raise Invalid("bad_request", "options must be a JSON object")
    kind = doc.get("kind")
    if kind == "forget":
        raise Invalid("bad_request", "use POST /v1/forget to forget snapshots")
    job_id = maintenance.request(kind, _check_job_options(kind, options))
    return 202, maintenance.job(job_id)


_JOB_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "leases": {"parallel": int},
    "check": {"parallel": int, "verify_fraction": (int, float), "repair": bool},
    "drill": {"files": int, "snapshot": str},
    "prune": {},
}


def _check_job_options(kind, options):
    allowed = _JOB_OPTIONS.get(kind)
    if allowed is None:
        raise Invalid("bad_request",
                      f"kind must be one of {sorted(_JOB_OPTIONS)}, got {kind!r}")
    for key, value in options.items():
        types = allowed.get(key)
        if types is None:
            raise Invalid("bad_request",
                          f"unknown option {key!r} for {kind}; allowed: {sorted(allowed)}")
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise Invalid("bad_request", f"option {key} has the wrong type: {value!r}")
    if not 1 <= options.get("parallel", 1) <= 64:
        raise Invalid("bad_request", "parallel must be from 1 to 64")
    if not 0 <= options.get("verify_fraction", 0) <= 1:
        raise Invalid("bad_request", "verify_fraction must be from 0 to 1")
    if not 1 <= options.get("files", 1) <= 100000:
        raise Invalid("bad_request", "files must be from 1 to 100000")
    return options


@router.route("GET", "/v1/jobs")
async def list_jobs(daemon, request):
    maintenance = _maintenance(daemon)
    limit = query_int(request, "limit", 50, 1, 1000)
    kind = query_arg(request, "kind")
    return 200, {"jobs": maintenance.jobs(limit, kind)}


@router.route("GET", "/v1/jobs/{job_id}")
async def get_job(daemon, request, job_id):
    return 200, _maintenance(daemon).job(job_id)
