"""
The in-memory HTTP client of a fake node: an IAgent that serves requests
from ``FakeTahoe`` synchronously, and ``fake_client()``, a TahoeClient wired
to it.
"""

from __future__ import annotations

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet import task
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.iweb import IAgent
from zope.interface import implementer

from gridbackupd.grid.client import TahoeClient
from gridbackupd.grid.retry import RetryPolicy

from .node import FakeTahoe, RecordedRequest


class _PendingCall:
    def __init__(self, f):
        self.f = f
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


@implementer(IAgent)
class FakeTahoeAgent:
    """
    An IAgent that sends requests to a FakeTahoe in memory.

    ``treq.testing.RequestTraversalAgent`` does the HTTP; this agent also
    runs the ``cooperator`` that file body producers write with, and pumps
    the in-memory connection until the answer is there, so that a request
    with a ``FileBodyProducer`` completes synchronously too.
    """

    def __init__(self, fake: FakeTahoe):
        self._fake = fake
        self._inner = RequestTraversalAgent(fake.resource())
        self._pending: list[_PendingCall] = []
        self.cooperator = task.Cooperator(scheduler=self._schedule, started=True)

    def _schedule(self, f):
        call = _PendingCall(f)
        self._pending.append(call)
        return call

    def request(self, method, uri, headers=None, bodyProducer=None):
        fake = self._fake
        method_text = method.decode("ascii")
        path = uri.decode("ascii").split("/", 3)[-1]
        fake.requests.append(RecordedRequest(
            method=method_text,
            path="/" + path,
            headers={k.decode().lower(): [v.decode() for v in vs]
                     for k, vs in (headers.getAllRawHeaders() if headers else [])},
            body_producer=bodyProducer,
            time=fake.clock.seconds(),
        ))
        if fake._take(method_text, ("refuse",)) is not None:
            return fail(ConnectionRefusedError("the fake Tahoe refused the connection"))
        drop = fake._take(method_text, ("drop",)) is not None
        d = self._inner.request(method, uri, headers, bodyProducer)
        done = []

        def finished(result):
            done.append(True)
            return result

        d.addBoth(finished)
        # Alternate: run the producer's pending work, move the bytes.
        for _ in range(1_000_000):
            self._inner.flush()
            if done:
                break
            pending, self._pending = self._pending, []
            if not pending:
                break
            for call in pending:
                if not call.cancelled:
                    call.f()
        if drop:
            def lose(response):
                return Failure(ResponseNeverReceived([Failure(ConnectionLost("dropped"))]))
            d.addCallback(lose)
        return d


def fake_client(fake: FakeTahoe | None = None, clock=None, **kwargs):
    """
    A ``(TahoeClient, FakeTahoe)`` pair talking in memory.

    ``clock`` (default: the fake's clock, a ``task.Clock``) drives retry
    waits; ``kwargs`` go to TahoeClient (``retry`` defaults to a policy
    without jitter, so that tests can predict the waits).
    """
    if fake is None:
        fake = FakeTahoe(clock=clock)
    if clock is None:
        clock = fake.clock
    kwargs.setdefault("retry", RetryPolicy(jitter=False))
    agent = FakeTahoeAgent(fake)
    client = TahoeClient(
        "http://fake-tahoe.invalid:3456/",
        # FakeTahoeAgent provides IAgent: zope declarations are not types to mypy.
        http_client=HTTPClient(agent),  # type: ignore[arg-type]
        clock=clock,
        cooperator=agent.cooperator,
        **kwargs,
    )
    return client, fake
