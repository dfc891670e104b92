"""
Snapshots as chains of backup logs: a full log and the incremental logs
after it, each naming the one before as its parent.

``chain_paths`` is the one answer to "which local logs make this
snapshot": it follows the parents named in the logs' headers, each found by
a resolver, a callable from a snapshot id to the path of its local log or
None (``dir_resolver``: ``<id>.log`` in a directory; the database's is
``state.snapshots.log_resolver``), back to a full log.

``open_chain(log_path)`` reads the snapshot whose log is at ``log_path``:
the entries come out of ``logmerge.merge_records`` in path order,
streaming: one record per log in memory, never the whole snapshot.  The
headers are checked to form a chain (each log's parent is the snapshot of
the log before, no cycle, a full log at the bottom).
"""

import contextlib
import os

from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logmerge import SkippingMerge, merge_records
from gridbackupd.format.logreader import LogReader, read_header

# A chain longer than this is refused rather than followed (a cycle, or a
# full_every far above anything sensible).
MAX_CHAIN = 1000


class ChainError(LogFormatError):
    """The logs of a snapshot do not form a usable chain (a parent is missing, ...)."""


def dir_resolver(directory):
    """A resolver that finds the log of a snapshot as ``<id>.log`` in ``directory``."""

    def resolve(snapshot_id):
        path = os.path.join(directory, snapshot_id + ".log")
        return path if os.path.exists(path) else None

    return resolve


def chain_paths(log_path, resolve=None):
    """
    The logs of the snapshot whose log is ``log_path``, as ``(snapshot id,
    path)`` pairs, the full log first.  Reads only headers.
    ``resolve(snapshot_id)`` gives the local path of a parent's log or
    None; by default ``<id>.log`` next to ``log_path``.  Raises
    ``ChainError`` if a parent's log is not there, or the chain loops.
    """
    if resolve is None:
        resolve = dir_resolver(os.path.dirname(os.path.abspath(log_path)))
    paths: list[tuple[str, str]] = []
    seen = set()
    path = log_path
    while True:
        header = read_header(path)
        if header.snapshot in seen or len(paths) >= MAX_CHAIN:
            raise ChainError(f"the chain of logs of {header.snapshot} loops or is too long")
        seen.add(header.snapshot)
        paths.append((header.snapshot, path))
        if header.kind == "full":
            break
        parent = resolve(header.parent)
        if parent is None:
            raise ChainError(
                f"the log of {header.snapshot} is incremental and the log of its "
                f"parent {header.parent} is not available locally"
            )
        path = parent
    paths.reverse()
    return paths


@contextlib.contextmanager
def open_chain(log_path, resolve=None, verify=True, skipping=False):
    """
    ``with open_chain(path) as (header, entries):`` the header of the log at
    ``path`` and the snapshot's complete entries (an iterator of ``Entry``,
    path order), merged from its chain.  The chain is checked as it is
    read: iterate to the end before trusting it (a ``LogFormatError`` then
    says what is wrong).  ``verify=False``: see ``LogReader``; with it,
    ``skipping`` gives a ``logmerge.SkippingMerge``.
    """
    paths = chain_paths(log_path, resolve)
    with contextlib.ExitStack() as stack:
        readers = []
        for _, path in paths:
            f = stack.enter_context(open(path, "rb"))
            readers.append(LogReader(f, verify=verify))
        for below, above in zip(readers, readers[1:]):
            if above.header.kind != "incremental" or above.header.parent != below.header.snapshot:
                raise ChainError(
                    f"the log of {above.header.snapshot} does not follow "
                    f"{below.header.snapshot} (parent {above.header.parent!r})"
                )
        if readers[0].header.kind != "full":
            raise ChainError(f"the chain of {readers[-1].header.snapshot} does not start with a full log")
        if skipping:
            yield readers[-1].header, SkippingMerge(readers)
        else:
            yield readers[-1].header, merge_records(*(iter(r) for r in readers))


def snapshot_entries(snapshot_id, resolve):
    """
    The complete entries of ``snapshot_id`` (an iterator of ``Entry`` in path
    order), streamed from the local log files of its chain.  ``resolve`` is
    called at once (for a database resolver: call this on the connection's
    thread); the iterator may then be consumed in another thread.  It
    closes its files when exhausted or closed.  Raises ``ChainError`` if the
    snapshot or one of its parents has no local log.
    """
    log_path = resolve(snapshot_id)
    if log_path is None:
        raise ChainError(f"snapshot {snapshot_id} has no local log")
    known = dict(chain_paths(log_path, resolve))

    def entries():
        with open_chain(log_path, known.get) as (_, records):
            yield from records

    return entries()


def chain_length(log_path, resolve=None):
    """How many logs the snapshot at ``log_path`` is made of (1 for a full log)."""
    return len(chain_paths(log_path, resolve))
