"""
Disaster recovery: rebuild the local state from the grid, given nothing but
the root cap.

Everything a restore or a deduplicating backup needs is reachable from the
root (docs/FORMAT.md): ``gridbackup.json``; ``commits/``, whose immutable
directories hold packs and the index segment that describes them; and
``snapshots/``, one backup log per snapshot, named by the snapshot's id (in
layout version 2, ``commit-days/`` and ``snapshot-days/`` hold the same
children in day buckets).
``recover_state`` reads them back into the database:

- every commit: its packs (``packs``), their blobs and the blobs the
  segment holds inline (``blobs``, state ``committed``), the commit itself
  (``commits``, linked).  A segment that cannot be read or parsed is
  replaced by the trailers of the commit's packs (one ranged GET of each
  pack's tail), which list the same blobs; only inline blobs, which live in
  the segment alone, are then lost, and the snapshots that need them say so
  (their files are listed as pending on restore);
- every snapshot log: downloaded to ``logs/<id>.log`` (the next scan
  compares with it and reads only what changed), a ``snapshots`` row with
  the same id as on the old machine, its kind, parent, host, paths, tags
  and times from the log's header, its file and byte counts from its
  entries (through the chain of logs for an incremental one).  It is
  ``complete`` when every blob it names is in the recovered index.

Every step is idempotent (rows are inserted or replaced by their keys), so a
recovery that was interrupted is simply run again; ``meta.recovery`` says
``pending`` until it has finished.  Recovery only reads the grid: it works
with a read-only root cap too.
"""

import json
import os

import attr
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gridbackupd.changes import compute
from gridbackupd.errors import FormatError, GridBackupError, TahoeError, TahoeTooLarge
from gridbackupd.format import chain
from gridbackupd.format.index import (
    MAX_SEGMENT,
    MAX_SETTINGS,
    IndexFormatError,
    UnknownLayoutVersion,
    parse_index_segment,
    parse_settings,
)
from gridbackupd.format.logfields import LogFormatError, check_id
from gridbackupd.format.logframe import MAX_LOG
from gridbackupd.format.logreader import read_header
from gridbackupd.format.pack import FOOTER, PackFormatError, check_pack_size, parse_trailer, trailer_length
from gridbackupd.grid.caps import expected_size
from gridbackupd.grid.layout import (
    COMMIT_DAYS,
    COMMITS,
    INDEX,
    PACK_PREFIX,
    SETTINGS,
    SNAPSHOT_DAYS,
    SNAPSHOTS,
    read_index,
)
from gridbackupd.model import FILE
from gridbackupd.state import blobs as blobstate
from gridbackupd.state import commits as commitstate
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots

PARALLEL = 4
# A snapshot's byte count must fit an SQLite integer, whatever its log says.
MAX_SNAPSHOT_BYTES = 2**63 - 1
# The first ranged GET of a pack's tail; a longer trailer costs one more GET.
TAIL = 64 * 1024
META_KEY = "recovery"

log = Logger()


class RecoveryError(GridBackupError):
    """The grid does not hold a backup set this code can recover."""


def needs_recovery(conn):
    return dbmod.get_meta(conn, META_KEY) == "pending"


def mark_pending(conn):
    with dbmod.transaction(conn):
        dbmod.set_meta(conn, META_KEY, "pending")


@attr.define
class RecoveryReport:
    commits: int = 0
    packs: int = 0
    blobs: int = 0
    inline_blobs: int = 0
    snapshots: int = 0
    from_trailers: list = attr.Factory(list)  # commits whose segment was unreadable
    errors: list = attr.Factory(list)  # {"what", "reason"}

    def as_dict(self):
        return attr.asdict(self)


