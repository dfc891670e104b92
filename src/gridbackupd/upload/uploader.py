"""
The upload scheduler: pack the queue's blobs by priority, upload several
packs at once, record where each blob went, and have the publisher commit.

Durable work lives in SQLite; this object only knows which pending blobs it
is packing right now.  A pack is recorded only after the grid answered
with its cap, so a kill -9 at any moment costs at most the packs in flight.

Very small blobs (up to ``inline_max`` bytes) are not packed: they are read
and checked like packed ones and kept in the database until the next commit
writes them into its index segment.

Pausing lets the packs in flight finish and starts no new one.  Uploads are
paused by the user (kept across restarts), by ``[upload] allow_if`` failing
(``upload.allowif``), or by the schedule's rate 0; ``paused_by`` says who, in
that order.  The rate (``[upload] schedule``, else ``max_rate``) paces the
bytes of each pack's body while it streams (``upload.throttle``), and at a
low rate a pack holds at most ``PACK_SECONDS`` of it.  When the node fails,
rounds back off (doubling,
up to ``MAX_RETRY_DELAY``) and fewer packs go up at once, one more per
successful pack until ``parallel`` again; the queue is kept whatever happens.
While it waits to try again, ``last_error`` (one line) says why and
``retry_at`` when; ``failed_packs`` counts the pack uploads that failed,
the only ones that are ever sent again.
"""

import collections
import os

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridbackupd import clock as clockmod
from gridbackupd import crashpoints
from gridbackupd.errors import DiskFull, TahoeError, one_line
from gridbackupd.grid.retry import Backoff
from gridbackupd.model import short_cap
from gridbackupd.state import blobs, packs, queue
from gridbackupd.upload import packer
from gridbackupd.upload.allowif import RECHECK
from gridbackupd.upload.publisher import WriterLockHeld
from gridbackupd.upload.ratetimer import RateTimer
from gridbackupd.upload.schedule import Schedule
from gridbackupd.upload.stall import StallWatch
from gridbackupd.upload.throttle import Throttle, UploadAborted

COMMIT_INTERVAL = 300.0
RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0
_BACKOFF = Backoff(base=RETRY_DELAY, cap=MAX_RETRY_DELAY)
RATE_WINDOW = 60.0
# At a limited rate, a pack holds at most this many seconds of it (or one blob).
PACK_SECONDS = 10.0


