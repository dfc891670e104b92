"""The daemon as a whole: its status, a backup started now, and the Prometheus metrics."""

import os
import time

from gridbackupd.api import browse, metrics
from gridbackupd.api.http import Raw, Router
from gridbackupd.api.routes.snapshots import summary_doc
from gridbackupd.state import snapshots

router = Router()


@router.route("GET", "/v1/status")
async def status(daemon, request):
    last = snapshots.last_complete(daemon.conn)
    last_doc = summary_doc(last) if last else None
    if last_doc:
        last_doc["age_seconds"] = round(time.time() - (last_doc["finished"] or last_doc["time"]), 1)
    return 200, {
        "state": daemon.state,
        "scan": daemon.jobs.status() if daemon.jobs else {"running": False},
        "upload": daemon.uploader.status() if daemon.uploader else None,
        "last_snapshot": last_doc,
        "grid": daemon.grid_status(),
        "recovery": daemon.recovery,
        "maintenance": daemon.maintenance.status() if daemon.maintenance else None,
        "api": daemon.api.status() if daemon.api is not None else None,
        "warnings": config_warnings(daemon.config),
        "console": {"amber_after": daemon.config.console_amber_after,
                    "red_after": daemon.config.console_red_after},
        "watch": daemon.watch_status(),
        "protected_as_of": daemon.protected_as_of(),
    }


def config_warnings(config):
    """
    What in the configuration is likely a mistake, one line each: a backup
    path that does not exist (each snapshot also lists it as an error).
    """
    warnings = []
    for path in config.backup.paths:
        if not os.path.lexists(path):
            shown = browse.path_doc(os.fsencode(path))["path"]
            warnings.append(f"[backup] paths: {shown} does not exist")
    return warnings


@router.route("POST", "/v1/backups")
async def start_backup(daemon, request):
    daemon.require_writable()
    snapshot_id = daemon.jobs.request()
    return 202, {"id": snapshot_id}


@router.route("GET", "/metrics")
async def get_metrics(daemon, request):
    registry = getattr(daemon, "_metrics_registry", None)
    if registry is None:
        registry = daemon._metrics_registry = metrics.registry_for(daemon)
    return 200, Raw(metrics.render(registry), metrics.CONTENT_TYPE)
