"""
The upload rate limit: the bytes of request body sent to the Tahoe node,
paced while each pack streams.

Every pack's body producer is wrapped (``Throttle.wrap``) so that what it
reads from the pack file waits in a small buffer and goes to the connection
only as the limit allows; the packs in flight share one ``Throttle`` and
take turns.  Two rules together make the limit exact and smooth:

- a ledger of the bytes sent over the last ``WINDOW`` seconds: a write
  goes only if the ledger has room for it, so that no ``WINDOW``-second
  span (``[t, t + WINDOW)``, for any ``t``) ever holds more than
  ``rate * WINDOW`` bytes, a change of rate included;
- a token bucket at the rate, holding at most ``BURST`` seconds of it
  (starting empty), written in slices of at most ``SLICE`` seconds of it:
  the bytes flow steadily rather than in one burst at the start of each
  window, and a timer that fires late catches up.

Pacing reads the reactor's clock, which the daemon makes monotonic
(``clock.steady_reactor``): a wall clock set back or forward neither
stalls nor bursts.  A rate of 0 holds every byte until the rate changes;
``None`` (unlimited) passes them through as they come.
"""

from __future__ import annotations

import collections

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import SchedulerError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

WINDOW = 10.0  # seconds: the span over which the limit is exact
BURST = 0.5  # seconds of the rate the bucket holds: a late timer catches up
SLICE = 0.1  # seconds of the rate written at once, at most
# Buffered bytes of one pack above which its file is no longer read.
HIGH_WATER = 256 * 1024
# Ledger entries closer together than this are one entry (at the later time).
_COALESCE = 0.05
# Clock rounding: an instant this close to a window's end is past it.
_EPSILON = 1e-6


class UploadAborted(Exception):
    """The daemon is stopping: a pack held back by the limit is dropped (it is sent again later)."""