class Uploader:
    log = Logger()

    def __init__(self, reactor, conn, client, publisher, pool, workdir,
                 pack_size=8 * 1024 * 1024, parallel=4, inline_max=0, max_rate=0,
                 weights=None, spool_dir=None, schedule=(), zone=None, wallclock=clockmod.wall,
                 allow_if=None):
        self.reactor = reactor
        self.spool_dir = spool_dir
        self._spooled = set()
        self.conn = conn
        self.client = client
        self.publisher = publisher
        self.pool = pool
        self.workdir = workdir
        self.pack_size = pack_size
        self.parallel = parallel
        self.inline_max = inline_max
        self.max_rate = max_rate or None
        # The rate as the schedule (rules, else max_rate) says, applied to the
        # packs in flight by the throttle; neither exists without a limit.
        self.throttle = None
        self.rates = None
        if schedule or max_rate:
            self.throttle = Throttle(reactor, self.max_rate)
            self.rates = RateTimer(reactor, Schedule(tuple(schedule), self.max_rate),
                                   self._rate_changed, zone=zone, wallclock=wallclock)
        self.allow_if = allow_if
        self.weights = weights
        self.in_flight = set()
        self.packs_in_flight = 0
        self.allowed_parallel = parallel
        # A user's pause is kept in the database: a restart does not undo it.
        self.user_paused = queue.paused_by(conn) is not None
        self.uploaded_bytes = 0
        self.uploaded_packs = 0
        self.inlined_blobs = 0
        self.consecutive_failures = 0
        self.failed_packs = 0
        self.last_error = None
        # The waits between failed rounds, and when (Unix time) the next try is due.
        self.backoff = _BACKOFF
        self.retry_at = None
        # (time, bytes) of the last RATE_WINDOW seconds
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._wakeup = None
        self._stopping = False
        self._running = None
        self._last_commit = reactor.seconds()
        self._recovered_at_start = False
        self.stall = StallWatch(reactor, conn, lambda: self.paused)

    @property
    def paused_by(self):
        """Who holds uploads: "user", "allow_if", "schedule" (rate 0), or None."""
        if self.user_paused:
            return "user"
        if self.allow_if is not None and not self.allow_if.allowed:
            return "allow_if"
        if self.throttle is not None and self.throttle.rate == 0:
            return "schedule"
        return None

    @property
    def paused(self):
        return self.paused_by is not None

    def paused_reason(self):
        """Why uploads are held (one line), or None."""
        by = self.paused_by
        if by == "user":
            return "paused by the user (POST /v1/uploads/pause); resume to go on"
        if by == "allow_if":
            return self.allow_if.reason
        if by == "schedule":
            rule = self.rates.decision.rule if self.rates and self.rates.decision else None
            return f"the upload schedule's rule {rule!r} sets the rate to 0" if rule else "[upload] max_rate"
        return None

    # -- control -----------------------------------------------------------

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        for name in os.listdir(self.workdir):
            # Packs being built or uploaded when the last process died.
            os.unlink(os.path.join(self.workdir, name))
        if self.weights is not None:
            queue.set_weights(self.conn, self.weights)
        self._clean_spool(everything=True)
        if self.rates is not None:
            self.rates.start()
        self._running = Deferred.fromCoroutine(self._loop())
        self._running.addErrback(lambda f: self.log.failure("uploader stopped", f))
        return self._running

    def wake(self):
        """New blobs or snapshots wait: look at the queue again now."""
        if self._wakeup is not None:
            d, self._wakeup = self._wakeup, None
            d.callback(None)

    def pause(self):
        """Start no new pack; the ones in flight finish (and are committed).  Kept across restarts."""
        queue.set_paused_by(self.conn, "user")
        self.user_paused = True

    def resume(self):
        """Undo the user's pause: the schedule and allow_if decide again."""
        queue.set_paused_by(self.conn, None)
        self.user_paused = False
        self.wake()

    def _rate_changed(self, rate):
        """The schedule's rate changed: pace the packs in flight by it, and start packs if it opened."""
        if self.throttle is not None:
            self.throttle.set_rate(rate)
        if rate != 0:
            self.wake()

    def stop(self):
        self._stopping = True
        self.stall.stop()
        if self.rates is not None:
            self.rates.stop()
        if self.throttle is not None and self.throttle.rate is not None:
            # Packs held back by the limit would keep the stop waiting: drop
            # them (their blobs stay pending and go after the next start).
            self.throttle.abort(UploadAborted("the daemon is stopping"))
        self.wake()
        return self._running

    # -- the loop ----------------------------------------------------------

    async def _loop(self):
        failed_rounds = 0
        while not self._stopping:
            try:
                if not await self._allowed():
                    # allow_if failed: no round (no traffic) until it succeeds.
                    self.stall.reset()
                    await self._sleep(RECHECK)
                    continue
                worked = await self.run_once()
                failed_rounds = 0
                self.last_error = None
            except WriterLockHeld as e:
                failed_rounds += 1
                self.last_error = one_line(e)
                self.log.warn("not writing: {error}", error=self.last_error)
                await self._retry(self.backoff.delay(failed_rounds))
                continue
            except (TahoeError, DiskFull) as e:
                failed_rounds += 1
                self.last_error = one_line(e)
                delay = self.backoff.delay(failed_rounds)
                self.log.warn("upload round failed, retrying in {delay}s: {error}",
                              delay=delay, error=self.last_error)
                await self._retry(delay)
                continue
            except Exception as e:
                failed_rounds += 1
                self.last_error = f"unexpected: {one_line(e)}"
                self.log.failure("upload round failed unexpectedly")
                await self._retry(self.backoff.delay(failed_rounds))
                continue
            if worked:
                self.stall.reset()
            elif not self._stopping:
                self._wakeup = Deferred()
                self.stall.idle()
                await self._wakeup
                self.stall.woken()

    async def _allowed(self):
        """Run ``allow_if`` (unless there is none, or the user paused anyway); True if uploads may go."""
        if self.allow_if is None or self.user_paused:
            return True
        return await self.allow_if.check()

    async def _retry(self, delay):
        """Wait on a retry: that is no stall, ``last_error`` says why and ``retry_at`` until when."""
        self.stall.reset()
        self.retry_at = clockmod.wall() + delay  # shown: a wall time
        try:
            await self._sleep(delay)
        finally:
            self.retry_at = None

    def _sleep(self, seconds):
        self._wakeup = Deferred()
        timer = self.reactor.callLater(seconds, self.wake)
        self._wakeup.addBoth(lambda r: timer.active() and timer.cancel() or r)
        return self._wakeup

    async def run_once(self):
        """
        One round: the recovery pass first if this is the first round since
        the start, then upload everything pending, and then the recovery
        pass, which commits, links and publishes whatever is ready (see
        ``Publisher.recover``).  True if anything was done.
        """
        await self.publisher.check_writer()
        recovered_at_start = None
        if not self._recovered_at_start:
            recovered_at_start = await self.publisher.recover(at_start=True)
            self._recovered_at_start = True
            self._after_commit(recovered_at_start)
        uploaded = await self.upload_pending()
        recovered = await self.publisher.recover()
        self._after_commit(recovered)
        return bool(uploaded or recovered or recovered_at_start)

    def _after_commit(self, recovered):
        if recovered.committed:
            self._last_commit = self.reactor.seconds()
            self._clean_spool()

    def _clean_spool(self, everything=False):
        """
        Content the scanner saw but could not expect to read again (a file
        that never held still) waits in ``spool_dir``, queued from there
        under the hash of what was read; once committed it is not needed.
        Checks the blobs packed from the spool since the last call (all of
        them with ``everything``, at start).
        """
        if not self.spool_dir or not (everything or self._spooled):
            return
        prefix = os.fsencode(os.path.join(self.spool_dir, ""))
        rows = blobs.committed_sources_under(self.conn, prefix, None if everything else self._spooled)
        for h, path in rows:
            self._spooled.discard(h)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        blobs.forget_sources(self.conn, [h for h, _ in rows])

    async def upload_pending(self):
        """Pack and upload pending blobs, up to ``parallel`` packs at a time, until none is left."""
        sem = DeferredSemaphore(self.parallel)
        running: list[Deferred] = []
        count = 0
        failures: list[Failure] = []
        while not self._stopping and not failures and not self.paused:
            await sem.acquire()
            # After a failure fewer packs go up at once.
            while self.packs_in_flight >= self.allowed_parallel and not failures:
                await _first(running)
            if self.allow_if is not None and self.allow_if.due() and not self.user_paused:
                await self.allow_if.check()  # a long round asks again every minute
            if self._stopping or failures or self.paused:
                sem.release()
                break
            batch = queue.next_batch(self.conn, self.pack_target(), self.in_flight)
            if not batch:
                sem.release()
                break
            self.in_flight.update(b.hash for b in batch)
            self.packs_in_flight += 1
            d = Deferred.fromCoroutine(self._pack_and_upload(batch))

            def done(result, batch=batch):
                self.in_flight.difference_update(b.hash for b in batch)
                self.packs_in_flight -= 1
                sem.release()
                return result

            d.addBoth(done)
            d.addErrback(failures.append)
            running.append(d)
            running = [r for r in running if not r.called]
            count += 1
            if self.reactor.seconds() - self._last_commit > COMMIT_INTERVAL:
                await gatherResults(running)
                running = []
                await self.publisher.commit()
                self._last_commit = self.reactor.seconds()
        await gatherResults(running)
        failures = [f for f in failures if not (self._stopping and f.check(UploadAborted))]
        if failures:
            failures[0].raiseException()
        return count

    def pack_target(self):
        """The size of the next pack: ``pack_size``, or at a limited rate ``PACK_SECONDS`` of it."""
        rate = self.throttle.rate if self.throttle is not None else None
        if not rate:
            return self.pack_size
        return max(1, min(self.pack_size, int(rate * PACK_SECONDS)))

    async def _pack_and_upload(self, batch):
        if self.spool_dir:
            prefix = os.fsencode(os.path.join(self.spool_dir, ""))
            self._spooled.update(b.hash for b in batch if b.source_path.startswith(prefix))
        small = [b for b in batch if b.size <= self.inline_max]
        large = [b for b in batch if b.size > self.inline_max]
        if small:
            found, stale = await deferToThreadPool(
                self.reactor, self.pool, packer.read_verified, small
            )
            if stale:
                self._mark_stale(stale)
            self._record_inline(found)
        if not large:
            return
        built = await deferToThreadPool(
            self.reactor, self.pool, packer.build_pack, large, self.workdir
        )
        try:
            if built.stale:
                self._mark_stale(built.stale)
            if not built.blobs:
                return
            try:
                if self.throttle is not None:
                    cap = await self.client.upload_file(built.path, wrap_body=self.throttle.wrap)
                else:
                    cap = await self.client.upload_file(built.path)
            except Exception as e:
                if self.throttle is not None and self.throttle.aborted is not None:
                    raise UploadAborted(one_line(e)) from e
                if not isinstance(e, TahoeError):
                    raise
                self.consecutive_failures += 1
                self.failed_packs += 1
                self.allowed_parallel = max(1, self.allowed_parallel // 2)
                raise
            crashpoints.reached("uploader.pack_uploaded")
            self.consecutive_failures = 0
            self.allowed_parallel = min(self.parallel, self.allowed_parallel + 1)
            self._count(built.size)
            self._record(built, cap)
            crashpoints.reached("uploader.pack_recorded")
            self.log.info(
                "uploaded {name} ({blobs} blobs, {size} bytes) as {cap}",
                name=built.name[:16], blobs=len(built.blobs), size=built.size, cap=short_cap(cap),
            )
        finally:
            os.unlink(built.path)

    def _count(self, nbytes):
        now = self.reactor.seconds()
        self.uploaded_bytes += nbytes
        self.uploaded_packs += 1
        self._recent.append((now, nbytes))

    def _record(self, built, cap):
        packs.record(self.conn, built.name, cap, built.size,
                     [(b.hash, b.offset, b.length, b.compression) for b in built.blobs])

    def _record_inline(self, found):
        if not found:
            return
        blobs.mark_inlined(self.conn, found)
        self.inlined_blobs += len(found)

    def _mark_stale(self, stale):
        queue.mark_changed(self.conn, [(s.hash, s.path, s.reason) for s in stale])
        self.log.warn("{n} blobs changed on disk since their scan; the next scan reads them again",
                      n=len(stale))

    # -- figures for the API -------------------------------------------------

    def rate(self):
        """Bytes per second sent to the grid over the last minute."""
        now = self.reactor.seconds()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW

    def status(self):
        pending_blobs, pending_bytes = queue.pending_totals(self.conn)
        rate = self.rate()
        return {
            "pending_blobs": pending_blobs,
            "pending_bytes": pending_bytes,
            "uploaded_bytes": self.uploaded_bytes,
            "uploaded_packs": self.uploaded_packs,
            "inlined_blobs": self.inlined_blobs,
            "in_flight_blobs": len(self.in_flight),
            "in_flight_packs": self.packs_in_flight,
            "parallel": self.allowed_parallel,
            "paused": self.paused,
            "paused_by": self.paused_by,
            "paused_reason": self.paused_reason(),
            "max_rate": self.max_rate,
            "schedule": (self.rates.status() if self.rates is not None
                         else {"rule": None, "rate": None, "next_change": None}),
            "rate_bytes_per_second": round(rate, 1),
            "eta_seconds": round(pending_bytes / rate, 1) if rate > 0 and pending_bytes else None,
            "consecutive_failures": self.consecutive_failures,
            "failed_packs": self.failed_packs,
            "retry_at": round(self.retry_at, 3) if self.retry_at is not None else None,
            "writer_lock": self.publisher.lock_error,
            "last_error": self.last_error,
            "stalled": self.stall.stalled,
        }


def _first(deferreds):
    """Fires when any of ``deferreds`` has fired (they keep their own results)."""
    waiting = [d for d in deferreds if not d.called]
    result: Deferred[None] = Deferred()
    if not waiting:
        result.callback(None)
        return result

    def fired(value):
        if not result.called:
            result.callback(None)
        return value

    for d in waiting:
        d.addBoth(fired)
    return result
