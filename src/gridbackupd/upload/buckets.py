"""
Layout version 2's day buckets (docs/FORMAT.md "On-grid layout (version
2)"): why publishing a snapshot costs the same in a set of a hundred
snapshots and in one of a million.

Tahoe rewrites a whole mutable directory to add one child, so a directory
that grows by one child per snapshot makes every publish slower than the
last.  Here an index (``snapshot-days/`` or ``commit-days/``) holds one
bucket a day: the open bucket, a mutable directory, takes the day's
children; the first write of a later day seals every older open bucket
(an immutable directory of the same children, linked in its place in one
write).  A publish writes only the open bucket, which holds one day's
children at most.

Every step is idempotent and leaves each child linked at every moment: a
sealed bucket is made from the open one's listing before it replaces it,
so a crash in between leaves the open one linked, sealed again later.
Changing a sealed bucket (a forget, a prune) makes a new immutable
directory and links it in place of the old one.  The caller holds the
publisher's writing lock: nothing else writes the index meanwhile.
"""

import os
import time

from twisted.logger import Logger

from gridbackupd import clock as clockmod
from gridbackupd import crashpoints
from gridbackupd.grid.layout import read_index

__all__ = ["DAY", "Buckets", "bucket_name", "testing_overrides"]

log = Logger()

DAY = 86400
# Tests only (with GRIDBACKUP_TESTING=1): buckets of this many seconds, so a
# test sees buckets sealed without waiting for midnight.
PERIOD_ENV = "GRIDBACKUP_BUCKET_SECONDS"
# Tests only: write layout version 1, as gridbackupd did before version 2
# (a set to convert, made by the same code paths as then).
VERSION_ENV = "GRIDBACKUP_LAYOUT_VERSION"


def testing_overrides(environ=None):
    """The Publisher's keyword arguments the tests set (with GRIDBACKUP_TESTING=1); {} otherwise."""
    environ = os.environ if environ is None else environ
    if environ.get("GRIDBACKUP_TESTING") != "1":
        return {}
    found = {}
    if environ.get(PERIOD_ENV):
        found["bucket_period"] = max(1, int(environ[PERIOD_ENV]))
    if environ.get(VERSION_ENV):
        found["layout_version"] = int(environ[VERSION_ENV])
    return found


def bucket_name(t, period=DAY):
    """The name of the bucket of time ``t`` (UTC): its day, or its start for a shorter period."""
    start = int(t) - int(t) % period
    if period == DAY:
        return time.strftime("%Y-%m-%d", time.gmtime(start))
    return time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(start))


def _ro(child):
    """A child's immutable cap, as a sealed bucket links it."""
    return child.ro_uri or child.cap


class Buckets:
    """One index of day buckets (``index_cap``, a mutable directory's write cap)."""

    def __init__(self, client, index_cap, now=clockmod.wall, period=DAY):
        self.client = client
        self.index = index_cap
        self.now = now
        self.period = period
        self._open: tuple[str, str] | None = None  # (name, write cap) of the open bucket
        self._sealed: dict[str, frozenset] = {}  # a sealed bucket's cap -> its names

    def forget(self):
        """Read the index again before the next write (another writer may have changed it)."""
        self._open = None
        self._sealed.clear()

    async def open_bucket(self):
        """
        The open bucket's write cap: today's, made (and every older open
        bucket sealed) by the first write of the day.
        """
        name = bucket_name(self.now(), self.period)
        if self._open is not None and self._open[0] >= name:
            return self._open[1]
        listing = await self.client.list_dir(self.index)
        # A clock set back: keep writing the newest open bucket.
        newest_open = max((n for n, c in listing.items() if c.rw_uri), default=None)
        if newest_open is not None and newest_open >= name:
            name = newest_open
            cap = listing[name].rw_uri
        else:
            while name in listing:  # sealed already (a clock set back): a name of its own
                name += "+"
            cap = await self.client.mkdir()
            await self.client.set_children(self.index, {name: cap})
            crashpoints.reached("buckets.opened")
        for other, child in sorted(listing.items()):
            if other < name and child.rw_uri:
                await self._seal(other, child.rw_uri)
        self._open = (name, cap)
        return cap

    async def _seal(self, name, cap):
        children = await self.client.list_dir(cap)
        if not children:
            await self.client.unlink(self.index, name)
            return
        sealed = await self.client.mkdir_immutable({n: _ro(c) for n, c in children.items()})
        crashpoints.reached("buckets.sealed_made")
        await self.client.set_children(self.index, {name: sealed})
        crashpoints.reached("buckets.sealed_linked")
        log.info("sealed bucket {name} of {n} children", name=name, n=len(children))

    async def link(self, children):
        """Link ``children`` (name -> cap) in the open bucket, in one write."""
        if children:
            await self.client.set_children(await self.open_bucket(), children)

    async def locate(self, names):
        """
        {bucket name: (cap, mutable, listing)} of the buckets holding any of
        ``names``.  A sealed bucket's names are remembered by its cap (an
        immutable directory never changes), so only the open bucket and the
        buckets that hold a name are listed again.
        """
        wanted = set(names)
        found = {}
        for bucket, child in sorted((await self.client.list_dir(self.index)).items(), reverse=True):
            mutable = child.rw_uri is not None
            known = None if mutable else self._sealed.get(child.cap)
            if known is not None and not wanted & known:
                continue
            listing = await self.client.list_dir(child.cap)
            if not mutable:
                self._sealed[child.cap] = frozenset(listing)
            if wanted & set(listing):
                found[bucket] = (child.cap, mutable, listing)
        return found

    async def change(self, changes):
        """
        Replace (name -> cap) or remove (name -> None) children wherever
        they are linked, in every bucket that holds them; a replacement
        found nowhere is linked in the open bucket.  A sealed bucket is
        rewritten as a new immutable directory, linked in place of the old.
        """
        if not changes:
            return
        found = await self.locate(changes)
        seen: set[str] = set()
        for bucket, (cap, mutable, listing) in sorted(found.items()):
            mine = {n: changes[n] for n in listing if n in changes}
            seen.update(mine)
            if mutable:
                await self.client.set_children(cap, {n: c for n, c in mine.items() if c is not None})
                for n, c in mine.items():
                    if c is None:
                        await self.client.unlink(cap, n)
                continue
            kept = {n: _ro(c) for n, c in listing.items() if n not in mine}
            kept.update({n: c for n, c in mine.items() if c is not None})
            if kept:
                await self.client.set_children(self.index, {bucket: await self.client.mkdir_immutable(kept)})
            else:
                await self.client.unlink(self.index, bucket)
            crashpoints.reached("buckets.rewritten")
            log.info("rewrote sealed bucket {bucket} ({n} children changed)", bucket=bucket, n=len(mine))
        await self.link({n: c for n, c in changes.items() if c is not None and n not in seen})

    async def children(self):
        """Every child of every bucket, by name, the newest bucket's where a name is in two."""
        return await read_index(self.client, self.index)

