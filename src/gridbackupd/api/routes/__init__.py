"""
The API's endpoints, one module per resource, joined in one routing table.

Handlers read the daemon's parts (``daemon.conn``, ``daemon.jobs``,
``daemon.uploader``, ``daemon.restorer``) and never block: every database
read is short, logs are read in worker threads, and long work is only queued.
"""

from gridbackupd.api.http import Router
from gridbackupd.api.routes import (
    history,
    maintenance,
    notifications,
    restores,
    series,
    snapshots,
    status,
    uploads,
)

router = Router(status.router, snapshots.router, restores.router, uploads.router, maintenance.router,
                series.router, notifications.router, history.router)
