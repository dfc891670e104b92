"""
The entries of a snapshot given as a chain of logs, merged streaming.
"""

import heapq
import itertools

from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logpaths import path_key, shown
from gridbackupd.model import Deletion

__all__ = ["merge_records"]

_END = object()


def merge_records(base, *changes):
    """
    The entries of a snapshot given as a chain of logs, streaming.

    ``base`` iterates the records of a full log, each of ``changes`` those
    of an incremental log, oldest first, each the child of the one before
    (the caller checks that chain in the headers).  Yields the snapshot's
    entries in ``path_key`` order: for each path the newest entry, none if
    the newest record is a ``Deletion``.  Holds one record per log.  A
    deletion of a path the snapshot before it does not have raises
    ``LogFormatError``.
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
                yield present
            current_key = key
            present = None
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
