"""
Pruning: giving the grid back what no kept snapshot needs.

A blob is live when a snapshot still here uses it (every entry of every
published or uploading snapshot, streamed from the local logs, plus the
queue of unpublished ones).  A committed blob that is not live is dead.
A linked commit holding a dead blob is replaced by one without it: its
packs with live blobs stay (same caps), a pack with none is left out, and a
pack mostly dead (``repack_threshold`` of its bytes) is left out too after
its live blobs are copied, checked against their hashes, into new packs of
a new commit.

Order, so that a crash at any point loses nothing: new packs and commits
are uploaded first; then one database transaction points every live blob
at its new place, drops the dead ones and marks the old commits retired;
then the publisher links the new commits and only after them unlinks the
retired ones (``Publisher.replace_commits``, which also finishes the work
of a run killed after its transaction).  The caller holds the scan lock, so
no scan dedups against a blob while it is being dropped, and the writer
lock on the grid is renewed all along, so no other daemon writes the set.
"""

import hashlib
import os

import attr
from twisted.logger import Logger

from gridbackupd.errors import GridBackupError
from gridbackupd.format import chain
from gridbackupd.format.index import commit_name, encode_index_segment
from gridbackupd.restore import plan as restoreplan
from gridbackupd.state import db as dbmod
from gridbackupd.upload import packer

log = Logger()

REPACK_THRESHOLD = 0.5


class PruneError(GridBackupError):
    """Pruning cannot tell what is live; nothing was changed."""


@attr.frozen
class PackFate:
    id: int
    name: str
    cap: str = attr.field(repr=False)
    size: int
    live_bytes: int
    fate: str  # "keep", "drop" or "repack"


@attr.frozen
class CommitPlan:
    name: str
    packs: tuple  # PackFate
    dead_blobs: int


@attr.frozen
class PrunePlan:
    commits: tuple  # CommitPlan of the commits to replace
    live_blobs: int
    dead_blobs: int

    def packs(self, fate):
        return [p for c in self.commits for p in c.packs if p.fate == fate]

    def summary(self):
        dropped, repacked = self.packs("drop"), self.packs("repack")
        return {
            "live_blobs": self.live_blobs,
            "dead_blobs": self.dead_blobs,
            "commits_replaced": len(self.commits),
            "packs_dropped": len(dropped),
            "packs_repacked": len(repacked),
            "bytes_dropped": sum(p.size for p in dropped),
            "bytes_repacked": sum(p.size for p in repacked),
            "bytes_moved": sum(p.live_bytes for p in repacked),
        }


