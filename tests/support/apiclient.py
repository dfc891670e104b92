"""A small client of the control API for tests: JSON in, (status, JSON) out."""

import json

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool


class APIClient:
    """Its connections are closed when the test case ends, so the reactor stays clean."""

    def __init__(self, testcase, base, token):
        self.base = base
        self.token = token
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        testcase.addCleanup(pool.closeCachedConnections)

    async def call(self, method, path, body=None, raw=None, headers=None):
        h = {"Authorization": [f"Bearer {self.token}"]}
        h.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = await self.http.request(method, self.base + path, data=data, headers=h)
        content = await response.content()
        return response.code, json.loads(content)
