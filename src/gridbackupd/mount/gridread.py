"""
Ranged reads of packs straight from the Tahoe node, for the mount process.

The mount reads the grid itself rather than through the daemon's API (see
DESIGN-NOTES): one HTTP hop less, no second copy of every byte through the
daemon's reactor, and reads go on while the daemon restarts.  Each FUSE
thread keeps its own keep-alive connection.  A node that does not answer
(the daemon restarting its embedded grid) is waited for up to ``patience``
seconds, reading the node's URL again each time (its port may change).
"""

import http.client
import threading
import time
import urllib.parse

from gridbackupd.state import blobs
from gridbackupd.state import db as dbmod

PATIENCE = 60.0


class GridReadError(Exception):
    """A pack could not be read (one line: why)."""


class GridReader:
    """
    ``node_url()`` gives the Tahoe node's URL (read again after a failure);
    ``db_path`` is the state database, read only, for where blobs are.
    """

    def __init__(self, node_url, db_path, patience=PATIENCE, sleep=time.sleep):
        self.node_url = node_url
        self.db_path = db_path
        self.patience = patience
        self.sleep = sleep
        self._local = threading.local()

    def locate(self, blob_hash):
        """Where the blob is (``state.blobs.locate``): (cap, offset, length, compression), inline bytes, or None."""
        conn = getattr(self._local, "db", None)
        if conn is None:
            conn = self._local.db = dbmod.read_only_connection(self.db_path)
        return blobs.locate(conn, blob_hash)

    def _connection(self):
        conn = getattr(self._local, "http", None)
        if conn is None:
            url = urllib.parse.urlsplit(self.node_url())
            conn = self._local.http = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=300)
        return conn

    def _drop_connection(self):
        conn = getattr(self._local, "http", None)
        self._local.http = None
        if conn is not None:
            conn.close()

    def read_range(self, cap, start, length):
        """``length`` bytes of the immutable file ``cap`` from ``start`` (GridReadError)."""
        target = "/uri/" + urllib.parse.quote(cap, safe="")
        headers = {"Range": f"bytes={start}-{start + length - 1}", "Accept": "text/plain"}
        deadline = time.monotonic() + self.patience
        delay = 0.25
        while True:
            try:
                conn = self._connection()
                conn.request("GET", target, headers=headers)
                answer = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                # No answer at all: the node is away (restarting); wait for it.
                self._drop_connection()
                if time.monotonic() + delay > deadline:
                    raise GridReadError(f"the Tahoe node does not answer: {e}") from None
                self.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                body = answer.read()
            except (OSError, http.client.HTTPException) as e:
                # Tahoe stops sending when the shares turn out bad.
                self._drop_connection()
                raise GridReadError(f"the download broke off: {e!r}") from None
            if answer.status not in (200, 206):
                first = body.decode("utf-8", "replace").strip().split(":")[0][:80]
                raise GridReadError(f"the Tahoe node answered {answer.status} ({first})")
            if answer.status == 200:
                body = body[start:start + length]
            if len(body) != length:
                raise GridReadError(f"the Tahoe node gave {len(body)} bytes of {length}")
            return body
