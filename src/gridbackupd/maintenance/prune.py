"""
Pruning: giving the grid back what no kept snapshot needs.

A blob is live when a snapshot still here uses it (every entry of every
published or uploading snapshot, streamed from the local logs, plus the
queue of unpublished ones), or when an interrupted scan's checkpoint does
(the scan copies its records as they are when it resumes).  A committed
blob that is not live is dead.  A linked commit holding a dead blob is
replaced by one without it: its packs with live blobs stay (same caps), a
pack with none is left out, and a pack mostly dead (``repack_threshold``
of its bytes) is left out too after its live blobs are copied, checked
against their hashes, into new packs of a new commit.

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

from gridbackupd import crashpoints
from gridbackupd.errors import GridBackupError
from gridbackupd.format import chain
from gridbackupd.format.index import commit_name, encode_index_segment
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.pack import PackFormatError, decode_blob
from gridbackupd.grid.layout import INDEX
from gridbackupd.restore import plan as restoreplan
from gridbackupd.scan import checkpoints as scancheckpoints
from gridbackupd.state import checkpoints as stored_checkpoints
from gridbackupd.state import db as dbmod
from gridbackupd.state import liveset, snapshots
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
    live set (``state.liveset``) from the plan to the final transaction.
    """

    def __init__(self, db_path, logs_dir):
        self.conn = dbmod.connect(db_path, isolation_level=None, check_same_thread=False)
        self.logs_dir = logs_dir

    def close(self):
        self.conn.close()

    def find_live(self, exclude=()):
        conn = self.conn
        liveset.reset(conn)
        for snapshot_id in snapshots.ids_using_blobs(conn):
            if snapshot_id in exclude:
                continue
            try:
                self._add_all((h for entry in chain.snapshot_entries(
                    snapshot_id, snapshots.log_resolver(conn, self.logs_dir)) for h, _ in entry.blobs))
            except (OSError, LogFormatError) as e:
                raise PruneError(
                    f"cannot read snapshot {snapshot_id} to know which blobs it uses, "
                    f"so nothing is pruned: {e}") from None
        # An interrupted scan resumes by copying its checkpoint's records:
        # the blobs they use stay live until its log is written.
        for snapshot_id, state in stored_checkpoints.of_interrupted_scans(conn):
            try:
                self._add_all(scancheckpoints.blob_hashes(state, self.logs_dir))
            except (OSError, ValueError, KeyError) as e:
                raise PruneError(
                    f"cannot read the checkpoint of the interrupted scan of {snapshot_id} "
                    f"to know which blobs it uses, so nothing is pruned: {e}") from None
        liveset.add_held(conn)

    def _add_all(self, hashes):
        """Add ``hashes`` (any iterable) to the live set, in batches."""
        batch: list[str] = []
        for h in hashes:
            batch.append(h)
            if len(batch) >= 10000:
                liveset.add(self.conn, batch)
                batch = []
        liveset.add(self.conn, batch)

    def plan(self, repack_threshold, exclude=()):
        self.find_live(set(exclude))
        conn = self.conn
        live = liveset.count(conn)
        commits = []
        total_dead = 0
        for name in liveset.linked_commits(conn):
            fates = []
            dead = 0
            for pack_id, pack_name, cap, size in liveset.packs_of(conn, name):
                live_bytes, live_n, dead_n = liveset.pack_liveness(conn, pack_id)
                dead += dead_n
                if live_n == 0:
                    fate = "drop"
                elif size and 1 - live_bytes / size >= repack_threshold:
                    fate = "repack"
                else:
                    fate = "keep"
                fates.append(PackFate(pack_id, pack_name, cap, size, live_bytes, fate))
            dead += liveset.dead_inline(conn, name)
            if dead:
                commits.append(CommitPlan(name, tuple(fates), dead))
                total_dead += dead
        return PrunePlan(tuple(commits), live, total_dead)

    def live_blobs_of(self, pack_ids):
        """(hash, offset, length, size, compression) of the live blobs of packs, by pack id."""
        return {pack_id: liveset.live_in_pack(self.conn, pack_id) for pack_id in pack_ids}

    def segment_of(self, commit):
        """The index segment of a commit's survivors: kept packs' live blobs, live inline blobs."""
        rows = [
            (h, pack.name, o, n, s, c)
            for pack in commit.packs if pack.fate == "keep"
            for h, o, n, s, c in liveset.live_in_pack(self.conn, pack.id)
        ]
        inline = liveset.live_inline(self.conn, commit.name)
        if not rows and not inline:
            return None
        return encode_index_segment(rows, inline)

    def apply(self, plan, replacements, new_packs, new_commit):
        """
        One transaction (``liveset.drop_dead``): the new packs and commits,
        every live blob at its place, the dead blobs and the left-out packs
        gone, the replaced commits retired (the publisher unlinks them).
        ``replacements``: old commit name -> (new name, cap) or None.
        ``new_packs``: (BuiltPack, cap) of the repacked blobs, all in
        ``new_commit`` (name, cap) unless that is None.
        """
        commits = [
            (commit.name, [p.id for p in commit.packs if p.fate == "keep"],
             [p.id for p in commit.packs if p.fate != "keep"], replacements.get(commit.name))
            for commit in plan.commits
        ]
        packs = [(built.name, cap, built.size,
                  [(b.hash, b.offset, b.length, b.compression) for b in built.blobs])
                 for built, cap in new_packs]
        try:
            liveset.drop_dead(self.conn, commits, packs, new_commit)
        except liveset.DeadPackInUse as e:
            raise PruneError(str(e)) from None