async def recover_state(reactor, conn, db_path, client, rootcap, logs_dir, pool, parallel=PARALLEL):
    """
    Fill the database at ``db_path`` (open as ``conn``) from the backup set
    under ``rootcap``; download the snapshot logs to ``logs_dir``.  Returns a
    RecoveryReport.  Raises RecoveryError if the root holds no backup set,
    TahoeError if the grid fails (the next start tries again).
    """
    report = RecoveryReport()
    root = await client.list_dir(rootcap)
    if not root:
        # A new, empty backup set: nothing to recover.
        _finish(conn, report)
        return report
    if SETTINGS not in root:
        raise RecoveryError(f"the root cap does not lead to a gridbackup backup set (no {SETTINGS})")
    try:
        settings = parse_settings(await client.download(root[SETTINGS].cap, max_size=MAX_SETTINGS))
    except UnknownLayoutVersion as e:
        raise RecoveryError(str(e))
    except (IndexFormatError, TahoeTooLarge) as e:
        raise RecoveryError(f"gridbackup.json: {e}")
    # Version 2 links logs and commits in day buckets; a conversion cut short
    # may have left the other version's directories too: the settings say
    # which version is whole.
    logs_dir_name, commits_dir_name = (SNAPSHOTS, COMMITS) if settings["version"] == 1 else (
        SNAPSHOT_DAYS, COMMIT_DAYS)
    missing = [name for name in (logs_dir_name, commits_dir_name) if name not in root]
    if missing:
        raise RecoveryError(f"the root cap does not lead to a gridbackup backup set (no {', '.join(missing)})")
    with dbmod.transaction(conn):
        dbmod.set_meta(conn, "settings", json.dumps(settings, sort_keys=True))

    sem = DeferredSemaphore(parallel)

    def limited(coro_fn, *args):
        return sem.run(lambda: Deferred.fromCoroutine(coro_fn(*args)))

    commits = await _children(client, root[commits_dir_name].cap, settings["version"])
    await gatherResults([
        limited(_recover_commit, client, conn, name, child.cap, report)
        for name, child in sorted(commits.items())
    ])
    log.info("recovered {commits} commits: {packs} packs, {blobs} blobs, {inline} inline blobs",
             commits=report.commits, packs=report.packs, blobs=report.blobs, inline=report.inline_blobs)

    os.makedirs(logs_dir, exist_ok=True)
    logs = await _children(client, root[logs_dir_name].cap, settings["version"])
    paths = {}

    async def fetch(name, child):
        path = await _download_log(client, name, child.cap, logs_dir, report)
        if path is not None:
            paths[name] = (path, child.ro_uri or child.cap)

    await gatherResults([limited(fetch, n, c) for n, c in sorted(logs.items())])
    # Headers and counts in a worker thread (with its own connection: the
    # completeness check reads the blobs table), rows written here.
    described = await deferToThreadPool(reactor, pool, _describe_snapshots, db_path, logs_dir, paths)
    rows = []
    for row, problem in described:
        if problem is not None:
            report.errors.append({"what": f"snapshot {row}", "reason": problem})
        else:
            rows.append(row)
    snapshots.put_recovered(conn, rows)
    report.snapshots += len(rows)
    # Their figures and change rows, once, by comparing each with the one before.
    await deferToThreadPool(reactor, pool, compute.fill_missing, db_path)
    _finish(conn, report)
    log.info("recovered {n} snapshots from the grid ({errors} problems)",
             n=report.snapshots, errors=len(report.errors))
    return report


async def _children(client, cap, version):
    """The logs or commits of a set: one directory's children (v1), or its buckets' (v2)."""
    return await client.list_dir(cap) if version == 1 else await read_index(client, cap)


def _finish(conn, report):
    with dbmod.transaction(conn):
        dbmod.set_meta(conn, META_KEY, "done")
        dbmod.set_meta(conn, "recovery_report", json.dumps(report.as_dict()))


async def _recover_commit(client, conn, name, cap, report):
    """One commit into the database; a commit that cannot be read is reported and left out."""
    try:
        await _read_commit(client, conn, name, cap, report)
    except (TahoeError, FormatError) as e:
        report.errors.append({"what": f"commit {name}", "reason": str(e)})
        log.warn("commit {name} cannot be recovered: {e}", name=name, e=e)


