"""
Real receivers for the notification tests, on loopback ports of the test
reactor: an HTTP server (twisted.web) that records every request and
answers with the statuses it is told, and an SMTP server (twisted.mail)
that records every mail, with password authentication if given one.
"""

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.mail import imap4, smtp
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer


class Received:
    """What arrived, in order, and a Deferred for the next arrival."""

    def __init__(self):
        self.items = []
        self._waiting = []

    def add(self, item):
        self.items.append(item)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(item)

    def next(self, timeout=30):
        """Fires with the next item to arrive (fails after ``timeout`` seconds)."""
        d = defer.Deferred()
        self._waiting.append(d)
        d.addTimeout(timeout, reactor)
        return d

    async def count(self, n, timeout=30):
        """Fires with the items once there are ``n``."""
        while len(self.items) < n:
            await self.next(timeout)
        return self.items


class _Recorder(Resource):
    isLeaf = True

    def __init__(self, received, statuses):
        super().__init__()
        self.received = received
        self.statuses = statuses

    def render(self, request):
        body = request.content.read()
        status = self.statuses.pop(0) if self.statuses else 200
        request.setResponseCode(status)
        self.received.add({
            "method": request.method.decode(), "path": request.path.decode(),
            "headers": {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": body, "status": status})
        return b"ok"


class HTTPReceiver:
    """``url(path)`` of a loopback server recording every request in ``received``."""

    def __init__(self, testcase, statuses=()):
        self.received = Received()
        self.statuses = list(statuses)  # answered in turn, then 200
        self.port = reactor.listenTCP(0, Site(_Recorder(self.received, self.statuses)), interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, received, recipient):
        self.received = received
        self.recipient = recipient
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.received.add({"to": self.recipient, "data": b"\n".join(self.lines)})
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, received, user=None):
        self.received = received
        self.user = user

    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return lambda: _Message(self.received, str(user.dest))


@implementer(IRealm)
class _Realm:
    def __init__(self, received):
        self.received = received

    def requestAvatar(self, avatar_id, mind, *interfaces):
        return smtp.IMessageDelivery, _Delivery(self.received, avatar_id), lambda: None


class _ESMTP(smtp.ESMTP):
    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.connections.discard(self)
        for d in self.factory.closed.pop(self, []):
            d.callback(None)


class _Factory(smtp.SMTPFactory):
    protocol = _ESMTP
    timeout = None

    def __init__(self, received, portal):
        super().__init__(portal)
        self.received = received
        self.connections = set()
        self.closed = {}

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        self.connections.add(p)
        if self.portal is None:
            p.delivery = _Delivery(self.received)
        else:
            p.challengers = {b"LOGIN": smtp.LOGINCredentials, b"PLAIN": imap4.PLAINCredentials}
        return p

    def close_all(self):
        """Fires once every connection is closed."""
        waits = []
        for p in list(self.connections):
            d = defer.Deferred()
            self.closed.setdefault(p, []).append(d)
            waits.append(d)
            p.transport.loseConnection()
        return defer.gatherResults(waits)


class SMTPReceiver:
    """A loopback ESMTP server (no TLS); with ``user``/``password`` it takes mail only after AUTH."""

    def __init__(self, testcase, user=None, password=None):
        self.received = Received()
        portal = None
        if user is not None:
            portal = Portal(_Realm(self.received),
                            [InMemoryUsernamePasswordDatabaseDontUse(**{user: password.encode()})])
        factory = _Factory(self.received, portal)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        testcase.addCleanup(factory.close_all)
        testcase.addCleanup(self.port.stopListening)

    @property
    def port_number(self):
        return self.port.getHost().port
