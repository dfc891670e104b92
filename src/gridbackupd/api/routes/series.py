"""What the console plots: the uploader's last day, a sample a minute."""

from gridbackupd import clock
from gridbackupd.api.http import Router
from gridbackupd.state import series

router = Router()

DAY = 86400.0


@router.route("GET", "/v1/series")
async def get_series(daemon, request):
    uploaded = 0
    samples = []
    for time, sent, backlog_bytes, backlog_blobs in series.since(daemon.conn, clock.wall() - DAY):
        uploaded += sent
        samples.append({"time": time, "uploaded_bytes": uploaded,
                        "backlog_bytes": backlog_bytes, "backlog_blobs": backlog_blobs})
    return 200, {"uploads": samples}
