"""
Following a log's hard links to the entry they stand for, boundedly.

The scanner writes a hard link's ``target`` as the first path it saw of
that inode, a file; but a log comes from the grid and may name another
hard link, itself (refused by the reader), or a cycle (A to B, B to A).
``follow`` walks such a chain at most ``MAX_HOPS`` steps and refuses a
cycle, so neither a restore nor a content request loops on one; that
entry is an error, the others are not affected.
"""

from gridbackupd.model import HARDLINK

# The scanner makes chains of one hop; merged incremental logs may add a
# few.  Anything longer is refused rather than followed.
MAX_HOPS = 8


class LinkError(ValueError):
    """A hard link that leads nowhere: a cycle, too long a chain, a missing target."""


def follow(entry, lookup, max_hops=MAX_HOPS, missing="is not in the snapshot"):
    """
    The entry the hard link ``entry`` stands for: its target's, or, if that
    is a hard link too, the end of the chain.  ``lookup(path)`` is the entry
    at ``path`` or None; it is called at most ``max_hops`` times.  An entry
    that is not a hard link is its own answer.  Raises LinkError (its
    message says what is wrong; ``missing`` ends the one for a target that
    ``lookup`` does not find).
    """
    seen = {entry.path}
    for _ in range(max_hops):
        if entry.kind != HARDLINK:
            return entry
        target = entry.target
        if target in seen:
            raise LinkError("a hard link in a cycle of hard links")
        seen.add(target)
        entry = lookup(target)
        if entry is None:
            raise LinkError(f"a hard link whose target {missing}")
    if entry.kind != HARDLINK:
        return entry
    raise LinkError(f"a hard link in a chain of more than {max_hops} hard links")
