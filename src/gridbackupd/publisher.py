"""
The one writer of the backup set's mutable directories.

Publish order is what keeps the grid consistent after a crash at any
moment: packs first (the uploader), then a commit (an immutable directory
of those packs plus the index segment that describes them), then its link
in ``commits/``, and only then the logs of the snapshots whose content is
all committed.  Every step is idempotent: a commit of the same packs is the
same immutable directory, and linking a name again to the same cap is a
no-op, so a restart simply does the unfinished steps again.
"""

import hashlib
import json

import attr
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from . import db as dbmod
from .model import short_cap
from .waiters import Waiters

LAYOUT_VERSION = 1
INDEX_VERSION = 1
SNAPSHOTS = "snapshots"
COMMITS = "commits"
SETTINGS = "gridbackup.json"


def settings_document(chunk_params, tiny_max, chunk_threshold):
    return {
        "format": "gridbackup",
        "version": LAYOUT_VERSION,
        "hash": "sha256",
        "chunking": {
            "algorithm": "fastcdc",
            "min_size": chunk_params.min_size,
            "avg_size": chunk_params.avg_size,
            "max_size": chunk_params.max_size,
        },
        "tiers": {"tiny_max": tiny_max, "chunk_threshold": chunk_threshold},
    }


def encode_index_segment(rows):
    """rows: (hash, pack name, offset, length, size, compression), sorted by hash."""
    return json.dumps(
        {"format": "gridbackup-index", "version": INDEX_VERSION, "blobs": [list(r) for r in rows]},
        separators=(",", ":"),
    ).encode("utf-8")


@attr.define
class Layout:
    root: str = attr.field(repr=False)
    snapshots: str = attr.field(repr=False)
    commits: str = attr.field(repr=False)


class Publisher:
    log = Logger()

    def __init__(self, conn, client, settings, waiters=None):
        self.conn = conn
        self.client = client
        self.settings = settings
        self.waiters = waiters if waiters is not None else Waiters()
        self.layout = None
        self.lock = DeferredLock()

    async def ensure_layout(self, rootcap):
        """Find (or create the missing parts of) the directories under the root."""
        children = await self.client.list_dir(rootcap)
        caps = {}
        missing = {}
        for name in (SNAPSHOTS, COMMITS):
            child = children.get(name)
            if child is not None and child.rw_uri:
                caps[name] = child.rw_uri
            else:
                caps[name] = missing[name] = await self.client.mkdir()
        if SETTINGS not in children:
            body = json.dumps(self.settings, indent=1, sort_keys=True).encode("utf-8")
            missing[SETTINGS] = await self.client.upload_bytes(body)
        if missing:
            await self.client.set_children(rootcap, missing)
        self.layout = Layout(rootcap, caps[SNAPSHOTS], caps[COMMITS])
        return self.layout

    async def commit(self):
        """Publish every uploaded pack that is not yet in a linked commit."""
        await self.lock.acquire()
        try:
            await self._link_unlinked_commits()
            packs = self.conn.execute(
                "SELECT id, name, cap FROM packs WHERE commit_name IS NULL AND cap IS NOT NULL "
                "ORDER BY name"
            ).fetchall()
            if not packs:
                return None
            ids = [p[0] for p in packs]
            marks = ",".join("?" * len(ids))
            rows = self.conn.execute(
                "SELECT b.hash, p.name, b.offset, b.length, b.size, b.compression "
                f"FROM blobs b JOIN packs p ON b.pack_id = p.id WHERE p.id IN ({marks}) "
                "ORDER BY b.hash",
                ids,
            ).fetchall()
            segment = encode_index_segment(rows)
            name = "commit-" + hashlib.sha256(segment).hexdigest()[:32]
            index_cap = await self.client.upload_bytes(segment)
            children = {p[1]: p[2] for p in packs}
            children["index"] = index_cap
            cap = await self.client.mkdir_immutable(children)
            with dbmod.transaction(self.conn):
                self.conn.execute(
                    "INSERT OR REPLACE INTO commits (name, cap, linked) VALUES (?, ?, 0)", (name, cap)
                )
                self.conn.execute(
                    f"UPDATE packs SET commit_name = ? WHERE id IN ({marks})", [name, *ids]
                )
            await self._link_unlinked_commits()
            self.log.info("committed {packs} packs as {name}", packs=len(packs), name=name)
            return name
        finally:
            self.lock.release()

    async def _link_unlinked_commits(self):
        rows = self.conn.execute("SELECT name, cap FROM commits WHERE linked = 0").fetchall()
        if not rows:
            return
        await self.client.set_children(self.layout.commits, dict(rows))
        with dbmod.transaction(self.conn):
            for name, _ in rows:
                self.conn.execute("UPDATE commits SET linked = 1 WHERE name = ?", (name,))
                self.conn.execute(
                    "UPDATE blobs SET state = 'committed' WHERE pack_id IN "
                    "(SELECT id FROM packs WHERE commit_name = ?)",
                    (name,),
                )

    async def publish_snapshots(self):
        """Upload and link the logs of snapshots that have nothing left to upload."""
        ready = self.conn.execute(
            "SELECT s.id, s.log_path FROM snapshots s WHERE s.state = 'uploading' AND NOT EXISTS ("
            "  SELECT 1 FROM snapshot_blobs sb JOIN blobs b ON b.hash = sb.hash "
            "  WHERE sb.snapshot = s.id AND b.state IN ('pending', 'uploaded')"
            ") ORDER BY s.id"
        ).fetchall()
        for snapshot_id, log_path in ready:
            await self.lock.acquire()
            try:
                cap = await self.client.upload_file(log_path)
                await self.client.set_children(self.layout.snapshots, {snapshot_id: cap})
                stale = self.conn.execute(
                    "SELECT count(*) FROM snapshot_blobs sb JOIN blobs b ON b.hash = sb.hash "
                    "WHERE sb.snapshot = ? AND b.state = 'stale'",
                    (snapshot_id,),
                ).fetchone()[0]
                with dbmod.transaction(self.conn):
                    self.conn.execute(
                        "UPDATE snapshots SET state = ?, log_cap = ?, complete = ? WHERE id = ?",
                        ("complete" if not stale else "incomplete", cap, int(not stale), snapshot_id),
                    )
                    # What is committed no longer needs tracking per snapshot.
                    self.conn.execute("DELETE FROM snapshot_blobs WHERE snapshot = ?", (snapshot_id,))
                self.log.info(
                    "published snapshot {id} (log {cap})", id=snapshot_id, cap=short_cap(cap)
                )
            finally:
                self.lock.release()
            self.waiters.fire(snapshot_id, "complete" if not stale else "incomplete")
        return [r[0] for r in ready]
