"""
The API's endpoints: what each one accepts and answers.

Handlers read the daemon's parts (``daemon.conn``, ``daemon.jobs``,
``daemon.uploader``, ``daemon.restorer``) and never block: every query here
is a short SQLite read, and long work is only queued.
"""

import collections
import itertools
import json
import os
import time

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from gridbackupd.api import browse, metrics
from gridbackupd.api.http import STREAMED, Pacer, Raw, Router, bool_field, json_body, query_arg, query_int
from gridbackupd.errors import APIError, TahoeError
from gridbackupd.format.log import LogFormatError
from gridbackupd.model import FILE
from gridbackupd.restore.requests import check_snapshot_spec
from gridbackupd.state.blobs import locate

PAGE = 1000
MAX_PAGE = 10000
CONTENT_AHEAD = 4

router = Router()


def _snapshot_summary(row):
    (snapshot_id, state, kind, host, requested, started, finished, files, nbytes, errors,
     complete) = row
    return {
        "id": snapshot_id,
        "state": state,
        "kind": kind,
        "host": host,
        "time": started or requested,
        "requested": requested,
        "started": started,
        "finished": finished,
        "files": files,
        "bytes": nbytes,
        "errors": len(json.loads(errors)),
        "complete": bool(complete),
    }


_SUMMARY = ("id, state, kind, host, requested, started, finished, files, bytes, errors, complete")


@router.route("GET", "/v1/status")
async def status(daemon, request):
    last = daemon.conn.execute(
        f"SELECT {_SUMMARY} FROM snapshots WHERE complete = 1 ORDER BY id DESC LIMIT 1"
    ).fetchone()
    last_doc = _snapshot_summary(last) if last else None
    if last_doc:
        last_doc["age_seconds"] = round(time.time() - (last_doc["finished"] or last_doc["time"]), 1)
    return 200, {
        "state": daemon.state,
        "scan": daemon.jobs.status() if daemon.jobs else {"running": False},
        "upload": daemon.uploader.status() if daemon.uploader else None,
        "last_snapshot": last_doc,
        "grid": daemon.grid_status(),
        "recovery": daemon.recovery,
        "maintenance": daemon.maintenance.status() if daemon.maintenance else None,
    }


@router.route("POST", "/v1/backups")
async def start_backup(daemon, request):
    daemon.require_writable()
    snapshot_id = daemon.jobs.request()
    return 202, {"id": snapshot_id}


