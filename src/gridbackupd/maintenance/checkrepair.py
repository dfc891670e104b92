"""
The check (and repair) job: is every object of the backup set still
recoverable from the grid, and can the grid be brought back to full
strength?

A Tahoe check answers 200 whatever it finds: the health is in the JSON, so
an answer that says ``healthy: false`` is counted, repaired if it can be,
and reported.  For an object that cannot be recovered any more the report
says what is lost: the snapshots and files whose data it held, found from
the local database and logs (the grid cannot be asked: that is the object
that is gone).
"""

from __future__ import annotations

import random
import re

from twisted.logger import Logger

from gridbackupd.errors import TahoeBadResponse, TahoeSharesMissing
from gridbackupd.format.chain import ChainError, snapshot_entries
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.grid.caps import scrub_caps
from gridbackupd.grid.layout import INDEX, LOCK, PACK_PREFIX, SETTINGS, commit_path, layout_dir, log_path
from gridbackupd.maintenance.reachable import ROOT, ReachableRun, for_each_reachable
from gridbackupd.state import blobs, snapshots
from gridbackupd.state import db as dbmod

__all__ = ["affected_by", "check_and_repair", "classify"]

_log = Logger(namespace="gridbackupd.maintenance.checkrepair")

# Per unrecoverable object, the files listed (the rest only counted).
MAX_FILES_LISTED = 100
# Unhealthy and unrecoverable objects listed in the result.
MAX_OBJECTS_LISTED = 100

_PACK = re.compile(rf"({PACK_PREFIX}[0-9a-f]+)\Z")
_LAYOUT_FILES = {
    SETTINGS: "the backup set's settings: no snapshot can be restored without them",
    LOCK: "the writer lock: a new writer cannot take over safely",
}


def _results(answer, key=None) -> dict:
    part = answer.get(key) if key else answer
    results = part.get("results") if isinstance(part, dict) else None
    if not isinstance(results, dict) or not isinstance(results.get("healthy"), bool):
        raise TahoeBadResponse("check", 200, f"no healthy flag in {key or 'the answer'}")
    return results


def classify(answer: dict, repair: bool) -> dict:
    """
    What one check (or check-and-repair) answer says, as plain flags:
    ``healthy`` (before any repair), ``repair_attempted``, ``healthy_after``,
    ``recoverable_after``, ``corrupt_shares`` (found before repair) and
    ``summary``.  Raises TahoeBadResponse for an answer of another shape.
    """
    if repair and "pre-repair-results" in answer:
        pre = _results(answer, "pre-repair-results")
        post = _results(answer, "post-repair-results")
        attempted = answer.get("repair-attempted") is True
        before = (answer.get("pre-repair-results") or {}).get("summary", "")
        after = (answer.get("post-repair-results") or {}).get("summary", "")
        summary = f"{before}; after the repair: {after}" if attempted else before
    else:
        pre = post = _results(answer)
        attempted = False
        summary = answer.get("summary", "")
    # Tahoe leaves "recoverable" out only for literal objects, which are
    # healthy: anything unhealthy without the flag is not trusted to be.
    return {
        "healthy": pre["healthy"],
        "repair_attempted": attempted,
        "healthy_after": post["healthy"],
        "recoverable_after": post.get("recoverable", post["healthy"]) is True,
        "corrupt_shares": int(pre.get("count-corrupt-shares") or 0),
        "summary": scrub_caps(str(summary or "")),
    }


def _descendants(conn, snapshot_id) -> list[str]:
    """``snapshot_id`` and every snapshot whose chain of parents includes it."""
    children = snapshots.children(conn)
    found, todo = [], [snapshot_id]
    while todo:
        sid = todo.pop(0)
        if sid in found:
            continue
        found.append(sid)
        todo.extend(sorted(children.get(sid, ())))
    return found


