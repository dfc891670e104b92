"""
The snapshots: the list and one snapshot with their figures (stored by
the scan: no log is read), its files, one file's content (streamed from
the grid) and the difference of two.

Every ``{snapshot_id}`` may be ``latest``: ``state.snapshots.resolve``
picks it, as it does for a restore.  Reading a log runs in a worker thread
(``reading``); the database reads here are short and run on the reactor.
"""

import collections
import itertools
import json

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from gridbackupd.api import browse
from gridbackupd.api.errors import APIError, failure_answer
from gridbackupd.api.http import STREAMED, Pacer, Raw, Router
from gridbackupd.api.query import MAX_PAGE, PAGE, path_arg, query_arg, query_int
from gridbackupd.errors import Conflict, Invalid, NotFound, TahoeError
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logpaths import shown
from gridbackupd.model import FILE
from gridbackupd.restore.gridwait import GridWait
from gridbackupd.state import changes, snapshots
from gridbackupd.state.blobs import locate

CONTENT_AHEAD = 4


class _ReadProgress:
    """Where a content read's grid wait notes that it waits (no one polls a read)."""

    waiting_for = None
    waiting_since = None

router = Router()


def summary_doc(row):
    """A snapshot's summary row (``snapshots.SUMMARY``) as the API shows it."""
    doc = dict(zip(snapshots.SUMMARY, row))
    doc["time"] = doc["started"] or doc["requested"]
    doc["errors"] = len(json.loads(doc["errors"]))
    doc["complete"] = bool(doc["complete"])
    return doc


def resolve(daemon, spec):
    """The snapshot id that ``latest`` or an id means on this daemon's host."""
    return snapshots.resolve(daemon.conn, spec, daemon.config.hostname)


