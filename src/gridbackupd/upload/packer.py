"""
Building packs from the upload queue: many blobs in one immutable Tahoe
file, laid out as ``format.pack`` says.

``build_pack`` is pure file work for a worker thread: it re-reads every
blob from the file the scanner saw it in and checks its SHA-256, so a file
that changed since its scan is never uploaded under the wrong hash.  Blobs
sit in path order, and the same blobs always give the same bytes, so a pack
built again after a crash converges on the same cap.

The daemon reads as root, so a source is reached as the scan reached it:
the root's parent by its path, every component after it with
``O_NOFOLLOW | O_DIRECTORY``, the file itself with ``O_NOFOLLOW |
O_NONBLOCK | O_NOCTTY``, and it must be the regular file the scan recorded
(device, inode) before a byte is read.  Anything else is a blob whose file
"changed since the scan", never content.
"""

import contextlib
import errno
import hashlib
import os
import stat

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
    stale: tuple  # Stale: blobs whose file no longer holds them


@attr.frozen
class Stale:
    """A queued blob whose file no longer holds it, and why, for the snapshot's errors."""

    hash: str
    path: bytes
    reason: str


CHANGED = "changed since the scan"

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# A test hook: called with each queued blob before its file is opened (a
# test swaps the file or a directory above it there).
before_open = None


class SourceChanged(Exception):
    """The path no longer leads to the file the scan read."""


def open_source(blob):
    """
    The blob's file, opened one component at a time from its root's
    parent and checked against the scan's (device, inode); raises
    SourceChanged or OSError.  A row queued before the scan recorded where
    its root was (``source_base`` NULL) is walked from "/" without
    following any link.
    """
    path = blob.source_path
    base = blob.source_base if blob.source_base is not None else 1
    names = path[base:].split(b"/")
    names = [n for n in names if n]
    if not path.startswith(b"/") or not names or b".." in names or b"." in names:
        raise SourceChanged()
    fd = os.open(path[:base] or b"/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names[:-1]:
            inner = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        source = os.open(names[-1], FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        st = os.fstat(source)
        if not stat.S_ISREG(st.st_mode) or (
            blob.source_dev is not None
            and (st.st_dev, st.st_ino) != (blob.source_dev, blob.source_ino)
        ):
            raise SourceChanged()
    except BaseException:
        os.close(source)
        raise
    return source


def _read_source(blob):
    if before_open is not None:
        before_open(blob)
    fd = open_source(blob)
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
    """A queued blob's bytes read again from its file, or a ``Stale`` saying why not."""
    try:
        data = _read_source(blob)
    except SourceChanged:
        return Stale(blob.hash, blob.source_path, CHANGED)
    except OSError as e:
        return Stale(blob.hash, blob.source_path, _why(e))
    if hashlib.sha256(data).hexdigest() != blob.hash:
        return Stale(blob.hash, blob.source_path, CHANGED)
    return data


def _why(e):
    if e.errno == errno.ENOENT:
        return "vanished since the scan"
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return CHANGED  # a component became a link or another kind of file
    return f"cannot read: {e.strerror or e}"


def build_pack(blobs, directory):
    """Write the given queued blobs into a new pack file under ``directory``."""
    ordered = sorted(blobs, key=lambda b: (b.source_path, b.source_offset, b.hash))
    stale = []

    def stored_blobs():
        for blob in ordered:
            data = read_checked(blob)
            if isinstance(data, Stale):
                stale.append(data)
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
    thread).  Returns ({hash: bytes}, ``Stale`` blobs).
    """
    found = {}
    stale = []
    for blob in blobs:
        data = read_checked(blob)
        if isinstance(data, Stale):
            stale.append(data)
        else:
            found[blob.hash] = data
    return found, tuple(stale)
