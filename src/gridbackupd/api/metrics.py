"""
The daemon's figures in the Prometheus text format, for GET /metrics.

A collector reads the daemon's live state at each scrape (the same figures
GET /v1/status shows) and a few short database counts; nothing is kept
between scrapes.  Each daemon has its own registry, so several daemons in
one process (the tests) do not mix their figures.

Alert on ``gridbackup_protection_age_seconds``: it grows without bound when
backups stop completing, and stays near 0 while the paths are watched and
every change is in a complete snapshot (quiet is not stale).
"""

import json
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gridbackupd.state import restores, snapshots

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SNAPSHOT_STATES = ("queued", "scanning", "uploading", "complete", "incomplete", "failed")
_RESTORE_STATES = restores.STATES


def _gauge(name, doc, value, labels=None):
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if labels:
        g.add_metric(list(labels.values()), value)
    else:
        g.add_metric([], value)
    return g


class DaemonCollector:
    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        d = self.daemon
        state = GaugeMetricFamily("gridbackup_state", "1 for the state the daemon is in", labels=["state"])
        states = ("starting", "waiting-for-grid", "recovering", "ready", "error")
        for s in states:
            state.add_metric([s], 1.0 if d.state == s else 0.0)
        if d.state not in states:
            state.add_metric([d.state], 1.0)
        yield state

        scan = d.jobs.status() if d.jobs else {"running": False}
        yield _gauge("gridbackup_scan_running", "1 while a scan runs", 1.0 if scan.get("running") else 0.0)
        for key, doc in (("entries", "entries walked by the running scan"),
                         ("files", "files seen by the running scan"),
                         ("bytes", "bytes of the files seen by the running scan"),
                         ("bytes_hashed", "bytes read and hashed by the running scan"),
                         ("errors", "errors (unreadable files and the like) of the running scan")):
            yield _gauge(f"gridbackup_scan_{key}", doc, float(scan.get(key) or 0))

        watch = d.watch_status()
        g = GaugeMetricFamily("gridbackup_watch_state", "1 for the state the watcher is in", labels=["state"])
        for s in ("starting", "watching", "degraded", "off"):
            g.add_metric([s], 1.0 if watch["state"] == s else 0.0)
        yield g
        yield _gauge("gridbackup_watch_directories", "directories watched", float(watch["directories"]))
        yield _gauge("gridbackup_watch_dirty_directories", "directories changed and not yet in a scan",
                     float(watch["dirty"]))

        upload = d.uploader.status() if d.uploader else {}
        yield _gauge("gridbackup_upload_queue_blobs", "blobs waiting for upload (queue depth)",
                     float(upload.get("pending_blobs") or 0))
        yield _gauge("gridbackup_upload_queue_bytes", "bytes waiting for upload",
                     float(upload.get("pending_bytes") or 0))
        yield _gauge("gridbackup_upload_in_flight_blobs", "blobs in packs being built or uploaded",
                     float(upload.get("in_flight_blobs") or 0))
        c = CounterMetricFamily("gridbackup_upload_bytes", "bytes uploaded since the daemon started")
        c.add_metric([], float(upload.get("uploaded_bytes") or 0))
        yield c
        c = CounterMetricFamily("gridbackup_upload_packs", "packs uploaded since the daemon started")
        c.add_metric([], float(upload.get("uploaded_packs") or 0))
        yield c
        yield _gauge("gridbackup_upload_rate_bytes_per_second", "mean upload rate since the start",
                     float(upload.get("rate_bytes_per_second") or 0))
        yield _gauge("gridbackup_upload_consecutive_failures",
                     "upload rounds failed in a row (0 once one succeeds)",
                     float(upload.get("consecutive_failures") or 0))
        yield _gauge("gridbackup_upload_last_error", "1 while the uploader's last attempt failed",
                     1.0 if upload.get("last_error") else 0.0)
        yield _gauge("gridbackup_upload_paused", "1 while uploads are paused",
                     1.0 if upload.get("paused") else 0.0)
        paused_by = GaugeMetricFamily("gridbackup_upload_paused_by", "1 for who holds uploads",
                                      labels=["by"])
        for by in ("user", "allow_if", "schedule"):
            paused_by.add_metric([by], 1.0 if upload.get("paused_by") == by else 0.0)
        yield paused_by
        if upload:
            schedule = upload.get("schedule") or {}
            rate = schedule.get("rate")
            yield _gauge("gridbackup_upload_rate_limit_bytes_per_second",
                         "the upload limit now, as the schedule or max_rate says (0 paused, +Inf unlimited)",
                         float("inf") if rate is None else float(rate))
            if schedule.get("next_change") is not None:
                yield _gauge("gridbackup_upload_schedule_next_change_timestamp_seconds",
                             "when the upload schedule's rule or rate changes next (Unix time)",
                             float(schedule["next_change"]))
        yield _gauge("gridbackup_stalled",
                     "1 while a snapshot stays uploading with nothing pending, in flight or retrying",
                     1.0 if upload.get("stalled") else 0.0)

        grid = d.grid_status()
        yield _gauge("gridbackup_grid_servers_connected", "storage servers connected",
                     float(grid.get("servers_connected") or 0))
        yield _gauge("gridbackup_grid_servers_needed", "storage servers needed for an upload",
                     float(grid.get("servers_needed") or 0))

        if d.conn is not None:
            counts = snapshots.count_by_state(d.conn)
            g = GaugeMetricFamily("gridbackup_snapshots", "snapshots by state", labels=["state"])
            for s in sorted(set(_SNAPSHOT_STATES) | set(counts)):
                g.add_metric([s], float(counts.get(s, 0)))
            yield g
            counts = restores.count_by_state(d.conn)
            g = GaugeMetricFamily("gridbackup_restores", "restores by state", labels=["state"])
            for s in sorted(set(_RESTORE_STATES) | set(counts)):
                g.add_metric([s], float(counts.get(s, 0)))
            yield g
            last = snapshots.newest_complete_time(d.conn)
            if last is not None:
                yield _gauge("gridbackup_last_complete_snapshot_timestamp_seconds",
                             "when the newest complete snapshot finished (Unix time)", float(last))
                yield _gauge("gridbackup_last_complete_snapshot_age_seconds",
                             "seconds since the newest complete snapshot finished",
                             max(0.0, time.time() - float(last)))
            protected = d.protected_as_of()
            if protected is not None:
                yield _gauge("gridbackup_protected_as_of_timestamp_seconds",
                             "up to when every change is in a complete snapshot (Unix time)", float(protected))
                yield _gauge("gridbackup_protection_age_seconds",
                             "seconds since protected_as_of: alert when this grows",
                             max(0.0, time.time() - float(protected)))
            errors = snapshots.newest_scanned_errors(d.conn)
            if errors is not None:
                yield _gauge("gridbackup_last_snapshot_errors", "errors recorded in the newest scanned snapshot",
                             float(len(json.loads(errors))))

        if d.maintenance is not None:
            yield from _maintenance_metrics(d.maintenance.status())

        restorer = d.restorer
        live = list(restorer.progress.values()) if restorer is not None else []
        yield _gauge("gridbackup_restore_running_bytes_done", "bytes written by running restores",
                     float(sum(p.bytes_done for p in live)))
        yield _gauge("gridbackup_restore_running_bytes_total", "bytes to write by running restores",
                     float(sum(p.bytes_total for p in live)))


