"""The upload queue: what waits, pausing and resuming, and taking the writer lock over."""

from gridbackupd.api import browse
from gridbackupd.api.http import Router
from gridbackupd.api.query import query_int
from gridbackupd.errors import Unavailable
from gridbackupd.state import queue

router = Router()


def _uploader(daemon):
    if daemon.read_only:
        daemon.require_writable()  # a 403 that says why
    if daemon.uploader is None:
        raise Unavailable("starting", "the uploader starts once the grid is connected")
    return daemon.uploader


@router.route("GET", "/v1/uploads/queue")
async def upload_queue(daemon, request):
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
