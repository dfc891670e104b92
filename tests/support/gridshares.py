"""
Test helpers that look at (and tamper with) the share files of a LocalGrid's
storage nodes directly: what the storage servers really hold, not what the
client node says about it.

Everything here reads or writes files of the storage nodes while they run;
the storage server reads a share file anew for every request, so a change
is seen at once.  These are blocking file operations: fine for tests, and
quick (a handful of small files).
"""

import os
import struct

from allmydata.storage.common import storage_index_to_dir
from allmydata.storage.immutable import ShareFile
from allmydata.storage.shares import get_share_file
from allmydata.uri import from_string

__all__ = [
    "backdate_leases",
    "corrupt_shares",
    "lease_expirations",
    "nodes_holding",
    "share_files",
    "storage_index",
    "storage_node_names",
]


def storage_node_names(grid) -> list[str]:
    """The names of the grid's storage nodes ("storage1", ...)."""
    return [f"storage{i}" for i in range(1, grid.storage_nodes + 1)]


def storage_index(cap: str) -> bytes:
    """The storage index of ``cap``; ValueError for a cap without shares (literal)."""
    si = from_string(cap).get_storage_index()
    if si is None:
        raise ValueError("a literal cap has no storage index (and no shares)")
    return si


def share_files(grid, cap: str, nodes=None) -> list[str]:
    """
    The paths of the share files of the object ``cap`` on every storage node
    of ``grid`` (or only on the named ``nodes``), sorted.  A node without a
    share of it adds nothing.
    """
    relative = storage_index_to_dir(storage_index(cap))
    found = []
    for name in nodes if nodes is not None else storage_node_names(grid):
        bucket = os.path.join(grid.node_dir(name), "storage", "shares", relative)
        try:
            shnums = os.listdir(bucket)
        except FileNotFoundError:
            continue
        found.extend(os.path.join(bucket, shnum) for shnum in shnums if shnum.isdigit())
    return sorted(found)


def nodes_holding(grid, cap: str) -> list[str]:
    """The names of the storage nodes that hold at least one share of ``cap``."""
    return [name for name in storage_node_names(grid) if share_files(grid, cap, [name])]


def lease_expirations(path: str) -> list[int]:
    """The expiration times (POSIX seconds) of every lease on a share file."""
    return [int(lease.get_expiration_time()) for lease in get_share_file(path).get_leases()]


def backdate_leases(path: str, when: int) -> int:
    """
    Set the expiration time of every lease on the share file ``path`` to
    ``when`` (earlier or later); return how many leases were changed.

    ``renew_lease(secret, when, allow_backdate=True)`` needs the renew
    secret, and a storage server keeps only a hash of it (HashedLeaseInfo):
    so we rewrite each lease record in place with the share file's own
    record writer, keeping its owner, secrets and node id.
    """
    share = get_share_file(path)
    leases = list(enumerate(share.get_leases()))
    if isinstance(share, ShareFile):
        slots = leases  # immutable: records are numbered in order
    else:
        # Mutable: a record's number is its slot, empty slots included.
        with open(path, "rb") as f:
            slots = list(share._enumerate_leases(f))
    with open(path, "rb+") as f:
        for number, lease in slots:
            share._write_lease_record(f, number, lease.renew(int(when)))
    return len(slots)


def _immutable_block_data_range(path: str) -> tuple[int, int]:
    """
    The file offsets (start, end) of the erasure-coded block data in an
    immutable share file: the share data starts after the 12-byte container
    header and begins with its own header of offsets (version 1: 4-byte
    fields from 0x0c; version 2: 8-byte fields from 0x14).
    """
    container = 0x0C
    with open(path, "rb") as f:
        f.seek(container)
        header = f.read(0x44)
    (version,) = struct.unpack(">L", header[:4])
    if version == 1:
        data, after = struct.unpack(">LL", header[0x0C:0x14])
    elif version == 2:
        data, after = struct.unpack(">QQ", header[0x14:0x24])
    else:
        raise ValueError(f"unknown immutable share version {version}")
    # ``after`` is the (unused) plaintext hash tree, which follows the data.
    return container + data, container + after


def corrupt_shares(grid, cap: str, nodes=None) -> list[str]:
    """
    Flip bytes in the block data of every share of the immutable file
    ``cap`` (on every storage node, or on ``nodes``), so that its blocks fail
    their hash checks: a download of it fails, and a verifying check counts
    the shares corrupt.  Returns the share files changed.
    """
    paths = share_files(grid, cap, nodes)
    if not paths:
        raise ValueError("no shares of this object found to corrupt")
    for path in paths:
        if not isinstance(get_share_file(path), ShareFile):
            raise ValueError("corrupt_shares only handles immutable shares")
        start, end = _immutable_block_data_range(path)
        if end <= start:
            raise ValueError("an immutable share without block data")
        with open(path, "rb+") as f:
            # The first and the middle byte of the block data: the first
            # block always fails its hash check, whatever the segment size.
            for offset in {start, (start + end) // 2}:
                f.seek(offset)
                byte = f.read(1)
                f.seek(offset)
                f.write(bytes([byte[0] ^ 0xFF]))
    return paths
