"""Restores: start one (of ``latest``, an id or a time), list them, follow one, cancel one."""

import os

from twisted.internet.threads import deferToThreadPool

from gridbackupd.api import browse
from gridbackupd.api.errors import APIError
from gridbackupd.api.http import Router
from gridbackupd.api.query import MAX_PAGE, PAGE, bool_field, json_body, query_arg, query_int
from gridbackupd.errors import Conflict, Invalid, NotFound
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.state import restores, snapshots

router = Router()

_RESTORE_KEYS = {"snapshot", "paths", "target", "overwrite", "dry_run", "verify"}


def _check_path(value, what):
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise Invalid("bad_request", f"{what} must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise Invalid("bad_request", f"{what} must not contain '..': {value!r}")
    return os.path.normpath(value)


@router.route("POST", "/v1/restores")
async def start_restore(daemon, request):
    doc = json_body(request, _RESTORE_KEYS)
    snapshot = snapshots.check_spec(doc.get("snapshot", "latest"))
    if "target" not in doc:
        raise Invalid("bad_request", "target (an absolute directory) is required")
    target = _check_path(doc["target"], "target")
    paths = doc.get("paths", [])
    if not isinstance(paths, list):
        raise Invalid("bad_request", "paths must be a list of absolute paths")
    paths = [_check_path(p, "each path") for p in paths]
    flags = {key: bool_field(doc, key) for key in ("overwrite", "dry_run", "verify")}
    if paths:
        await _check_paths_exist(daemon, snapshot, paths)
    restore_id = daemon.restorer.request(snapshot, paths, target, **flags)
    return 202, {"id": restore_id}


async def _check_paths_exist(daemon, spec, paths):
    """
    Refuse (404 unknown_path, naming them) paths the snapshot has nothing at,
    before the restore is queued: a typo must not "succeed" with 0 files.
    A log that is not on this machine is not fetched here; the restore
    itself reads it from the grid.
    """
    snapshot_id, _, _ = daemon.restorer.resolve_snapshot(spec)
    try:
        logs = browse.log_chain(daemon.conn, snapshot_id)
        missing = await deferToThreadPool(daemon.reactor, daemon.pool, browse.missing_paths,
                                          logs, [os.fsencode(p) for p in paths])
    except (Conflict, LogFormatError, APIError):
        return
    if missing:
        # As the request named them (a JSON string may carry surrogate escapes).
        shown = [p for p in dict.fromkeys(paths) if os.fsencode(p) in set(missing)]
        listed = ", ".join(shown[:10]) + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")
        raise NotFound("unknown_path", f"not in snapshot {snapshot_id}: {listed}", paths=shown)


@router.route("GET", "/v1/restores")
async def list_restores(daemon, request):
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    after = query_arg(request, "cursor")
    ids = restores.ids_after(daemon.conn, after, limit + 1)
    more = len(ids) > limit
    ids = ids[:limit]
    return 200, {"restores": [daemon.restorer.status(i) for i in ids],
                 "next_cursor": ids[-1] if more else None}


@router.route("GET", "/v1/restores/{restore_id}")
async def get_restore(daemon, request, restore_id):
    return 200, daemon.restorer.status(restore_id)


@router.route("DELETE", "/v1/restores/{restore_id}")
async def cancel_restore(daemon, request, restore_id):
    return 200, daemon.restorer.cancel(restore_id)
