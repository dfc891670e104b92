"""
The comparison with the previous snapshot: its entries (its chain of logs
merged, read as a stream) consumed in step with the walk, which is in the
same path order.  An entry whose file did not change is reused without
reading the file; an incremental log gets only what differs.
"""

from twisted.logger import Logger

from gridbackupd.format import chain
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logpaths import path_key
from gridbackupd.format.logreader import read_header
from gridbackupd.model import FILE, HARDLINK, POSSIBLY_INCONSISTENT, RACY, Deletion


class Previous:
    """
    The previous snapshot's entries, consumed in step with the walk.

    Every record the scan emits goes through ``emit``, in path order; the
    previous entries are merged with them.  For an incremental log
    (``incremental`` true) only what differs from the previous snapshot is
    passed on to ``out``: new and changed entries, and a ``Deletion`` for
    each previous entry the scan no longer has.  For a full log every entry
    is passed on.  ``find`` gives the previous entry at a path (the next
    one emitted) for change detection.  ``changes`` (a
    ``changes.tally.Tally``), if given, is told of every entry added,
    changed or deleted: the snapshot's figures, counted in the same pass.

    ``totals`` is [entries, files, bytes] of the new snapshot (files and
    bytes of files and hard links), counted from what it holds, or None
    once unknown (a resumed scan).  Given the previous snapshot's totals
    (``parent_totals``) and entries that can skip (``PreviousEntries``
    with ``skipping``), an incremental scan counts by difference
    instead: ``copy_below`` then lets a sub-tree go by unread.
    """

    def __init__(self, entries, out, incremental=False, changes=None, parent_totals=None):
        self._entries = entries
        self._it = iter(entries or ())
        self._out = out
        self._incremental = incremental
        self._changes = changes
        self._head = None
        self._key = None
        self._found = None
        self.changed = 0
        self.deleted = 0
        self.by_difference = (incremental and parent_totals is not None
                              and getattr(entries, "skipping", False))
        self.totals: list[int] | None = list(parent_totals) if self.by_difference else [0, 0, 0]
        self._advance()

    def _count(self, entry, sign):
        totals = self.totals
        assert totals is not None
        totals[0] += sign
        if entry.kind == FILE or entry.kind == HARDLINK:
            totals[1] += sign
            totals[2] += sign * entry.size

    def _gone(self, head):
        """A previous entry the snapshot no longer has."""
        self.deleted += 1
        if self._changes is not None:
            self._changes.deleted(head)
        if self._incremental:
            self._out(Deletion(head.path))
        if self.by_difference:
            self._count(head, -1)

    def _advance(self):
        self._head = head = next(self._it, None)
        self._key = path_key(head.path) if head is not None else None

    def _skip_to(self, key):
        """Pass the previous entries before ``key``: they are gone."""
        while self._head is not None and self._key < key:
            self._gone(self._head)
            self._advance()

    def find(self, path):
        key = path_key(path)
        self._found = (path, key)
        self._skip_to(key)
        if self._head is not None and self._key == key:
            return self._head
        return None

    def emit(self, entry):
        path = entry.path
        found = self._found
        key = found[1] if found is not None and found[0] == path else path_key(path)
        self._found = None
        if self.totals is not None:
            self._count(entry, 1)
        if self._key is not None and self._key < key:
            self._skip_to(key)
        if self._key == key:
            head = self._head
            same = head is entry or head == entry
            self._advance()
            if self.by_difference:
                self._count(head, -1)
            if same:
                if self._incremental:
                    return
            else:
                self.changed += 1
                if self._changes is not None:
                    self._changes.changed(head, entry)
        else:
            self.changed += 1
            if self._changes is not None:
                self._changes.added(entry)
        self._out(entry)

    # -- a watched scan: what it does not walk comes from here --------------

    def next_below(self, path):
        """The next previous entry below the directory ``path`` (the walk is past the others), or None."""
        if self._key is not None and self._key.startswith(_below(path)):
            return self._head
        return None

    def copy_below(self, path, each):
        """
        A directory a watched scan does not walk: the previous entries
        below ``path`` are the snapshot's, unchanged; ``each(entry)`` is
        called for each.
        """
        prefix = _below(path)
        if self.by_difference:
            # Counted in the parent's totals, and not in an incremental log:
            # nothing to do with them, so they are not even read.
            if self._key is not None and self._key.startswith(prefix):
                self._entries.skip_below(prefix)
                self._advance()
            return
        while self._key is not None and self._key.startswith(prefix):
            head = self._head
            each(head)
            if self.totals is not None:
                self._count(head, 1)
            if not self._incremental:
                self._out(head)
            self._advance()

    def drop_through(self, path):
        """The previous entries at and below ``path`` not emitted by now are gone."""
        key, prefix = path_key(path), _below(path)
        while self._head is not None and self._key is not None and (
                self._key == key or self._key.startswith(prefix)):
            self._gone(self._head)
            self._advance()

    def skip_done(self, key):
        """A resumed scan: the previous entries up to ``key`` were merged before."""
        self.totals = None  # what the scan before the checkpoint held is not known
        self.by_difference = False
        while self._head is not None and self._key <= key:
            self._advance()

    def finish(self):
        """The scan is over: every previous entry left is gone."""
        while self._head is not None:
            self._gone(self._head)
            self._advance()


