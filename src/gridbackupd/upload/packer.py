"""
Building packs from the upload queue: many blobs in one immutable Tahoe
file, laid out as ``format.pack`` says.

``build_pack`` is pure file work for a worker thread: it re-reads every
blob from the file the scanner saw it in and checks its SHA-256, so a file
that changed since its scan is never uploaded under the wrong hash.  Blobs
sit in path order, and the same blobs always give the same bytes, so a pack
built again after a crash converges on the same cap.
"""

import contextlib
import hashlib
import os

import attr

from gridbackupd import crashpoints, faultpoints
from gridbackupd.errors import disk_full, is_disk_full
from gridbackupd.format.pack import PackedBlob, encode_blob, encode_trailer


@attr.frozen
class BuiltPack:
    name: str
    path: str
    size: int
    blobs: tuple  # PackedBlob
    stale: tuple  # hashes whose file no longer holds them


def _read_source(blob):
    fd = os.open(blob.source_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        data = os.pread(fd, blob.size, blob.source_offset)
        while len(data) < blob.size:
            more = os.pread(fd, blob.size - len(data), blob.source_offset + len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


def read_checked(blob):
    """A queued blob's bytes read again from its file, or None if they are gone or changed."""
    try:
        data = _read_source(blob)
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != blob.hash:
        return None
    return data


def build_pack(blobs, directory):
    """Write the given queued blobs into a new pack file under ``directory``."""
    ordered = sorted(blobs, key=lambda b: (b.source_path, b.source_offset, b.hash))
    stale = []

    def stored_blobs():
        for blob in ordered:
            data = read_checked(blob)
            if data is None:
                stale.append(blob.hash)
                continue
            yield (blob.hash, *encode_blob(data), blob.size)

    built = _write_pack(stored_blobs(), directory, stale)
    crashpoints.reached("packer.pack_built")
    return built


def write_stored_pack(stored, directory):
    """
    A pack of blobs already in their stored form, ``(hash, stored bytes,
    compression, size)`` in pack order: a prune moving the live blobs of
    mostly dead packs, which it has checked against their hashes.
    """
    return _write_pack(stored, directory, [])


def _write_pack(stored, directory, stale):
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"building-{os.getpid()}-{id(stale)}")
    whole = hashlib.sha256()
    packed = []
    offset = 0
    try:
        with open(tmp, "wb") as file:
            out = faultpoints.writes("packer.pack_write", file)
            for blob_hash, data, compression, size in stored:
                out.write(data)
                whole.update(data)
                packed.append(PackedBlob(blob_hash, offset, len(data), size, compression))
                offset += len(data)
            trailer = encode_trailer(packed)
            out.write(trailer)
            whole.update(trailer)
            size = offset + len(trailer)
    except BaseException as e:
        # A half-written pack is of no use, and may hold the space a retry needs.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(e):
            raise disk_full("a pack", directory) from e
        raise
    name = "pack-" + whole.hexdigest()
    final = os.path.join(directory, name)
    os.replace(tmp, final)
    return BuiltPack(name, final, size, tuple(packed), tuple(stale))


def read_verified(blobs):
    """
    For inline blobs: read each from its file and check its SHA-256 (a worker
    thread).  Returns ({hash: bytes}, stale hashes).
    """
    found = {}
    stale = []
    for blob in blobs:
        data = read_checked(blob)
        if data is None:
            stale.append(blob.hash)
        else:
            found[blob.hash] = data
    return found, tuple(stale)
