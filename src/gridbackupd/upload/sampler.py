"""
A sample of the uploader a minute, kept in the database (``state.series``),
so that the console can plot bytes uploaded and the backlog over the last
day, across restarts of the daemon.
"""

from twisted.logger import Logger

from gridbackupd import clock
from gridbackupd.state import series

INTERVAL = 60.0


class UploadSampler:
    log = Logger()

    def __init__(self, conn, uploader, wall=clock.wall):
        self.conn = conn
        self.uploader = uploader
        self.wall = wall
        self._sent_before = uploader.uploaded_bytes

    def sample(self):
        status = self.uploader.status()
        sent = status["uploaded_bytes"]
        try:
            series.add(self.conn, round(self.wall(), 3), max(0, sent - self._sent_before),
                       status["pending_bytes"], status["pending_blobs"])
        except Exception:
            # A plot point is not worth stopping for (a full disk says so elsewhere).
            self.log.failure("an upload sample was not kept")
            return
        self._sent_before = sent
