"""
Waiting before trying again: one capped exponential backoff for every loop
that retries (the Tahoe client's requests, the uploader's rounds, the
daemon's wait for the grid), and the retry loop of the Tahoe client.
"""

from __future__ import annotations

import itertools
import random as _random
from collections.abc import Iterator

import attr
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gridbackupd.errors import TahoeError

__all__ = ["Backoff", "RetryPolicy", "is_transient", "not_sent", "retrying", "sleep"]

_log = Logger(namespace="gridbackupd.grid.retry")


def _not_negative(instance, attribute, value):
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _at_least_one(instance, attribute, value):
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value!r}")


@attr.frozen
class Backoff:
    """
    The waits between attempts of something that keeps failing.

    Before retry number ``n`` (1 for the first retry) wait
    ``min(cap, base * factor ** (n - 1))`` seconds; with ``jitter`` a
    random part of it, between one half and all of it, so that many
    clients failing together do not come back together.
    """

    base: float = attr.field(default=0.5, validator=_not_negative)
    factor: float = attr.field(default=2.0, validator=_at_least_one)
    cap: float = attr.field(default=30.0, validator=_not_negative)
    jitter: bool = False

    def delay(self, retry: int, random=_random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        try:
            delay = min(self.cap, self.base * self.factor ** (retry - 1))
        except OverflowError:
            delay = self.cap
        if self.jitter:
            delay *= 0.5 + random() / 2
        return delay

    def delays(self, random=_random.random) -> Iterator[float]:
        """The waits before retry 1, 2, 3, ... without end: a loop that never gives up."""
        for retry in itertools.count(1):
            yield self.delay(retry, random)


@attr.frozen
class RetryPolicy(Backoff):
    """
    How often and how patiently the Tahoe client retries a transient
    failure: a ``Backoff`` (with jitter by default) and ``attempts``, which
    counts every attempt, the first one included.
    """

    attempts: int = attr.field(default=6, validator=_at_least_one, kw_only=True)
    jitter: bool = attr.field(default=True, kw_only=True)


def is_transient(error: TahoeError) -> bool:
    """Retry every failure that may go away by itself."""
    return error.transient


def not_sent(error: TahoeError) -> bool:
    """
    Retry only failures that certainly happened before the request reached
    the node: for requests that must not run twice.
    """
    return error.transient and not error.sent


async def sleep(clock, seconds: float) -> None:
    """Wait ``seconds`` on ``clock`` (an ``IReactorTime``)."""
    await deferLater(clock, seconds, lambda: None)


async def retrying(clock, policy, operation_name, fn, *, retry_if=is_transient,
                   log=None, random=_random.random):
    """
    Await ``fn()`` until it succeeds, fails with an error that ``retry_if``
    refuses, or ``policy.attempts`` attempts have failed; then raise the
    last error.  Only ``TahoeError``s are retried; waits use ``clock``.
    """
    log = log if log is not None else _log
    attempt = 1
    while True:
        try:
            return await fn()
        except TahoeError as e:
            if attempt >= policy.attempts or not retry_if(e):
                raise
            delay = policy.delay(attempt, random)
            log.warn(
                "{operation} failed (attempt {attempt} of {attempts}), "
                "retrying in {delay:.2f}s: {error}",
                operation=operation_name,
                attempt=attempt,
                attempts=policy.attempts,
                delay=delay,
                error=str(e),
            )
        await sleep(clock, delay)
        attempt += 1