def _below(path):
    """The ``path_key`` prefix of every path below the directory ``path``."""
    return b"\0" if path == b"/" else path_key(path) + b"\0"


def unchanged(prev, st):
    """Whether ``prev`` still describes the file ``st`` without reading it."""
    return (
        prev is not None
        and prev.kind == FILE
        and POSSIBLY_INCONSISTENT not in prev.flags
        and prev.size == st.st_size
        and prev.mtime_ns == st.st_mtime_ns
        and prev.ctime_ns == st.st_ctime_ns
        and prev.ino == st.st_ino
        # Racy clean: the previous scan read it within the same timestamp
        # tick as a write may have happened; read it again.
        and RACY not in prev.flags
    )


class PreviousEntries:
    """
    The previous snapshot's complete entries (its chain merged), for the
    streaming merge.  A damaged previous log only costs reading the files
    after the damage again (``failed`` then says why); an incremental log
    cannot be written against it (see ``scan_to_log``).
    """

    log = Logger()

    def __init__(self, chain_logs, skipping=False):
        # skipping: sub-trees can be let go by unread (skip_below).
        self.skipping = skipping
        self._merge = None
        self.failed = None
        self._known = dict(chain_logs)
        self._last = chain_logs[-1][1]
        self._gen = self._entries()
        # An entry whose ctime is a second older than the first scan of the
        # chain was settled when it was recorded (see Scanner).
        self.settled_before = 0
        try:
            started = [read_header(path).started for _, path in chain_logs]
            self.settled_before = int((min(started) - 1.0) * 1e9)
        except (OSError, LogFormatError, OverflowError, ValueError):
            pass

    def _entries(self):
        try:
            # The previous snapshot's local logs were checked when this daemon
            # wrote them or recovered them from the grid: read them without
            # the per-entry checks, which are a third of an unchanged rescan.
            with chain.open_chain(self._last, self._known.get, verify=False,
                                  skipping=self.skipping) as (_, records):
                self._merge = records
                yield from records
        except (OSError, LogFormatError) as e:
            self._unusable(e)

    def _unusable(self, e):
        self.failed = str(e)
        self.log.warn("previous log unusable, reading the rest again: {error}", error=e)

    def skip_below(self, prefix):
        """The entries whose ``path_key`` starts with ``prefix`` go by unread (``skipping``)."""
        if self._merge is None or self.failed is not None:
            return
        try:
            self._merge.skip_below(prefix)
        except (OSError, LogFormatError) as e:
            self._unusable(e)
            self._gen.close()

    def __iter__(self):
        return self._gen

    def close(self):
        self._gen.close()