async def dry_run(ctx, repack_threshold=REPACK_THRESHOLD, forgotten=()):
    """What a prune would do once ``forgotten`` are forgotten, changing nothing."""
    session = _Session(ctx.db_path, ctx.statedir.logs)
    try:
        plan = await ctx.in_thread(session.plan, repack_threshold, forgotten)
    finally:
        session.close()
    return plan.summary()


async def prune(ctx, repack_threshold=REPACK_THRESHOLD, pack_size=8 * 1024 * 1024):
    """Drop dead blobs from the index and dead packs from the root.  Returns figures."""
    # First finish what a run killed after its transaction left undone.
    await ctx.publisher.replace_commits()
    session = _Session(ctx.db_path, ctx.statedir.logs)
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
        replacements: dict[str, tuple[str, str] | None] = {}
        for commit in plan.commits:
            ctx.check_stopping()
            await ctx.publisher.check_writer()
            segment = await ctx.in_thread(session.segment_of, commit)
            if segment is None:
                replacements[commit.name] = None
                continue
            packs = {p.name: p.cap for p in commit.packs if p.fate == "keep"}
            replacements[commit.name] = await _upload_commit(ctx, segment, packs)
        crashpoints.reached("prune.packs_uploaded")
        await ctx.in_thread(session.apply, plan, replacements, new_packs, new_commit)
        crashpoints.reached("prune.commits_replaced")
    finally:
        session.close()
    await ctx.publisher.replace_commits()
    log.info("pruned: {dead} dead blobs, {dropped} packs dropped, {repacked} repacked",
             dead=summary["dead_blobs"], dropped=summary["packs_dropped"],
             repacked=summary["packs_repacked"])
    return {**summary, "packs_written": len(new_packs)}


async def _upload_commit(ctx, segment, packs):
    index_cap = await ctx.client.upload_bytes(segment)
    cap = await ctx.client.mkdir_immutable({**packs, INDEX: index_cap})
    return commit_name(segment), cap


async def _repack(ctx, session, plan, pack_size):
    """Copy the live blobs of the packs to repack into new packs; [(BuiltPack, cap)]."""
    sources = plan.packs("repack")
    if not sources:
        return []
    live = await ctx.in_thread(session.live_blobs_of, [p.id for p in sources])
    workdir = ctx.statedir.packs
    written = []
    pending: list[tuple[str, bytes, str, int]] = []
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
                try:
                    plain = decode_blob(stored, read.compression, read.size)
                except PackFormatError as e:
                    raise PruneError(
                        f"blob {read.hash[:12]} in {source.name[:17]} cannot be decoded ({e}); "
                        "nothing pruned (a check and repair of the grid is due)") from None
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
