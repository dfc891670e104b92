"""
HTTP requests of the webhook and ping targets: one request with a time
limit, any 2xx is success, and every failure one line that names the
URL's host only (a chat service's URL is a secret: its path is the key).
"""

from urllib.parse import urlsplit

import treq
from twisted.web.client import Agent, HTTPConnectionPool

from gridbackupd.errors import GridBackupError, one_line

TIMEOUT = 30.0


class DeliveryError(GridBackupError):
    """A target did not take a notification; the message is one line without secrets."""


def host_of(url):
    """What answers and logs may show of a URL: its host (and port)."""
    return urlsplit(url).netloc.rpartition("@")[2] or "?"


class HTTPSender:
    def __init__(self, reactor):
        self.reactor = reactor
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool, connectTimeout=TIMEOUT))  # type: ignore[arg-type]

    async def request(self, method, url, data=None, headers=None):
        """Send; raise DeliveryError unless the answer is a 2xx."""
        host = host_of(url)
        try:
            d = self.client.request(method, url, data=data, headers=headers)
            d.addTimeout(TIMEOUT, self.reactor)
            response = await d
            await treq.content(response)
        except Exception as e:
            raise DeliveryError(f"{method} to {host} failed: {_scrub(one_line(e), url, host)}")
        if not 200 <= response.code < 300:
            raise DeliveryError(f"{method} to {host} answered HTTP {response.code}")


def _scrub(text, url, host):
    """Never a URL's path (its secret) in a message."""
    path = url.split(host, 1)[-1]
    return text.replace(url, host).replace(path, "/...") if path not in ("", "/") else text
