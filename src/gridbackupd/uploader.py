"""
The upload scheduler: pack the queue's blobs by priority, upload several
packs at once, record where each blob went, and have the publisher commit.

Durable work lives in SQLite; this object only knows which pending blobs it
is packing right now.  A pack is recorded only after the grid answered
with its cap, so a kill -9 at any moment costs at most the packs in flight.
"""

import os
import time

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from . import db as dbmod
from . import packer, queue
from .errors import TahoeError
from .model import short_cap

COMMIT_INTERVAL = 300.0
RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0


class Uploader:
    log = Logger()

    def __init__(self, reactor, conn, client, publisher, pool, workdir,
                 pack_size=8 * 1024 * 1024, parallel=4):
        self.reactor = reactor
        self.conn = conn
        self.client = client
        self.publisher = publisher
        self.pool = pool
        self.workdir = workdir
        self.pack_size = pack_size
        self.parallel = parallel
        self.in_flight = set()
        self.uploaded_bytes = 0
        self.uploaded_packs = 0
        self.started = time.time()
        self.last_error = None
        self._wakeup = None
        self._stopping = False
        self._running = None
        self._last_commit = time.time()

    # -- control -----------------------------------------------------------

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        for name in os.listdir(self.workdir):
            # Packs being built or uploaded when the last process died.
            os.unlink(os.path.join(self.workdir, name))
        self._running = Deferred.fromCoroutine(self._loop())
        self._running.addErrback(lambda f: self.log.failure("uploader stopped", f))
        return self._running

    def wake(self):
        """New blobs or snapshots wait: look at the queue again now."""
        if self._wakeup is not None:
            d, self._wakeup = self._wakeup, None
            d.callback(None)

    def stop(self):
        self._stopping = True
        self.wake()
        return self._running

    # -- the loop ----------------------------------------------------------

    async def _loop(self):
        delay = RETRY_DELAY
        while not self._stopping:
            try:
                worked = await self.run_once()
                delay = RETRY_DELAY
                self.last_error = None
            except TahoeError as e:
                self.last_error = str(e)
                self.log.warn("upload round failed, retrying in {delay}s: {error}", delay=delay, error=e)
                await self._sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            except Exception:
                self.log.failure("upload round failed unexpectedly")
                await self._sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            if not worked and not self._stopping:
                self._wakeup = Deferred()
                await self._wakeup

    def _sleep(self, seconds):
        self._wakeup = Deferred()
        timer = self.reactor.callLater(seconds, self.wake)
        self._wakeup.addBoth(lambda r: timer.active() and timer.cancel() or r)
        return self._wakeup

    async def run_once(self):
        """Upload everything pending, commit, publish ready snapshots; True if anything was done."""
        uploaded = await self.upload_pending()
        committed = None
        if uploaded or self._has_uncommitted():
            committed = await self.publisher.commit()
            self._last_commit = time.time()
        published = await self.publisher.publish_snapshots()
        return bool(uploaded or committed or published)

    def _has_uncommitted(self):
        return self.conn.execute(
            "SELECT 1 FROM packs WHERE commit_name IS NULL AND cap IS NOT NULL LIMIT 1"
        ).fetchone() is not None

    async def upload_pending(self):
        """Pack and upload pending blobs, ``parallel`` packs at a time, until none is left."""
        sem = DeferredSemaphore(self.parallel)
        running = []
        count = 0
        failures = []
        while not self._stopping and not failures:
            await sem.acquire()
            batch = queue.next_batch(self.conn, self.pack_size, self.in_flight)
            if not batch:
                sem.release()
                break
            self.in_flight.update(b.hash for b in batch)
            d = Deferred.fromCoroutine(self._pack_and_upload(batch))

            def done(result, batch=batch):
                self.in_flight.difference_update(b.hash for b in batch)
                sem.release()
                return result

            d.addBoth(done)
            d.addErrback(failures.append)
            running.append(d)
            count += 1
            if time.time() - self._last_commit > COMMIT_INTERVAL:
                await gatherResults(running)
                running = []
                await self.publisher.commit()
                self._last_commit = time.time()
        await gatherResults(running)
        if failures:
            failures[0].raiseException()
        return count

    async def _pack_and_upload(self, batch):
        built = await deferToThreadPool(
            self.reactor, self.pool, packer.build_pack, batch, self.workdir
        )
        try:
            if built.stale:
                self._mark_stale(built.stale)
            if not built.blobs:
                return
            cap = await self.client.upload_file(built.path)
            self.uploaded_bytes += built.size
            self.uploaded_packs += 1
            self._record(built, cap)
            self.log.info(
                "uploaded {name} ({blobs} blobs, {size} bytes) as {cap}",
                name=built.name[:16], blobs=len(built.blobs), size=built.size, cap=short_cap(cap),
            )
        finally:
            os.unlink(built.path)

    def _record(self, built, cap):
        with dbmod.transaction(self.conn):
            row = self.conn.execute("SELECT id FROM packs WHERE name = ?", (built.name,)).fetchone()
            if row is None:
                pack_id = self.conn.execute(
                    "INSERT INTO packs (name, cap, size) VALUES (?, ?, ?)",
                    (built.name, cap, built.size),
                ).lastrowid
            else:
                pack_id = row[0]
            self.conn.executemany(
                "UPDATE blobs SET state = 'uploaded', pack_id = ?, offset = ?, length = ?, "
                "compression = ? WHERE hash = ? AND state = 'pending'",
                [(pack_id, b.offset, b.length, b.compression, b.hash) for b in built.blobs],
            )

    def _mark_stale(self, hashes):
        with dbmod.transaction(self.conn):
            self.conn.executemany(
                "UPDATE blobs SET state = 'stale' WHERE hash = ? AND state = 'pending'",
                [(h,) for h in hashes],
            )
        self.log.warn("{n} blobs changed on disk since their scan; the next scan reads them again",
                      n=len(hashes))

    # -- figures for the API -------------------------------------------------

    def status(self):
        pending_blobs, pending_bytes = queue.pending_totals(self.conn)
        elapsed = max(time.time() - self.started, 1e-6)
        rate = self.uploaded_bytes / elapsed
        return {
            "pending_blobs": pending_blobs,
            "pending_bytes": pending_bytes,
            "uploaded_bytes": self.uploaded_bytes,
            "uploaded_packs": self.uploaded_packs,
            "in_flight_blobs": len(self.in_flight),
            "rate_bytes_per_second": round(rate, 1),
            "eta_seconds": round(pending_bytes / rate, 1) if rate > 0 and pending_bytes else None,
            "last_error": self.last_error,
        }