@router.route("GET", "/v1/snapshots")
async def list_snapshots(daemon, request):
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    after = query_arg(request, "cursor", "")
    rows = snapshots.summaries(daemon.conn, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    docs = [summary_doc(r) for r in rows]
    stored = changes.figures_of(daemon.conn, (d["id"] for d in docs))
    for doc in docs:
        doc["figures"] = _figures(daemon, stored.get(doc["id"]), doc)
    return 200, {"snapshots": docs,
                 "next_cursor": rows[-1][0] if more else None}


@router.route("GET", "/v1/snapshots/{snapshot_id}")
async def get_snapshot(daemon, request, snapshot_id):
    snapshot_id = resolve(daemon, snapshot_id)
    row = snapshots.detail(daemon.conn, snapshot_id)
    if row is None:
        raise NotFound("unknown_snapshot", f"no snapshot {snapshot_id!r}")
    n = len(snapshots.SUMMARY)
    doc = summary_doc(row[:n])
    paths, tags, errors = row[n:]
    doc["paths"] = json.loads(paths)
    doc["tags"] = json.loads(tags)
    doc["errors"] = json.loads(errors)
    doc["error_count"] = len(doc["errors"])
    if daemon.jobs and daemon.jobs.current == snapshot_id:
        doc["progress"] = daemon.jobs.status()
    doc["figures"] = _figures(daemon, changes.figures(daemon.conn, snapshot_id), doc)
    return 200, doc


async def _reading(daemon, fn, *args):
    """Run a log-reading function of browse.py in a worker thread; a bad log is a JSON 500."""
    try:
        return await deferToThreadPool(daemon.reactor, daemon.pool, fn, *args)
    except LogFormatError as e:
        raise failure_answer(e) from e


def _figures(daemon, stored, doc):
    """
    Files, entries and bytes added, changed and deleted since the snapshot
    before, as stored (``state.changes``): None until scanned, and for a
    snapshot whose figures are still to be computed (which this asks for).
    """
    if stored is None:
        if doc["state"] in changes.SCANNED and daemon.figures is not None:
            daemon.figures.kick()
        return None
    return dict(stored, errors=doc["errors"] if isinstance(doc["errors"], int) else len(doc["errors"]))


@router.route("GET", "/v1/snapshots/{snapshot_id}/files")
async def list_files(daemon, request, snapshot_id):
    top = path_arg(request) or b"/"
    recursive = query_arg(request, "recursive", "false")
    if recursive not in ("true", "false", "1", "0"):
        raise Invalid("bad_request", f"recursive must be true or false, got {recursive!r}")
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    cursor = browse.decode_cursor(query_arg(request, "cursor"))
    snapshot_id = resolve(daemon, snapshot_id)
    logs = browse.log_chain(daemon.conn, snapshot_id)
    top_entry, found, next_cursor = await _reading(
        daemon, browse.list_entries,
        logs, top, recursive in ("true", "1"), cursor, limit)
    if top_entry is None and top != b"/" and not found and cursor is None:
        if not await _reading(daemon, browse.has_below, logs, top):
            raise NotFound("unknown_path", f"{shown(top)} is not in snapshot {snapshot_id}")
    doc = {"snapshot": snapshot_id, "entry": browse.entry_doc(top_entry) if top_entry else None,
           "entries": found, "next_cursor": next_cursor}
    doc.update(browse.path_doc(top))
    return 200, doc


@router.route("GET", "/v1/snapshots/{snapshot_id}/content")
async def get_content(daemon, request, snapshot_id):
    path = path_arg(request)
    if path is None:
        raise Invalid("bad_request", "the query parameter path (or path_b64) is required")
    snapshot_id = resolve(daemon, snapshot_id)
    logs = browse.log_chain(daemon.conn, snapshot_id)
    entry = await _reading(daemon, browse.find_entry, logs, path)
    if entry is None:
        raise NotFound("unknown_path", f"{shown(path)} is not in snapshot {snapshot_id}")
    if entry.kind != FILE:
        raise Invalid("not_a_file", f"{shown(path)} is a {entry.kind}, not a file")
    if entry.inline is not None or entry.size == 0:
        return 200, Raw(entry.inline or b"", "application/octet-stream")
    # Where each blob is (restore.locate): (pack cap, offset, length,
    # compression), the bytes the index holds inline, or None.
    locations = []
    for blob_hash, size in entry.blobs:
        location = locate(daemon.conn, blob_hash)
        if location is None:
            raise Conflict("not_uploaded",
                           f"the content of {shown(path)} is not on the grid yet")
        locations.append((blob_hash, size, location))
    # While the grid is away (the daemon connecting, the node restarting) the
    # read waits for it, up to [tahoe] grid_wait, then answers 503.
    grid = GridWait(daemon.reactor, daemon._client, daemon.config.tahoe.grid_wait, _ReadProgress())

    async def fetch(run):
        """One run's blobs, checked, in file order."""
        if run.cap is None:
            stored, start = run.inline, 0
        else:
            start = run.start
            try:
                stored = await grid.call(lambda client: client.download(run.cap, run.start, run.end - run.start))
            except TahoeError as e:
                # A JSON 502 if nothing was sent yet; else the connection drops.
                raise failure_answer(e) from e
        try:
            return await deferToThreadPool(daemon.reactor, daemon.pool, browse.decode_run, run, stored, start)
        except (browse.CorruptContent, ValueError) as e:
            raise APIError(502, "corrupt_content", f"{shown(path)}: {e}")

    # Up to CONTENT_AHEAD runs are fetched while the one before is written:
    # the grid's latency overlaps, and memory stays at a few runs.  The
    # answer starts with the first run in hand, so that a grid that is away
    # or a bad first run is still a JSON error.
    runs = iter(browse.content_runs(locations))
    ahead: collections.deque[Deferred] = collections.deque()
    pacer = None
    try:
        for run in itertools.islice(runs, CONTENT_AHEAD):
            ahead.append(Deferred.fromCoroutine(fetch(run)))
        while ahead:
            data = await ahead.popleft()
            for run in itertools.islice(runs, 1):
                ahead.append(Deferred.fromCoroutine(fetch(run)))
            if pacer is None:
                request.setResponseCode(200)
                request.setHeader(b"content-type", b"application/octet-stream")
                request.setHeader(b"content-length", str(entry.size).encode("ascii"))
                request.setHeader(b"cache-control", b"no-store")
                pacer = Pacer(request)
            await pacer.write(data)
    except BaseException:
        if pacer is not None:
            request.unregisterProducer()
        raise
    finally:
        for d in ahead:
            d.addErrback(lambda f: None)
            d.cancel()
    if pacer is None:
        raise APIError(502, "corrupt_content", f"{shown(path)}: no content runs")
    pacer.finish()
    return STREAMED


async def _diff(daemon, request, a, b):
    top = path_arg(request) or b"/"
    limit = query_int(request, "limit", PAGE, 1, MAX_PAGE)
    cursor = browse.decode_cursor(query_arg(request, "cursor"))
    a = resolve(daemon, a)
    b = resolve(daemon, b)
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
        raise Invalid("bad_request", "both from and to (snapshot ids or 'latest') are required")
    return await _diff(daemon, request, a, b)


