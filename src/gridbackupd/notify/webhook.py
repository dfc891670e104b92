"""
The webhook target: the notification as JSON in a POST, signed with
HMAC-SHA256 of the exact body when ``[notify] webhook_secret_file`` is set
(``X-Gridbackup-Signature: sha256=<hex>``), so the receiver can tell it
came from this daemon.
"""

import hashlib
import hmac
import json

from gridbackupd.notify.httpsend import HTTPSender, host_of

SIGNATURE_HEADER = "X-Gridbackup-Signature"
EVENT_HEADER = "X-Gridbackup-Event"


def signature(secret, body):
    """The header value for ``body`` (bytes) signed with ``secret`` (bytes)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookTarget:
    name = "webhook"

    def __init__(self, reactor, url, secret=None):
        self._url = url
        self._secret = secret
        self._http = HTTPSender(reactor)
        self.where = host_of(url)

    def __repr__(self):
        return f"<WebhookTarget {self.where}>"

    def wants(self, event):
        return True

    async def send(self, doc):
        body = json.dumps(doc, sort_keys=True).encode()
        headers = {"Content-Type": ["application/json"], EVENT_HEADER: [doc["event"]],
                   "User-Agent": ["gridbackupd"]}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = [signature(self._secret, body)]
        await self._http.request("POST", self._url, data=body, headers=headers)