def _path_text(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _search_logs(conn, wanted, logs_dir):
    """
    One pass over the entries of every snapshot whose log is on the grid:
    ``wanted`` maps a key (an object's name) to a set of blob hashes; the
    answer maps each key to the snapshots and files that reference any of
    them.  Snapshots whose local log cannot be read are listed apart.
    """
    found: dict[str, dict] = {key: {"snapshots": [], "files": [], "files_count": 0} for key in wanted}
    by_hash: dict[str, list[str]] = {}
    for key, hashes in wanted.items():
        for h in hashes:
            by_hash.setdefault(h, []).append(key)
    not_searched: list[dict] = []
    if not by_hash:
        return found, not_searched
    for sid in snapshots.ids_on_grid(conn):
        hits = set()
        try:
            for entry in snapshot_entries(sid, snapshots.log_resolver(conn, logs_dir)):
                keys = {key for h, _ in entry.blobs for key in by_hash.get(h, ())}
                for key in keys:
                    report = found[key]
                    report["files_count"] += 1
                    if len(report["files"]) < MAX_FILES_LISTED:
                        report["files"].append({"snapshot": sid, "path": _path_text(entry.path)})
                hits |= keys
        except (ChainError, LogFormatError, OSError) as e:
            not_searched.append({"snapshot": sid, "reason": scrub_caps(str(e))[:200]})
            continue
        for key in hits:
            found[key]["snapshots"].append(sid)
    return found, not_searched


def _blobs_lost(conn, name):
    """The blob hashes lost with a pack, an index or a commit; None for other objects."""
    found = commit_path(name)
    if found is None:
        return None
    commit, child = found
    if child is not None and (pack := _PACK.match(child)) is not None:
        return blobs.hashes_in_pack(conn, pack.group(1))
    if child is None or child == INDEX:
        return blobs.hashes_in_commit(conn, commit)
    return None


def affected_by(conn, names, logs_dir: str | None) -> list[dict]:
    """
    What is lost with each object of ``names`` (paths under the root), from
    the local database ``conn`` and the local logs: blocking, for a worker
    thread with its own connection.  Each report has ``name``, ``kind``
    (``pack``, ``commit``, ``snapshot-log``, ``directory``, ``file`` or
    ``unknown``) and ``affects`` (a sentence); a pack or commit also
    ``blobs``, ``snapshots``, ``files`` (up to 100 ``{"snapshot", "path"}``),
    ``files_count``, ``files_truncated`` and ``snapshots_not_searched``; a
    snapshot log ``snapshots``.
    """
    reports, wanted = [], {}
    for name in names:
        if name == ROOT or layout_dir(name):
            under = "the whole backup set" if name == ROOT else f"everything under {name}/"
            reports.append({"name": name, "kind": "directory", "affects": under})
        elif name in _LAYOUT_FILES:
            reports.append({"name": name, "kind": "file", "affects": _LAYOUT_FILES[name]})
        elif (log_id := log_path(name)) is not None:
            reports.append({
                "name": name, "kind": "snapshot-log",
                "affects": "these snapshots (the snapshot and those whose chain includes it)",
                "snapshots": _descendants(conn, log_id)})
        else:
            hashes = _blobs_lost(conn, name)
            if hashes is None:
                reports.append({"name": name, "kind": "unknown", "affects":
                                "not part of the known layout: nothing known depends on it"})
                continue
            is_pack = (commit_path(name) or (None, None))[1] not in (None, INDEX)
            reports.append({
                "name": name, "kind": "pack" if is_pack else "commit",
                "affects": ("the files whose data is in this pack" if is_pack else
                            "the files whose data is in this commit (its index locates it)"),
                "blobs": len(hashes)})
            wanted[name] = hashes
    found, not_searched = _search_logs(conn, wanted, logs_dir)
    for report in reports:
        if report["name"] in found:
            report.update(found[report["name"]])
            report["files_truncated"] = report["files_count"] > len(report["files"])
            report["snapshots_not_searched"] = not_searched
    return reports


def _affected_all(db_path, names, logs_dir) -> list[dict]:
    with dbmod.worker_connection(db_path) as conn:
        return affected_by(conn, names, logs_dir)


async def check_and_repair(ctx) -> dict:
    """
    Check every object reachable from ``ctx.rootcap``; repair the unhealthy.

    Options: ``repair`` (default True), ``verify_fraction`` (0 to 1, default
    0: the share of objects whose every share is downloaded and verified,
    picked at random), ``parallel`` (default 8), ``seed`` (for the random
    pick, in tests).  Progress: ``done``, ``total``, ``errors``,
    ``skipped``, ``resumed``, ``unhealthy``, ``repaired``.

    The result: ``objects``, ``checked``, ``verified``, ``healthy``,
    ``unhealthy`` (before repair), ``repaired`` (repair attempted, healthy
    after), ``still_unhealthy``, ``unrecoverable``, ``corrupt_shares``,
    ``skipped`` (literal), ``resumed``, ``failed`` (the check itself
    failed), ``failures``, ``failures_truncated``, ``repair``,
    ``unhealthy_objects`` (up to 100 ``{"name", "summary", "repaired",
    "recoverable"}``) and ``unrecoverable_objects`` (for each, what it
    affects: see ``affected_by``).  An object still unhealthy is not
    marked done, so a resumed run checks (and reports) it again.
    """
    repair = bool(ctx.options.get("repair", True))
    fraction = float(ctx.options.get("verify_fraction", 0.0))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"verify_fraction must be between 0 and 1, not {fraction!r}")
    rng = random.Random(ctx.options.get("seed"))
    counts = dict(checked=0, verified=0, healthy=0, unhealthy=0, repaired=0,
                  still_unhealthy=0, unrecoverable=0, corrupt_shares=0)
    unhealthy_objects: list[dict] = []
    unrecoverable = []

    run = ReachableRun(ctx.progress)

    def update_progress():
        run.problems = counts["still_unhealthy"]
        ctx.progress.update(unhealthy=counts["unhealthy"], repaired=counts["repaired"])
        run.update_progress()

    update_progress()

    async def check(obj):
        verify = fraction > 0 and rng.random() < fraction
        try:
            answer = await ctx.client.check(obj.cap, verify=verify, repair=repair)
            state = classify(answer, repair)
        except TahoeSharesMissing:
            if not repair:
                raise
            # Tahoe 1.20's repairer fails with a 410 (NoSharesError) when it
            # cannot download an immutable object: the check alone says how
            # bad it is.
            answer = await ctx.client.check(obj.cap, verify=verify)
            state = classify(answer, False)
            state["repair_attempted"] = True
        counts["checked"] += 1
        counts["verified"] += verify
        counts["corrupt_shares"] += state["corrupt_shares"]
        if state["healthy"]:
            counts["healthy"] += 1
            return True
        counts["unhealthy"] += 1
        fixed = state["repair_attempted"] and state["healthy_after"]
        if fixed:
            counts["repaired"] += 1
        else:
            counts["still_unhealthy"] += 1
            if not state["recoverable_after"]:
                counts["unrecoverable"] += 1
                unrecoverable.append(obj.name)
        if len(unhealthy_objects) < MAX_OBJECTS_LISTED:
            unhealthy_objects.append({"name": obj.name, "summary": state["summary"],
                                      "repaired": fixed,
                                      "recoverable": state["recoverable_after"]})
        _log.warn("{job}: {name} is not healthy ({summary}); repaired: {fixed}",
                  job=ctx.job_id, name=obj.name, summary=state["summary"], fixed=fixed)
        update_progress()
        return fixed

    await for_each_reachable(ctx, check, run=run)
    update_progress()

    names = sorted(unrecoverable)[:MAX_OBJECTS_LISTED]
    logs_dir = ctx.statedir.logs
    affected = await ctx.in_thread(_affected_all, ctx.db_path, names, logs_dir) if names else []
    result = run.summary()
    result.update(counts)
    result["repair"] = repair
    result["unhealthy_objects"] = sorted(unhealthy_objects, key=lambda o: o["name"])
    result["unrecoverable_objects"] = affected
    _log.info("{job}: {checked} checked, {unhealthy} unhealthy, {repaired} repaired, "
              "{unrecoverable} unrecoverable, {failed} failed", job=ctx.job_id,
              failed=run.failed, **{k: counts[k] for k in
                                    ("checked", "unhealthy", "repaired", "unrecoverable")})
    return result