class Throttle:
    """The limit shared by the packs in flight; ``rate`` in bytes/s, 0 = hold, None = unlimited."""

    log = Logger()

    def __init__(self, clock, rate: int | None = None):
        self.clock = clock
        self.rate = rate
        self.tokens = 0.0  # no burst to start with: 10 s later the ledger would hold that back
        self.stamp = clock.seconds()
        # (time, bytes) sent, oldest first; an entry's time is its last write's.
        self.ledger: collections.deque[list] = collections.deque()
        self.in_window = 0
        self.sent_bytes = 0
        self.streams: collections.deque[_Stream] = collections.deque()
        self.aborted: Failure | None = None
        self._timer = None
        self._pumping = False
        self._again = False

    # -- control -----------------------------------------------------------

    def set_rate(self, rate: int | None) -> None:
        """From now on, ``rate`` (the ledger of what was sent keeps counting)."""
        if rate == self.rate:
            return
        self._refill()
        self.rate = rate
        self.tokens = max(0.0, min(self.tokens, self._burst()))
        self._pump()

    def wrap(self, producer) -> ThrottledProducer:
        """A body producer that sends what ``producer`` writes as the limit allows."""
        return ThrottledProducer(self, producer)

    def abort(self, reason: Exception) -> None:
        """Fail every pack still streaming, and any started later, with ``reason``."""
        self.aborted = Failure(reason)
        for stream in list(self.streams):
            stream.fail(self.aborted)
        self._cancel_timer()

    def stop(self) -> None:
        self._cancel_timer()

    @property
    def holding(self) -> bool:
        """True while some pack has bytes waiting on the limit."""
        return any(s.buffered for s in self.streams)

    # -- the two rules -------------------------------------------------------

    def _burst(self) -> float:
        # At least one slice, or a rate of a few bytes a second would never send one.
        return max(self.rate * BURST, self._slice()) if self.rate else 0.0

    def _slice(self) -> float:
        if self.rate is None:
            return float("inf")
        return max(1, int(self.rate * SLICE))

    def _refill(self) -> None:
        now = self.clock.seconds()
        if self.rate:
            self.tokens = min(self._burst(), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def _expire(self, now: float) -> None:
        while self.ledger and self.ledger[0][0] + WINDOW <= now + _EPSILON:
            self.in_window -= self.ledger.popleft()[1]

    def _allowance(self, now: float) -> float:
        """Bytes that may go now."""
        if self.rate is None:
            return float("inf")
        if self.rate == 0:
            return 0
        room = self.rate * WINDOW - self.in_window
        return max(0.0, min(self.tokens + _EPSILON, room))

    def _wait(self, now: float, n: float) -> float:
        """Seconds until ``n`` bytes may go (the rate is not 0)."""
        assert self.rate
        wait = max(0.0, (n - self.tokens) / self.rate)
        excess = self.in_window + n - self.rate * WINDOW
        if excess > 0:
            freed = 0
            for t, size in self.ledger:
                freed += size
                if freed >= excess:
                    wait = max(wait, t + WINDOW - now)
                    break
        return max(wait, 1e-3)

    def _record(self, now: float, n: int) -> None:
        self.tokens -= n
        self.in_window += n
        self.sent_bytes += n
        if self.ledger and now - self.ledger[-1][0] < _COALESCE:
            last = self.ledger[-1]
            last[0], last[1] = now, last[1] + n
        else:
            self.ledger.append([now, n])

    # -- sending -------------------------------------------------------------

    def _pump(self) -> None:
        """Send what the limit allows now, the streams taking turns; wake again when more may go."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._cancel_timer()
                self._send_allowed()
            self._schedule()
        finally:
            self._pumping = False

    def _send_allowed(self) -> None:
        while True:
            self._refill()
            now = self.stamp
            self._expire(now)
            sent = False
            for _ in range(len(self.streams)):
                if not self.streams:
                    return
                stream = self.streams[0]
                self.streams.rotate(-1)
                if not stream.ready:
                    continue
                n = int(min(stream.buffered, self._slice()))
                if self._allowance(now) < n:
                    return
                stream.send(n)
                self._record(now, n)
                sent = True
            if not sent:
                return

    def _schedule(self) -> None:
        if not self.rate:
            return
        waiting = [s for s in self.streams if s.ready]
        if not waiting:
            return
        now = self.clock.seconds()
        n = min(waiting[0].buffered, self._slice())
        self._timer = self.clock.callLater(self._wait(now, n), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._pump()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@implementer(IConsumer)
class _Intake:
    """What the wrapped producer writes into: the stream's buffer."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.take_in(data)

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass


class _Stream:
    """One pack's body in flight: its buffer, who paused whom, and when it is done."""

    def __init__(self, throttle, producer, consumer):
        self.throttle = throttle
        self.producer = producer
        self.consumer = consumer
        self.done: Deferred[None] = Deferred()
        self.buffer: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.read_all = False
        self.paused_by_consumer = False  # the connection's buffer is full
        self.producer_paused = False  # we paused the file's reading
        self.finished = False

    @property
    def ready(self) -> bool:
        return bool(self.buffered) and not self.paused_by_consumer and not self.finished

    def take_in(self, data: bytes) -> None:
        if self.finished:
            return
        if data:
            self.buffer.append(bytes(data))
            self.buffered += len(data)
        if self.buffered >= HIGH_WATER:
            self._pause_producer()
        self.throttle._pump()

    def send(self, n: int) -> None:
        parts = []
        while n:
            head = self.buffer[0]
            if len(head) <= n:
                parts.append(self.buffer.popleft())
                n -= len(head)
            else:
                parts.append(head[:n])
                self.buffer[0] = head[n:]
                n = 0
        data = b"".join(parts)
        self.buffered -= len(data)
        self.consumer.write(data)
        if self.buffered < HIGH_WATER // 2:
            self._resume_producer()
        self._maybe_done()

    def producer_done(self, _):
        self.read_all = True
        self._maybe_done()

    def _maybe_done(self):
        if self.read_all and not self.buffered and not self.finished:
            self.finished = True
            self._forget()
            self.done.callback(None)

    def fail(self, failure):
        if self.finished:
            return
        self.finished = True
        self._forget()
        _call_quietly(self.producer.stopProducing)
        self.done.errback(failure)

    def stop(self):
        """The connection stops the body: stop reading; ``done`` never fires (as FileBodyProducer's)."""
        if self.finished:
            return
        self.finished = True
        self._forget()
        _call_quietly(self.producer.stopProducing)

    def _forget(self):
        self.buffer.clear()
        self.buffered = 0
        try:
            self.throttle.streams.remove(self)
        except ValueError:
            pass

    def _pause_producer(self):
        if not self.producer_paused and not self.read_all:
            self.producer_paused = True
            _call_quietly(self.producer.pauseProducing)

    def _resume_producer(self):
        if self.producer_paused and not self.paused_by_consumer:
            self.producer_paused = False
            _call_quietly(self.producer.resumeProducing)


def _call_quietly(method):
    """Pause, resume or stop a producer that may have finished already."""
    try:
        method()
    except SchedulerError:
        pass


@implementer(IBodyProducer, IPushProducer)
class ThrottledProducer:
    """A request body producer paced by a ``Throttle``; the connection may pause it too."""

    def __init__(self, throttle: Throttle, producer):
        self.throttle = throttle
        self.producer = producer
        self.length = producer.length
        self._stream: _Stream | None = None

    def startProducing(self, consumer):
        if self.throttle.aborted is not None:
            return fail(self.throttle.aborted)
        stream = self._stream = _Stream(self.throttle, self.producer, consumer)
        # Cancelled (the request is): stop reading, and fail with CancelledError.
        done: Deferred[None] = Deferred(lambda _: stream.stop())
        stream.done = done
        self.throttle.streams.append(stream)
        d = self.producer.startProducing(_Intake(stream))
        d.addCallbacks(stream.producer_done, stream.fail)
        return done

    def pauseProducing(self):
        stream = self._stream
        if stream is not None and not stream.finished:
            stream.paused_by_consumer = True
            stream._pause_producer()

    def resumeProducing(self):
        stream = self._stream
        if stream is not None and not stream.finished:
            stream.paused_by_consumer = False
            if stream.buffered < HIGH_WATER // 2:
                stream._resume_producer()
            self.throttle._pump()

    def stopProducing(self):
        if self._stream is not None:
            self._stream.stop()
        else:
            _call_quietly(self.producer.stopProducing)