@router.route("GET", "/v1/snapshots")
async def list_snapshots(daemon, request):
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    after = query_arg(request, "cursor", "")
    rows = daemon.conn.execute(
        f"SELECT {_SUMMARY} FROM snapshots WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1)
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return 200, {"snapshots": [_snapshot_summary(r) for r in rows],
                 "next_cursor": rows[-1][0] if more else None}


@router.route("GET", "/v1/snapshots/{snapshot_id}")
async def get_snapshot(daemon, request, snapshot_id):
    row = daemon.conn.execute(
        f"SELECT {_SUMMARY}, paths, tags, errors FROM snapshots WHERE id = ?", (snapshot_id,)
    ).fetchone()
    if row is None:
        raise APIError(404, "unknown_snapshot", f"no snapshot {snapshot_id!r}")
    doc = _snapshot_summary(row[:11])
    doc["paths"] = json.loads(row[11])
    doc["tags"] = json.loads(row[12])
    doc["errors"] = json.loads(row[13])
    doc["error_count"] = len(doc["errors"])
    if daemon.jobs and daemon.jobs.current == snapshot_id:
        doc["progress"] = daemon.jobs.status()
    doc["figures"] = await _figures(daemon, snapshot_id, doc)
    return 200, doc


_FIGURES_CACHE = {}


async def _result_or_error(coro):
    try:
        return await coro
    except Exception as e:
        return e


def _shared(d):
    """A Deferred with d's result (d never fails) that leaves it in place for the next waiter."""
    result = Deferred()
    d.addCallback(lambda r: result.callback(r) or r)
    return result


async def _reading(daemon, fn, *args):
    """Run a log-reading function of browse.py in a worker thread; a bad log is a JSON 500."""
    try:
        return await deferToThreadPool(daemon.reactor, daemon.pool, fn, *args)
    except LogFormatError as e:
        raise APIError(500, "log_unreadable", f"a backup log cannot be read: {e}")


async def _figures(daemon, snapshot_id, doc):
    """Files and bytes added, changed and deleted since the snapshot before (None: no log yet)."""
    if doc["state"] in ("queued", "scanning", "failed"):
        return None
    parent = daemon.conn.execute(
        "SELECT id FROM snapshots WHERE id < ? AND host = ? AND log_path IS NOT NULL "
        "AND state NOT IN ('queued', 'scanning', 'failed') ORDER BY id DESC LIMIT 1",
        (snapshot_id, doc["host"]),
    ).fetchone()
    parent = parent[0] if parent else None
    key = (daemon.config.state_dir, parent, snapshot_id)
    cached = _FIGURES_CACHE.get(key)
    if cached is None:
        try:
            logs = browse.log_chain(daemon.conn, snapshot_id)
            parent_logs = browse.log_chain(daemon.conn, parent) if parent else None
        except APIError:
            return None
        if len(_FIGURES_CACHE) > 256:
            _FIGURES_CACHE.clear()
        # Requests that come while the logs are read wait for the same reading.
        cached = _FIGURES_CACHE[key] = Deferred.fromCoroutine(
            _result_or_error(_reading(daemon, browse.figures, parent_logs, logs)))
    counts = await _shared(cached)
    if isinstance(counts, Exception):
        # The snapshot is still worth showing without its figures.
        _FIGURES_CACHE.pop(key, None)
        return None
    result = dict(counts, parent=parent)
    result["errors"] = doc["error_count"]
    return result


@router.route("GET", "/v1/snapshots/{snapshot_id}/files")
async def list_files(daemon, request, snapshot_id):
    top = browse.path_arg(request) or b"/"
    recursive = query_arg(request, "recursive", "false")
    if recursive not in ("true", "false", "1", "0"):
        raise APIError(400, "bad_request", f"recursive must be true or false, got {recursive!r}")
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    cursor = browse.decode_cursor(query_arg(request, "cursor"))
    snapshot_id = browse.resolve(daemon.conn, snapshot_id)
    logs = browse.log_chain(daemon.conn, snapshot_id)
    top_entry, found, next_cursor = await _reading(
        daemon, browse.list_entries,
        logs, top, recursive in ("true", "1"), cursor, limit)
    if top_entry is None and top != b"/" and not found and cursor is None:
        if not await _reading(daemon, browse.has_below, logs, top):
            raise APIError(404, "unknown_path", f"{os.fsdecode(top)!r} is not in snapshot {snapshot_id}")
    doc = {"snapshot": snapshot_id, "entry": browse.entry_doc(top_entry) if top_entry else None,
           "entries": found, "next_cursor": next_cursor}
    doc.update(browse.path_doc(top))
    return 200, doc


@router.route("GET", "/v1/snapshots/{snapshot_id}/content")
async def get_content(daemon, request, snapshot_id):
    path = browse.path_arg(request)
    if path is None:
        raise APIError(400, "bad_request", "the query parameter path (or path_b64) is required")
    snapshot_id = browse.resolve(daemon.conn, snapshot_id)
    logs = browse.log_chain(daemon.conn, snapshot_id)
    entry = await _reading(daemon, browse.find_entry, logs, path)
    if entry is None:
        raise APIError(404, "unknown_path", f"{os.fsdecode(path)!r} is not in snapshot {snapshot_id}")
    if entry.kind != FILE:
        raise APIError(400, "not_a_file", f"{os.fsdecode(path)!r} is a {entry.kind}, not a file")
    if entry.inline is not None or entry.size == 0:
        return 200, Raw(entry.inline or b"", "application/octet-stream")
    # Where each blob is (restore.locate): (pack cap, offset, length,
    # compression), the bytes the index holds inline, or None.
    locations = []
    for blob_hash, size in entry.blobs:
        location = locate(daemon.conn, blob_hash)
        if location is None:
            raise APIError(409, "not_uploaded",
                           f"the content of {os.fsdecode(path)!r} is not on the grid yet")
        locations.append((blob_hash, size, location))
    client = daemon._client()
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"content-length", str(entry.size).encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    pacer = Pacer(request)

    async def fetch(run):
        """One run's blobs, checked, in file order."""
        if run.cap is None:
            stored, start = run.inline, 0
        else:
            start = run.start
            try:
                stored = await client.download(run.cap, run.start, run.end - run.start)
            except TahoeError as e:
                # A JSON 502 if nothing was sent yet; else the connection drops.
                raise APIError(502, "grid_error", f"cannot fetch the content from the grid: {e}")
        try:
            return await deferToThreadPool(daemon.reactor, daemon.pool, browse.decode_run, run, stored, start)
        except (browse.CorruptContent, ValueError) as e:
            raise APIError(502, "corrupt_content", f"{os.fsdecode(path)!r}: {e}")

    # Up to CONTENT_AHEAD runs are fetched while the one before is written:
    # the grid's latency overlaps, and memory stays at a few runs.
    runs = iter(browse.content_runs(locations))
    ahead = collections.deque()
    try:
        for run in itertools.islice(runs, CONTENT_AHEAD):
            ahead.append(Deferred.fromCoroutine(fetch(run)))
        while ahead:
            data = await ahead.popleft()
            for run in itertools.islice(runs, 1):
                ahead.append(Deferred.fromCoroutine(fetch(run)))
            await pacer.write(data)
    finally:
        for d in ahead:
            d.addErrback(lambda f: None)
            d.cancel()
    pacer.finish()
    return STREAMED


async def _diff(daemon, request, a, b):
    top = browse.path_arg(request) or b"/"
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    cursor = browse.decode_cursor(query_arg(request, "cursor"))
    a = browse.resolve(daemon.conn, a)
    b = browse.resolve(daemon.conn, b)
    logs_a = browse.log_chain(daemon.conn, a)
    logs_b = browse.log_chain(daemon.conn, b)
    changes, next_cursor = await _reading(
        daemon, browse.diff, logs_a, logs_b, top, cursor, limit)
    return 200, {"from": a, "to": b, "changes": changes, "next_cursor": next_cursor}


@router.route("GET", "/v1/snapshots/{a}/diff/{b}")
async def diff_snapshots(daemon, request, a, b):
    return await _diff(daemon, request, a, b)


@router.route("GET", "/v1/diff")
async def diff_query(daemon, request):
    a, b = query_arg(request, "from"), query_arg(request, "to")
    if not a or not b:
        raise APIError(400, "bad_request", "both from and to (snapshot ids or 'latest') are required")
    return await _diff(daemon, request, a, b)


@router.route("GET", "/metrics")
async def get_metrics(daemon, request):
    registry = getattr(daemon, "_metrics_registry", None)
    if registry is None:
        registry = daemon._metrics_registry = metrics.registry_for(daemon)
    return 200, Raw(metrics.render(registry), metrics.CONTENT_TYPE)


_RESTORE_KEYS = {"snapshot", "paths", "target", "overwrite", "dry_run", "verify"}


def _check_path(value, what):
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise APIError(400, "bad_request", f"{what} must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise APIError(400, "bad_request", f"{what} must not contain '..': {value!r}")
    return os.path.normpath(value)


@router.route("POST", "/v1/restores")
async def start_restore(daemon, request):
    doc = json_body(request, _RESTORE_KEYS)
    snapshot = check_snapshot_spec(doc.get("snapshot", "latest"))
    if "target" not in doc:
        raise APIError(400, "bad_request", "target (an absolute directory) is required")
    target = _check_path(doc["target"], "target")
    paths = doc.get("paths", [])
    if not isinstance(paths, list):
        raise APIError(400, "bad_request", "paths must be a list of absolute paths")
    paths = [_check_path(p, "each path") for p in paths]
    flags = {key: bool_field(doc, key) for key in ("overwrite", "dry_run", "verify")}
    restore_id = daemon.restorer.request(snapshot, paths, target, **flags)
    return 202, {"id": restore_id}


@router.route("GET", "/v1/restores")
async def list_restores(daemon, request):
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    after = query_arg(request, "cursor")
    if after is None:
        rows = daemon.conn.execute(
            "SELECT id FROM restores ORDER BY created, id LIMIT ?", (limit + 1,)).fetchall()
    else:
        rows = daemon.conn.execute(
            "SELECT id FROM restores WHERE (created, id) > "
            "(SELECT created, id FROM restores WHERE id = ?) ORDER BY created, id LIMIT ?",
            (after, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return 200, {"restores": [daemon.restorer.status(r[0]) for r in rows],
                 "next_cursor": rows[-1][0] if more else None}


@router.route("GET", "/v1/restores/{restore_id}")
async def get_restore(daemon, request, restore_id):
    return 200, daemon.restorer.status(restore_id)


@router.route("DELETE", "/v1/restores/{restore_id}")
async def cancel_restore(daemon, request, restore_id):
    return 200, daemon.restorer.cancel(restore_id)


# -- the upload queue (issue 4) ---------------------------------------------------

def _uploader(daemon):
    if daemon.read_only:
        daemon.require_writable()  # a 403 that says why
    if daemon.uploader is None:
        raise APIError(503, "starting", "the uploader starts once the grid is connected")
    return daemon.uploader


@router.route("GET", "/v1/uploads/queue")
async def upload_queue(daemon, request):
    from gridbackupd.state import queue

    uploader = _uploader(daemon)
    limit = query_int(request, "limit", 20, 1, 1000)
    head = queue.head(daemon.conn, limit)
    blobs, nbytes = queue.pending_totals(daemon.conn)
    return 200, {
        "paused": uploader.paused,
        "pending_blobs": blobs,
        "pending_bytes": nbytes,
        "next": [
            {**browse.path_doc(h.path), "offset": h.offset, "size": h.size,
             "mtime": h.mtime_ns / 1e9 if h.mtime_ns is not None else None,
             "priority": round(h.priority, 3), "queued": h.queued, "hash": h.hash}
            for h in head
        ],
    }


@router.route("POST", "/v1/uploads/pause")
async def pause_uploads(daemon, request):
    uploader = _uploader(daemon)
    uploader.pause()
    return 200, {"paused": True, "in_flight_packs": uploader.packs_in_flight}


@router.route("POST", "/v1/uploads/resume")
async def resume_uploads(daemon, request):
    uploader = _uploader(daemon)
    uploader.resume()
    return 200, {"paused": False}


@router.route("POST", "/v1/uploads/take-over")
async def take_over_writer_lock(daemon, request):
    """Take the backup set's writer lock from a machine known to be gone."""
    uploader = _uploader(daemon)
    previous = await uploader.publisher.take_over()
    uploader.wake()
    return 200, {"taken_from": previous}


# -- maintenance: forget and prune, leases, check, drills (issue 7) ------------------

def _maintenance(daemon):
    daemon.require_ready()
    if daemon.maintenance is None:
        raise APIError(503, "starting", "maintenance starts once the grid is connected")
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
        raise APIError(400, "bad_request", "snapshots must be a non-empty list of snapshot ids")
    dry_run, prune = bool_field(doc, "dry_run"), bool_field(doc, "prune", True)
    policy = daemon.config.retention.policy()
    if ids is None and policy.empty:
        raise APIError(409, "no_policy",
                       "no retention policy is configured ([retention] keep_*): name the "
                       "snapshots to forget")
    plan = plan_forget(daemon.conn, policy, ids)
    if plan.refused:
        first = plan.refused[0]
        raise APIError(409, "cannot_forget", f"cannot forget {first[0]}: {first[1]}")
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
        raise APIError(400, "bad_request", "options must be a JSON object")
    kind = doc.get("kind")
    if kind == "forget":
        raise APIError(400, "bad_request", "use POST /v1/forget to forget snapshots")
    job_id = maintenance.request(kind, _check_job_options(kind, options))
    return 202, maintenance.job(job_id)


_JOB_OPTIONS = {
    "leases": {"parallel": int},
    "check": {"parallel": int, "verify_fraction": (int, float), "repair": bool},
    "drill": {"files": int, "snapshot": str},
    "prune": {},
}


def _check_job_options(kind, options):
    allowed = _JOB_OPTIONS.get(kind)
    if allowed is None:
        raise APIError(400, "bad_request",
                       f"kind must be one of {sorted(_JOB_OPTIONS)}, got {kind!r}")
    for key, value in options.items():
        types = allowed.get(key)
        if types is None:
            raise APIError(400, "bad_request",
                           f"unknown option {key!r} for {kind}; allowed: {sorted(allowed)}")
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise APIError(400, "bad_request", f"option {key} has the wrong type: {value!r}")
    if not 1 <= options.get("parallel", 1) <= 64:
        raise APIError(400, "bad_request", "parallel must be from 1 to 64")
    if not 0 <= options.get("verify_fraction", 0) <= 1:
        raise APIError(400, "bad_request", "verify_fraction must be from 0 to 1")
    if not 1 <= options.get("files", 1) <= 100000:
        raise APIError(400, "bad_request", "files must be from 1 to 100000")
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