def _maintenance_metrics(status):
    """Per job kind: running, its progress, when the last run finished and whether it failed."""
    families = {
        "running": GaugeMetricFamily("gridbackup_job_running", "1 while a job of this kind runs",
                                     labels=["kind"]),
        "done": GaugeMetricFamily("gridbackup_job_items_done",
                                  "objects or files the running job has finished", labels=["kind"]),
        "total": GaugeMetricFamily("gridbackup_job_items_total",
                                   "objects or files the running job knows of", labels=["kind"]),
        "errors": GaugeMetricFamily("gridbackup_job_errors", "errors of the running job so far",
                                    labels=["kind"]),
        "finished": GaugeMetricFamily("gridbackup_job_last_finished_timestamp_seconds",
                                      "when the last run of this kind finished (Unix time)",
                                      labels=["kind"]),
        "failed": GaugeMetricFamily("gridbackup_job_last_failed",
                                    "1 if the last run of this kind failed", labels=["kind"]),
    }
    for kind, doc in sorted(status.items()):
        families["running"].add_metric([kind], float(doc["running"]))
        progress = doc["progress"] or {}
        for key in ("done", "total", "errors"):
            if isinstance(progress.get(key), (int, float)):
                families[key].add_metric([kind], float(progress[key]))
        if doc["last"] is not None:
            families["finished"].add_metric([kind], float(doc["last"]["finished"]))
            families["failed"].add_metric([kind], float(doc["last"]["state"] == "failed"))
    yield from families.values()


def registry_for(daemon):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return registry


def render(registry):
    return generate_latest(registry)
