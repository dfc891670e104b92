"""
The API's endpoints: what each one accepts and answers.

Handlers read the daemon's parts (``daemon.conn``, ``daemon.jobs``,
``daemon.uploader``, ``daemon.restorer``) and never block: every query here
is a short SQLite read, and long work is only queued.
"""

import json
import os
import time

from .api import Router, json_body
from .errors import APIError

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
    }


@router.route("POST", "/v1/backups")
async def start_backup(daemon, request):
    daemon.require_ready()
    snapshot_id = daemon.jobs.request()
    return 202, {"id": snapshot_id}


@router.route("GET", "/v1/snapshots")
async def list_snapshots(daemon, request):
    rows = daemon.conn.execute(f"SELECT {_SUMMARY} FROM snapshots ORDER BY id").fetchall()
    return 200, {"snapshots": [_snapshot_summary(r) for r in rows]}


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
    return 200, doc


_RESTORE_KEYS = {"snapshot", "paths", "target", "overwrite"}


def _check_path(value, what):
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise APIError(400, "bad_request", f"{what} must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise APIError(400, "bad_request", f"{what} must not contain '..': {value!r}")
    return os.path.normpath(value)


@router.route("POST", "/v1/restores")
async def start_restore(daemon, request):
    doc = json_body(request)
    unknown = set(doc) - _RESTORE_KEYS
    if unknown:
        raise APIError(400, "bad_request",
                       f"unknown fields {sorted(unknown)}; allowed: {sorted(_RESTORE_KEYS)}")
    snapshot = doc.get("snapshot", "latest")
    if not isinstance(snapshot, str) or not snapshot:
        raise APIError(400, "bad_request", "snapshot must be 'latest' or a snapshot id")
    if "target" not in doc:
        raise APIError(400, "bad_request", "target (an absolute directory) is required")
    target = _check_path(doc["target"], "target")
    paths = doc.get("paths", [])
    if not isinstance(paths, list):
        raise APIError(400, "bad_request", "paths must be a list of absolute paths")
    paths = [_check_path(p, "each path") for p in paths]
    overwrite = doc.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise APIError(400, "bad_request", "overwrite must be true or false")
    restore_id = daemon.restorer.request(snapshot, paths, target, overwrite)
    return 202, {"id": restore_id}


@router.route("GET", "/v1/restores")
async def list_restores(daemon, request):
    rows = daemon.conn.execute("SELECT id FROM restores ORDER BY created").fetchall()
    return 200, {"restores": [daemon.restorer.status(r[0]) for r in rows]}


@router.route("GET", "/v1/restores/{restore_id}")
async def get_restore(daemon, request, restore_id):
    return 200, daemon.restorer.status(restore_id)
