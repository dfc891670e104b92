"""
The entries of a snapshot given as a chain of logs, merged streaming.
"""

import heapq
import itertools

from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logpaths import path_key, shown
from gridbackupd.model import Deletion

__all__ = ["SkippingMerge", "merge_records"]

_END = object()


def merge_records(base, *changes, skipping=None):
    """
    The entries of a snapshot given as a chain of logs, streaming.

    ``base`` iterates the records of a full log, each of ``changes`` those
    of an incremental log, oldest first, each the child of the one before
    (the caller checks that chain in the headers).  Yields the snapshot's
    entries in ``path_key`` order: for each path the newest entry, none if
    the newest record is a ``Deletion``.  Holds one record per log.  A
    deletion of a path the snapshot before it does not have raises
    ``LogFormatError``.  ``skipping`` (a ``SkippingMerge``): while its
    ``prefix`` is set, the records already read whose key starts with it
    are dropped unresolved (the logs drop the others unread).
    """

    # Increments with no record (a snapshot in which nothing changed, the
    # usual one) are left out of the merge: each layer costs every record
    # a heap step.  Reading an empty one to its end checks it all the same.
    layers = []
    for i, records in enumerate(changes, 1):
        it = iter(records)
        first = next(it, _END)
        if first is not _END:
            layers.append((i, itertools.chain((first,), it)))
    if not layers:
        # A full log alone: its records are the entries (it has no deletions).
        for record in base:
            if type(record) is Deletion:
                raise LogFormatError(f"a full log deletes {shown(record.path)}")
            yield record
        return

    def keyed(layer, records):
        for record in records:
            yield path_key(record.path), layer, record

    merged = heapq.merge(
        *(keyed(i, r) for i, r in [(0, base), *layers]), key=_merge_order
    )
    current_key = None
    present = None
    for key, layer, record in merged:
        if key != current_key:
            if present is not None:
                yield present  # the one place a skip can be asked
            current_key = key
            present = None
        if skipping is not None and skipping.prefix is not None:
            if key.startswith(skipping.prefix):
                continue
            skipping.prefix = None
        if type(record) is Deletion:
            if present is None:
                raise LogFormatError(
                    f"incremental log {layer} deletes {shown(record.path)}, "
                    f"which the snapshot before it does not have"
                )
            present = None
        else:
            present = record
    if present is not None:
        yield present


def _merge_order(item):
    return item[0], item[1]


class SkippingMerge:
    """
    ``merge_records`` over ``LogReader``s (``verify=False``), able to let a
    sub-tree go by unread (``skip_below``, between two entries): a watched
    scan takes a directory it did not list from its parent without
    decoding what is below it.  Iterating yields what ``merge_records``
    yields.
    """

    def __init__(self, readers):
        self.prefix = None  # the sub-tree being skipped (merge_records reads it)
        self._readers = readers
        self._merged = merge_records(*(iter(r) for r in readers), skipping=self)

    def __iter__(self):
        return self._merged

    def __next__(self):
        return next(self._merged)

    def skip_below(self, prefix):
        """Every record whose ``path_key`` starts with ``prefix`` (a directory's key and NUL) goes by."""
        self.prefix = prefix
        for reader in self._readers:
            reader.skip_below(prefix)