async def _read_commit(client, conn, name, cap, report):
    children = await client.list_dir(cap)
    packs = {}
    for pack_name, child in children.items():
        if not pack_name.startswith(PACK_PREFIX):
            continue
        try:
            packs[pack_name] = (child, _pack_size(child))
        except PackFormatError as e:
            # Its blobs are left out (those of the segment with them): the
            # snapshots that need them are then incomplete, and say so.
            report.errors.append({"what": f"{name}/{pack_name[:17]}", "reason": str(e)})
    blobs, inline = None, ()
    index = children.get(INDEX)
    if index is not None:
        try:
            segment = parse_index_segment(
                await client.download(index.cap, max_size=MAX_SEGMENT), set(children))
            blobs = [(b.hash, b.pack, b.offset, b.length, b.size, b.compression)
                     for b in segment.blobs if b.pack in packs]
            inline = segment.inline
        except (TahoeError, IndexFormatError) as e:
            log.warn("the index segment of {name} is unusable ({e}); reading its pack trailers",
                     name=name, e=e)
    if blobs is None:
        report.from_trailers.append(name)
        blobs = []
        for pack_name, (child, size) in sorted(packs.items()):
            try:
                for b in await _pack_trailer(client, child, size):
                    blobs.append((b.hash, pack_name, b.offset, b.length, b.size, b.compression))
            except (TahoeError, PackFormatError) as e:
                report.errors.append({"what": f"{name}/{pack_name[:17]}", "reason": str(e)})
    pack_rows = [(pack_name, child.ro_uri or child.cap, size) for pack_name, (child, size) in packs.items()]
    commitstate.record_recovered(conn, name, cap, pack_rows, blobs, inline)
    report.commits += 1
    report.packs += len(packs)
    report.blobs += len(blobs)
    report.inline_blobs += len(inline)


def _pack_size(child):
    """A pack's size as its directory entry (else its cap) gives it, checked against the format's bounds."""
    size = child.size if child.size is not None else expected_size(child.cap)
    if size is None:
        raise PackFormatError("the pack's size is not known")
    return check_pack_size(size)


async def _pack_trailer(client, child, size):
    """
    The blob list of a pack, from its trailer: one ranged GET of its tail
    (two if long, the footer's length checked against MAX_TRAILER first).
    """
    start = max(0, size - TAIL)
    tail = await client.download(child.cap, start, size - start)
    need = trailer_length(tail, size) + FOOTER.size
    if need > len(tail):
        tail = await client.download(child.cap, size - need, need)
    return parse_trailer(tail, size)


async def _download_log(client, snapshot_id, cap, logs_dir, report):
    try:
        check_id(snapshot_id, "snapshot id")
    except ValueError as e:
        report.errors.append({"what": f"snapshot {snapshot_id!r:.80}", "reason": f"not a snapshot id: {e}"})
        return None
    path = os.path.join(logs_dir, snapshot_id + ".log")
    tmp = path + ".recovering"
    try:
        with open(tmp, "wb") as f:
            await client.download_to(cap, f, max_size=MAX_LOG)
        os.replace(tmp, path)
    except TahoeError as e:
        report.errors.append({"what": f"snapshot {snapshot_id}", "reason": str(e)})
        if os.path.exists(tmp):
            os.unlink(tmp)
        return None
    return path


def _describe_snapshots(db_path, logs_dir, paths):
    """
    In a worker thread: a snapshots row for each downloaded log, or the
    problem that keeps it out, as ``(row or id, problem or None)`` pairs.
    """
    conn = dbmod.read_only_connection(db_path)
    try:
        known = {snapshot_id: path for snapshot_id, (path, _) in paths.items()}
        result: list[tuple[dict | str, str | None]] = []
        for snapshot_id, (path, cap) in sorted(paths.items()):
            try:
                result.append((_describe(conn, snapshot_id, path, cap, known), None))
            except (OSError, LogFormatError) as e:
                result.append((snapshot_id, str(e)))
        return result
    finally:
        conn.close()


def _describe(conn, snapshot_id, path, cap, known):
    header = read_header(path)
    if header.snapshot != snapshot_id:
        raise LogFormatError(
            f"the log linked as {snapshot_id} says it is snapshot {header.snapshot}")
    files = nbytes = 0
    missing = 0
    with chain.open_chain(path, known.get) as (_, records):
        for entry in records:
            if entry.kind != FILE:
                continue
            files += 1
            nbytes += entry.size
            for h, _ in entry.blobs:
                if not blobstate.known(conn, h):
                    missing += 1
    if nbytes > MAX_SNAPSHOT_BYTES:
        raise LogFormatError(f"its files add up to {nbytes} bytes, more than {MAX_SNAPSHOT_BYTES}")
    return {
        "id": snapshot_id,
        "state": "complete" if not missing else "incomplete",
        "kind": header.kind,
        "parent": header.parent,
        "host": header.host,
        "paths": json.dumps([os.fsdecode(p) for p in header.paths]),
        "tags": json.dumps(list(header.tags)),
        "started": header.started,
        "finished": header.finished or None,
        "files": files,
        "bytes": nbytes,
        "log_path": path,
        "log_cap": cap,
        "complete": int(not missing),
    }
