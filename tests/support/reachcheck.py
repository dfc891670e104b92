"""
What a backup set's root cap alone still holds: every blob of the given
snapshots must be found by the maintenance walk (``maintenance.reachable``)
from the root, through the logs linked under ``snapshots/`` and the index
and packs of the commits linked under ``commits/`` (or their day buckets,
in layout version 2).  Nothing of the local
state directory is read.
"""

import os

from gridbackupd.format import chain
from gridbackupd.format.index import parse_index_segment
from gridbackupd.grid.layout import INDEX, PACK_PREFIX, commit_path, log_path
from gridbackupd.maintenance.reachable import walk


async def missing_from_root(client, rootcap, snapshot_ids, workdir):
    """
    The problems found (empty when all is well): a snapshot whose log is
    not linked, or a blob of one that no linked commit holds.
    """
    objects = []
    await walk(client, rootcap, objects.append)
    os.makedirs(workdir, exist_ok=True)
    logs = {}
    held = set()
    for obj in objects:
        found = commit_path(obj.name)
        if obj.kind == "filenode" and (snapshot_id := log_path(obj.name)) is not None:
            logs[snapshot_id] = obj.cap
        elif found is not None and found[1] is None and obj.kind == "dirnode":
            # Listed here, not taken from the walk's names: a pack kept by a
            # prune is linked in two commits and walked under one name only.
            children = await client.list_dir(obj.cap)
            if INDEX not in children:
                continue
            packs = {name for name in children if name.startswith(PACK_PREFIX)}
            segment = parse_index_segment(await client.download(children[INDEX].cap))
            held.update(b.hash for b in segment.blobs if b.pack in packs)
            held.update(b.hash for b in segment.inline)
    for snapshot_id, cap in logs.items():
        with open(os.path.join(workdir, snapshot_id + ".log"), "wb") as f:
            await client.download_to(cap, f)
    problems = []
    resolve = chain.dir_resolver(workdir)
    for snapshot_id in snapshot_ids:
        if snapshot_id not in logs:
            problems.append(f"snapshot {snapshot_id}: no log linked")
            continue
        try:
            missing = {h for entry in chain.snapshot_entries(snapshot_id, resolve)
                       for h, _ in entry.blobs if h not in held}
        except chain.ChainError as e:
            problems.append(f"snapshot {snapshot_id}: {e}")
            continue
        if missing:
            problems.append(f"snapshot {snapshot_id}: {len(missing)} blobs in no linked commit")
    return problems
