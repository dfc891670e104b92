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


class SkippingMerge:
    """
    ``merge_records`` over ``LogReader``s (``verify=False``), able to let a
    sub-tree go by unread (``skip_below``): a watched scan takes a directory
    it did not list from its parent without decoding what is below it.
    Iterating yields what ``merge_records`` yields.
    """

    def __init__(self, readers):
        # [key, record, records, reader, number] per log, oldest first; key
        # None at the end.  An increment with no record (read to its end,
        # so checked) is left out, as merge_records does.
        self._layers = []
        for number, reader in enumerate(readers):
            layer = [None, None, iter(reader), reader, number]
            self._advance(layer)
            if number == 0 or layer[0] is not None:
                self._layers.append(layer)

    @staticmethod
    def _advance(layer):
        record = next(layer[2], None)
        layer[0] = None if record is None else path_key(record.path)
        layer[1] = record

    def __iter__(self):
        return self

    def __next__(self):
        layers, advance = self._layers, self._advance
        while True:
            if len(layers) == 1:
                layer = layers[0]
                record = layer[1]
                if record is None:
                    raise StopIteration
                advance(layer)
                if type(record) is Deletion:
                    raise LogFormatError(f"a full log deletes {shown(record.path)}")
                return record
            key = min((layer[0] for layer in layers if layer[0] is not None), default=None)
            if key is None:
                raise StopIteration
            present = None
            for layer in layers:
                if layer[0] != key:
                    continue
                record = layer[1]
                if type(record) is Deletion:
                    if present is None:
                        raise LogFormatError(
                            f"incremental log {layer[4]} deletes {shown(record.path)}, "
                            f"which the snapshot before it does not have"
                        )
                    present = None
                else:
                    present = record
                advance(layer)
            if present is not None:
                return present

    def skip_below(self, prefix):
        """Every record whose ``path_key`` starts with ``prefix`` (a directory's key and NUL) goes by."""
        for layer in self._layers:
            if layer[0] is not None and layer[0].startswith(prefix):
                layer[3].skip_below(prefix)
                self._advance(layer)
