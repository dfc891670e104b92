"""
Raw HTTP/1.1 to the control API, for the requests no well-behaved client
sends: bytes out, the whole answer read until the server closes.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol


class _Collect(Protocol):
    def __init__(self, data):
        self.data = data
        self.chunks = []
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.chunks))


async def raw_request(endpoint, data):
    """Send raw bytes, read until the server closes: (status, headers, body)."""
    protocol = _Collect(data)
    await connectProtocol(endpoint, protocol)
    answer = await protocol.done
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def tcp_endpoint(daemon):
    """The client endpoint of an in-process daemon's TCP API port."""
    return TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port.getHost().port)
