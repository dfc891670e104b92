"""
A file's history: every version of one path across the published
snapshots, from the change rows the scans stored (``state.changes``): an
index lookup, no log read.
"""

from gridbackupd.api import browse
from gridbackupd.api.http import Router
from gridbackupd.api.query import path_arg, query_arg
from gridbackupd.errors import Invalid
from gridbackupd.state import changes

router = Router()


@router.route("GET", "/v1/history")
async def history(daemon, request):
    path = path_arg(request)
    if path is None:
        raise Invalid("bad_request", "the query parameter path (or path_b64) is required")
    host = query_arg(request, "host") or None
    versions = []
    for snapshot_id, time, snap_host, complete, change, kind, size, mtime_ns in changes.history(
            daemon.conn, path, host):
        versions.append({"snapshot": snapshot_id, "time": time, "host": snap_host,
                         "complete": bool(complete), "change": change, "kind": kind,
                         "size": size, "mtime_ns": mtime_ns})
    uncounted = changes.uncounted(daemon.conn, host)
    if uncounted and daemon.figures is not None:
        daemon.figures.kick()
    doc = browse.path_doc(path)
    doc.update(host=host, versions=versions, uncounted=uncounted)
    return 200, doc
