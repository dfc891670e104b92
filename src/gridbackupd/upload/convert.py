"""
Converting a version 1 backup set to layout version 2 in place (docs/FORMAT.md
"Converting a version 1 set"), under the writer lock, so that a set made
by an older gridbackupd stops paying for its ever larger directories.

Version 2 is written next to version 1 first: the v1 ``snapshots/`` and
``commits/`` become one sealed bucket each in the v2 indexes (the same
caps; nothing is downloaded or uploaded again).  Then a walk from the root
checks that every v1 child is reachable through v2 with the same cap, and
only then does ``gridbackup.json`` say version 2 and are the v1
directories unlinked.  Every step is idempotent, so a crash anywhere is
finished by the next start running the conversion again: until the
settings say 2 a reader reads v1, which is whole; once they do, v2 is
whole (checked), and leftover v1 directories are copied and checked again
before they are unlinked.
"""

from twisted.logger import Logger

from gridbackupd import crashpoints
from gridbackupd.errors import GridBackupError, TahoeNotFound
from gridbackupd.format.index import encode_settings
from gridbackupd.grid.layout import COMMIT_DAYS, COMMITS, SETTINGS, SNAPSHOT_DAYS, SNAPSHOTS, read_index

__all__ = ["ConversionError", "convert", "needs_conversion"]

log = Logger()

# Each v1 directory and the v2 index that takes its children.
PAIRS = ((SNAPSHOTS, SNAPSHOT_DAYS), (COMMITS, COMMIT_DAYS))


class ConversionError(GridBackupError):
    """The v2 layout does not hold every v1 child: the v1 directories are kept."""


def needs_conversion(children):
    """Whether the root (its listing) still has a v1 directory."""
    return any(old in children for old, _ in PAIRS)


def _ro(child):
    return child.ro_uri or child.cap


async def convert(client, root, settings, bucket, hold):
    """
    Convert (or finish converting) the set at ``root`` whose settings
    document is ``settings``; ``bucket`` names the sealed buckets that take
    the v1 children; ``hold()`` is awaited before each write (the writer
    lock, renewed when due).  Returns the write caps of the v2 indexes.
    """
    children = await client.list_dir(root)
    indexes = {new: children[new].rw_uri for _, new in PAIRS if new in children and children[new].rw_uri}
    made = {}
    for _, new in PAIRS:
        if new not in indexes:
            made[new] = indexes[new] = await client.mkdir()
    if made:
        await hold()
        await client.set_children(root, made)
        crashpoints.reached("convert.indexes_linked")
    for old, new in PAIRS:
        if old not in children:
            continue
        listing = await client.list_dir(children[old].cap)
        if not listing:
            continue
        sealed = await client.mkdir_immutable({n: _ro(c) for n, c in listing.items()})
        crashpoints.reached("convert.bucket_made")
        await hold()
        await client.set_children(indexes[new], {bucket: sealed})
        crashpoints.reached("convert.bucket_linked")
    await check_reachable(client, root)
    if settings["version"] == 1:
        await hold()
        cap = await client.upload_bytes(encode_settings({**settings, "version": 2}))
        await client.set_children(root, {SETTINGS: cap})
        crashpoints.reached("convert.settings_written")
    for old, _ in PAIRS:
        if old in children:
            await hold()
            try:
                await client.unlink(root, old)
            except TahoeNotFound:
                pass  # an earlier run unlinked it before it could say so
            crashpoints.reached("convert.old_unlinked")
    log.info("converted the backup set to layout version 2")
    return indexes


async def check_reachable(client, root):
    """
    Walk from the root through the v2 indexes and their buckets: every
    child of a v1 directory must be there, with the same cap
    (ConversionError names how many are not).
    """
    children = await client.list_dir(root)
    for old, new in PAIRS:
        if old not in children:
            continue
        before = await client.list_dir(children[old].cap)
        after = await read_index(client, children[new].cap) if new in children else {}
        missing = [n for n, c in before.items() if n not in after or _ro(after[n]) != _ro(c)]
        if missing:
            raise ConversionError(
                f"converting to layout version 2: {len(missing)} of the {len(before)} children of "
                f"{old}/ are not reachable through {new}/; {old}/ is kept")
