"""
The command target: a shell command run with the notification as JSON on
its stdin, in a worker thread, in a process group of its own that is
killed at ``[notify] command_timeout`` (``scan.hooks.run_command``).
"""

import json

from twisted.internet.threads import deferToThreadPool

from gridbackupd.notify.httpsend import DeliveryError
from gridbackupd.scan.hooks import run_command


class CommandTarget:
    name = "command"
    where = "command"

    def __init__(self, reactor, pool, command, timeout):
        self.reactor = reactor
        self.pool = pool
        self.command = command
        self.timeout = timeout

    def wants(self, event):
        return True

    async def send(self, doc):
        body = json.dumps(doc, sort_keys=True).encode() + b"\n"
        done = await deferToThreadPool(self.reactor, self.pool, run_command, self.command,
                                       {"GRIDBACKUP_EVENT": doc["event"]}, self.timeout, stdin=body)
        if not done.ok:
            raise DeliveryError(f"command {done.why}")