class _Session:
    """
    A connection of the prune's own, in worker threads only, holding the
    live set in a temporary table from the plan to the final transaction.
    """

    def __init__(self, db_path, logs_dir):
        self.conn = dbmod.connect(db_path, isolation_level=None, check_same_thread=False)
        self.logs_dir = logs_dir

    def close(self):
        self.conn.close()

    def find_live(self, exclude=()):
        conn = self.conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS live (hash TEXT PRIMARY KEY) WITHOUT ROWID")
        conn.execute("DELETE FROM live")
        snapshots = [r[0] for r in conn.execute(
            "SELECT id FROM snapshots WHERE state IN ('uploading', 'complete', 'incomplete')")]
        for snapshot_id in snapshots:
            if snapshot_id in exclude:
                continue
            batch = []
            try:
                for entry in chain.snapshot_entries(conn, snapshot_id, self.logs_dir):
                    batch.extend((h,) for h, _ in entry.blobs)
                    if len(batch) >= 10000:
                        conn.executemany("INSERT OR IGNORE INTO live VALUES (?)", batch)
                        batch = []
            except (OSError, chain.LogFormatError) as e:
                raise PruneError(
                    f"cannot read snapshot {snapshot_id} to know which blobs it uses, "
                    f"so nothing is pruned: {e}") from None
            conn.executemany("INSERT OR IGNORE INTO live VALUES (?)", batch)
        conn.execute("INSERT OR IGNORE INTO live SELECT hash FROM snapshot_blobs")

    def plan(self, repack_threshold, exclude=()):
        self.find_live(set(exclude))
        conn = self.conn
        live = conn.execute("SELECT count(*) FROM live").fetchone()[0]
        commits = []
        total_dead = 0
        for (name,) in conn.execute("SELECT name FROM commits WHERE linked = 1 ORDER BY name").fetchall():
            fates = []
            dead = 0
            for pack_id, pack_name, cap, size in conn.execute(
                    "SELECT id, name, cap, size FROM packs WHERE commit_name = ? ORDER BY name",
                    (name,)).fetchall():
                live_bytes, live_n, dead_n = conn.execute(
                    "SELECT coalesce(sum(CASE WHEN l.hash IS NOT NULL THEN b.length END), 0), "
                    "count(l.hash), count(*) - count(l.hash) "
                    "FROM blobs b LEFT JOIN live l ON l.hash = b.hash "
                    "WHERE b.pack_id = ? AND b.state = 'committed'", (pack_id,)).fetchone()
                dead += dead_n
                if live_n == 0:
                    fate = "drop"
                elif size and 1 - live_bytes / size >= repack_threshold:
                    fate = "repack"
                else:
                    fate = "keep"
                fates.append(PackFate(pack_id, pack_name, cap, size, live_bytes, fate))
            dead += conn.execute(
                "SELECT count(*) FROM blobs b WHERE b.commit_name = ? AND b.pack_id IS NULL "
                "AND b.state = 'committed' AND b.hash NOT IN (SELECT hash FROM live)",
                (name,)).fetchone()[0]
            if dead:
                commits.append(CommitPlan(name, tuple(fates), dead))
                total_dead += dead
        return PrunePlan(tuple(commits), live, total_dead)

    def live_blobs_of(self, pack_ids):
        """(hash, offset, length, size, compression) of the live blobs of packs, by pack id."""
        out = {}
        for pack_id in pack_ids:
            out[pack_id] = self.conn.execute(
                "SELECT b.hash, b.offset, b.length, b.size, b.compression FROM blobs b "
                "JOIN live l ON l.hash = b.hash WHERE b.pack_id = ? AND b.state = 'committed' "
                "ORDER BY b.offset", (pack_id,)).fetchall()
        return out

    def segment_of(self, commit):
        """The index segment of a commit's survivors: kept packs' live blobs, live inline blobs."""
        kept = [p for p in commit.packs if p.fate == "keep"]
        rows = []
        for pack in kept:
            rows += [
                (h, pack.name, o, n, s, c) for h, o, n, s, c in self.conn.execute(
                    "SELECT b.hash, b.offset, b.length, b.size, b.compression FROM blobs b "
                    "JOIN live l ON l.hash = b.hash WHERE b.pack_id = ? AND b.state = 'committed'",
                    (pack.id,))
            ]
        inline = [(h, bytes(d)) for h, d in self.conn.execute(
            "SELECT b.hash, b.inline_data FROM blobs b JOIN live l ON l.hash = b.hash "
            "WHERE b.commit_name = ? AND b.pack_id IS NULL AND b.state = 'committed'",
            (commit.name,))]
        if not rows and not inline:
            return None
        return encode_index_segment(rows, inline)

    def apply(self, plan, replacements, new_packs, new_commit):
        """
        One transaction: the new packs and commits, every live blob at its
        place, the dead blobs and the left-out packs gone, the replaced
        commits retired (``linked = -1``: the publisher unlinks them).
        ``replacements``: old commit name -> (new name, cap) or None.
        ``new_packs``: (BuiltPack, cap) of the repacked blobs, all in
        ``new_commit`` (name, cap) unless that is None.
        """
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if new_commit is not None:
                conn.execute("INSERT OR REPLACE INTO commits (name, cap, linked) VALUES (?, ?, 0)",
                             new_commit)
            for built, cap in new_packs:
                conn.execute(
                    "INSERT INTO packs (name, cap, size, commit_name) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET cap = excluded.cap, "
                    "commit_name = excluded.commit_name",
                    (built.name, cap, built.size, new_commit[0]))
                pack_id = conn.execute(
                    "SELECT id FROM packs WHERE name = ?", (built.name,)).fetchone()[0]
                conn.executemany(
                    "UPDATE blobs SET pack_id = ?, offset = ?, length = ?, compression = ? "
                    "WHERE hash = ?",
                    [(pack_id, b.offset, b.length, b.compression, b.hash) for b in built.blobs])
            for commit in plan.commits:
                gone = [p.id for p in commit.packs if p.fate != "keep"]
                kept = [p.id for p in commit.packs if p.fate == "keep"]
                ids = [p.id for p in commit.packs]
                marks = ",".join("?" * len(ids))
                if ids:
                    conn.execute(
                        f"DELETE FROM blobs WHERE pack_id IN ({marks}) AND state = 'committed' "
                        "AND hash NOT IN (SELECT hash FROM live)", ids)
                conn.execute(
                    "DELETE FROM blobs WHERE commit_name = ? AND pack_id IS NULL "
                    "AND state = 'committed' AND hash NOT IN (SELECT hash FROM live)",
                    (commit.name,))
                if gone:
                    still = conn.execute(
                        f"SELECT count(*) FROM blobs WHERE pack_id IN ({','.join('?' * len(gone))})",
                        gone).fetchone()[0]
                    if still:
                        raise PruneError(f"{still} live blobs would lose their pack; nothing pruned")
                    conn.execute(f"DELETE FROM packs WHERE id IN ({','.join('?' * len(gone))})", gone)
                replacement = replacements.get(commit.name)
                if replacement is not None:
                    conn.execute("INSERT OR REPLACE INTO commits (name, cap, linked) VALUES (?, ?, 0)",
                                 replacement)
                    if kept:
                        conn.execute(
                            f"UPDATE packs SET commit_name = ? WHERE id IN ({','.join('?' * len(kept))})",
                            [replacement[0], *kept])
                    conn.execute(
                        "UPDATE blobs SET commit_name = ? WHERE commit_name = ? AND pack_id IS NULL",
                        (replacement[0], commit.name))
                conn.execute("UPDATE commits SET linked = -1 WHERE name = ?", (commit.name,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


async def dry_run(ctx, repack_threshold=REPACK_THRESHOLD, forgotten=()):
    """What a prune would do once ``forgotten`` are forgotten, changing nothing."""
    session = _Session(ctx.db_path, os.path.join(ctx.state_dir, "logs"))
    try:
        plan = await ctx.in_thread(session.plan, repack_threshold, forgotten)
    finally:
        session.close()
    return plan.summary()


async def prune(ctx, repack_threshold=REPACK_THRESHOLD, pack_size=8 * 1024 * 1024):
    """Drop dead blobs from the index and dead packs from the root.  Returns figures."""
    # First finish what a run killed after its transaction left undone.
    await ctx.publisher.replace_commits()
    session = _Session(ctx.db_path, os.path.join(ctx.state_dir, "logs"))
    try:
        plan = await ctx.in_thread(session.plan, repack_threshold)
        summary = plan.summary()
        ctx.progress.update(summary)
        if not plan.commits:
            return {**summary, "packs_written": 0}
        ctx.check_stopping()
        new_packs = await _repack(ctx, session, plan, pack_size)
        new_commit = None
        if new_packs:
            rows = [(b.hash, built.name, b.offset, b.length, b.size, b.compression)
                    for built, _ in new_packs for b in built.blobs]
            new_commit = await _upload_commit(
                ctx, encode_index_segment(rows), {built.name: cap for built, cap in new_packs})
        replacements = {}
        for commit in plan.commits:
            ctx.check_stopping()
            await ctx.publisher.check_writer()
            segment = await ctx.in_thread(session.segment_of, commit)
            if segment is None:
                replacements[commit.name] = None
                continue
            packs = {p.name: p.cap for p in commit.packs if p.fate == "keep"}
            replacements[commit.name] = await _upload_commit(ctx, segment, packs)
        await ctx.in_thread(session.apply, plan, replacements, new_packs, new_commit)
    finally:
        session.close()
    await ctx.publisher.replace_commits()
    log.info("pruned: {dead} dead blobs, {dropped} packs dropped, {repacked} repacked",
             dead=summary["dead_blobs"], dropped=summary["packs_dropped"],
             repacked=summary["packs_repacked"])
    return {**summary, "packs_written": len(new_packs)}


async def _upload_commit(ctx, segment, packs):
    index_cap = await ctx.client.upload_bytes(segment)
    cap = await ctx.client.mkdir_immutable({**packs, "index": index_cap})
    return commit_name(segment), cap


async def _repack(ctx, session, plan, pack_size):
    """Copy the live blobs of the packs to repack into new packs; [(BuiltPack, cap)]."""
    sources = plan.packs("repack")
    if not sources:
        return []
    live = await ctx.in_thread(session.live_blobs_of, [p.id for p in sources])
    workdir = os.path.join(ctx.state_dir, "packs")
    written = []
    pending = []
    pending_bytes = 0

    async def flush():
        nonlocal pending, pending_bytes
        if not pending:
            return
        # Keep the writer lock fresh through a long repack: another daemon
        # taking a stale lock over could dedup against a pack being dropped.
        await ctx.publisher.check_writer()
        built = await ctx.in_thread(packer.write_stored_pack, pending, workdir)
        try:
            cap = await ctx.client.upload_file(built.path)
        finally:
            os.unlink(built.path)
        written.append((built, cap))
        pending, pending_bytes = [], 0

    for source in sources:
        ctx.check_stopping()
        reads = [restoreplan.BlobRead(h, o, n, s, c, ()) for h, o, n, s, c in live[source.id]]
        for span in restoreplan.coalesce(source.cap, reads):
            data = await ctx.client.download(span.cap, span.start, span.end - span.start)
            for read in span.reads:
                stored = data[read.offset - span.start:read.offset - span.start + read.length]
                plain = packer.decode_blob(stored, read.compression, read.size)
                if hashlib.sha256(plain).hexdigest() != read.hash:
                    raise PruneError(
                        f"blob {read.hash[:12]} in {source.name[:17]} does not match its hash; "
                        "nothing pruned (a check and repair of the grid is due)")
                pending.append((read.hash, bytes(stored), read.compression, read.size))
                pending_bytes += len(stored)
                if pending_bytes >= pack_size:
                    await flush()
        ctx.progress["packs_read"] = ctx.progress.get("packs_read", 0) + 1
    await flush()
    return written
