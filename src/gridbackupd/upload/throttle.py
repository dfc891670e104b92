"""
The upload rate limit (``max_rate`` in ``[upload]``): a token bucket on the
reactor's clock.  A pack starts only when the bucket is not in debt and
takes its size from it, so the average rate over a few packs stays under
the limit while each PUT itself goes at the line's speed.
"""

from twisted.internet.task import deferLater


class TokenBucket:
    """``rate`` bytes per second on ``clock``; a take may run into debt, the next waits it off."""

    def __init__(self, clock, rate, burst=None):
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self.tokens = self.burst
        self.stamp = clock.seconds()

    def _refill(self):
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self):
        """Seconds until the bucket is out of debt."""
        self._refill()
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    async def take(self, n):
        while True:
            wait = self.delay()
            if wait <= 0:
                self.tokens -= n
                return
            await deferLater(self.clock, wait, lambda: None)
