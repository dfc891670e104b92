"""
The ping target, healthchecks.io style: ``GET url`` after each complete
snapshot, ``GET url/fail`` after each failed one (and ``GET url`` for
``gridbackup notify test``).  A service that hears nothing for a while
raises the alarm itself, even when this machine is gone.
"""

from gridbackupd.notify.httpsend import HTTPSender, host_of


class PingTarget:
    name = "ping"

    def __init__(self, reactor, url):
        self._url = url.rstrip("/")
        self._http = HTTPSender(reactor)
        self.where = host_of(url)

    def __repr__(self):
        return f"<PingTarget {self.where}>"

    def wants(self, event):
        """Of the notifications, the test only; snapshots ping by ``ping``."""
        return event == "test"

    async def send(self, doc):
        await self.ping(True)

    async def ping(self, ok):
        await self._http.request("GET", self._url if ok else self._url + "/fail",
                                 headers={"User-Agent": ["gridbackupd"]})
