"""
Reading a file of a snapshot through the mount: blob by blob, each checked
against its SHA-256 before a byte of it is returned.

Neighbouring blobs of one pack are fetched by one ranged GET (a run of up to
``MAX_RUN`` bytes: each GET costs Tahoe a round of share and hash-tree
fetches, whatever its size).  A sequential reader gets read-ahead: the runs
of the next ``AHEAD`` bytes are fetched in the background while it reads.
A blob that does not match its hash is an ``EIO`` for the read that needs
it (``CorruptBlob``), never wrong bytes.
"""

import bisect
import concurrent.futures
import hashlib
import threading

import zstandard

from gridbackupd.format.pack import PackFormatError, decode_blob
from gridbackupd.mount.gridread import GridReadError

MAX_RUN = 8 * 1024 * 1024
AHEAD = 32 * 1024 * 1024
FETCHERS = 4


class ContentError(Exception):
    """A read that cannot be answered (one line: why)."""


class CorruptBlob(ContentError):
    """A blob from the grid is not what the snapshot says."""


class NotOnGrid(ContentError):
    """The index knows no pack for a blob."""


class FileContent:
    """
    The content of one open file: ``blobs`` ((hex hash, size), ...) in
    file order.  ``read(offset, size)`` from any FUSE thread.
    """

    def __init__(self, reader, path, blobs):
        self.reader = reader
        self.path = path
        self.blobs = list(blobs)
        self.starts = []
        at = 0
        for _, size in self.blobs:
            self.starts.append(at)
            at += size
        self.size = at
        self.next_offset = 0

    def read(self, offset, size):
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(self.starts, offset) - 1
        parts = []
        i = first
        while i < len(self.blobs) and self.starts[i] < end:
            data = self.reader.blob(self, i)
            lo = max(offset - self.starts[i], 0)
            hi = min(end - self.starts[i], len(data))
            parts.append(data[lo:hi])
            i += 1
        if offset == self.next_offset or offset == 0:
            self.reader.read_ahead(self, i, end)
        self.next_offset = end
        return b"".join(parts)


class ContentReader:
    """Fetches and checks blobs for every open file, with a shared cache and fetch threads."""

    def __init__(self, grid, cache, log, fetchers=FETCHERS, ahead=AHEAD, max_run=MAX_RUN):
        self.grid = grid
        self.cache = cache
        self.log = log
        self.ahead = ahead
        self.max_run = max_run
        self._pool = concurrent.futures.ThreadPoolExecutor(fetchers, thread_name_prefix="gridbackup-fetch")
        self._lock = threading.Lock()
        self._inflight: dict[str, concurrent.futures.Future] = {}

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)

    def blob(self, content, i):
        """The checked bytes of blob ``i`` of ``content``: cached, being fetched, or fetched now."""
        blob_hash = content.blobs[i][0]
        data = self.cache.get(blob_hash)
        if data is not None:
            return data
        future = self._start_run(content, i, wait=True)
        return future.result()

    def read_ahead(self, content, i, end):
        """Start the runs of the bytes after ``end``, up to ``ahead`` bytes, not yet cached or coming."""
        limit = end + self.ahead
        while i < len(content.blobs) and content.starts[i] < limit:
            blob_hash = content.blobs[i][0]
            with self._lock:
                coming = blob_hash in self._inflight
            if not coming and self.cache.get(blob_hash) is None:
                self._start_run(content, i, wait=False)
            i += 1

    def _start_run(self, content, i, wait):
        """The future of blob ``i``, starting the run that begins with it if none brings it."""
        blob_hash, _ = content.blobs[i][0], content.blobs[i][1]
        with self._lock:
            future = self._inflight.get(blob_hash)
            if future is not None:
                return future
        run = self._plan_run(content, i)
        with self._lock:
            futures = []
            for h, _size, _location in run:
                if h not in self._inflight:
                    self._inflight[h] = concurrent.futures.Future()
                futures.append(self._inflight[h])
            mine = self._inflight[blob_hash]
        if wait:
            self._fetch(content.path, run)
        else:
            self._pool.submit(self._fetch, content.path, run)
        return mine

    def _plan_run(self, content, i):
        """Blob ``i`` and the next ones in the same pack right after it, up to ``max_run`` bytes."""
        blob_hash, size = content.blobs[i]
        location = self.grid.locate(blob_hash)
        run = [(blob_hash, size, location)]
        if location is None or isinstance(location, bytes):
            return run
        cap, offset, length, _ = location
        end = offset + length
        j = i + 1
        while j < len(content.blobs):
            h, n = content.blobs[j]
            with self._lock:
                if h in self._inflight:
                    break
            nxt = self.grid.locate(h)
            if nxt is None or isinstance(nxt, bytes) or nxt[0] != cap or nxt[1] != end:
                break
            if nxt[1] + nxt[2] - offset > self.max_run:
                break
            run.append((h, n, nxt))
            end = nxt[1] + nxt[2]
            j += 1
        return run

    def _fetch(self, path, run):
        """Fetch, decode and check a run; settle every blob's future (in the calling thread)."""
        try:
            results = self._fetch_run(run)
        except ContentError as e:
            self.log(f"{path}: {e}")
            results = {h: e for h, _, _ in run}
        except GridReadError as e:
            self.log(f"{path}: {e}")
            results = {h: ContentError(str(e)) for h, _, _ in run}
        for result in results.values():
            if isinstance(result, CorruptBlob):
                self.log(f"{path}: {result}")
        with self._lock:
            futures = [(h, self._inflight.pop(h, None)) for h, _, _ in run]
        for h, future in futures:
            if future is None or future.done():
                continue
            result = results.get(h)
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _fetch_run(self, run):
        """{hash: checked bytes or CorruptBlob} of one run, the good blobs cached."""
        first = run[0][2]
        if first is None:
            raise NotOnGrid(f"blob {run[0][0][:12]} is not on the grid")
        if isinstance(first, bytes):
            stored, start, pieces = first, 0, [(run[0][0], run[0][1], 0, len(first), "none")]
        else:
            start = first[1]
            end = run[-1][2][1] + run[-1][2][2]
            stored = self.grid.read_range(first[0], start, end - start)
            pieces = [(h, n, loc[1], loc[2], loc[3]) for h, n, loc in run]
        results: dict[str, object] = {}
        for blob_hash, size, offset, length, compression in pieces:
            piece = stored[offset - start:offset - start + length]
            try:
                data = decode_blob(piece, compression, size)
            except (PackFormatError, ValueError, zstandard.ZstdError) as e:
                results[blob_hash] = CorruptBlob(f"blob {blob_hash[:12]} cannot be decoded: {e}")
                continue
            if hashlib.sha256(data).hexdigest() != blob_hash:
                results[blob_hash] = CorruptBlob(f"blob {blob_hash[:12]} does not match its SHA-256")
                continue
            self.cache.put(blob_hash, data)
            results[blob_hash] = data
        return results
