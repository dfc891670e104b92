"""
Pure content functions: read a file once, cut it into content-defined
chunks and hash every chunk and the whole file in the same pass.

Runs in a worker thread.  fastcdc is fed bounded buffers read with
``os.read`` rather than a path: given a path it memory-maps the file, and a
file truncated while it is chunked would kill the process with SIGBUS.
"""

import concurrent.futures
import hashlib
import os
import threading

import attr
from fastcdc import fastcdc

BUFFER = 16 * 1024 * 1024

# The whole-file SHA-256 of a chunked file runs in a thread of its own,
# beside the chunk hashes and FastCDC of the calling thread: hashlib
# releases the GIL for large updates, so the two passes overlap on a second
# core (on one core they take turns, as if run in sequence).
_whole_hasher = None
_whole_hasher_lock = threading.Lock()


def _hasher():
    global _whole_hasher
    with _whole_hasher_lock:
        if _whole_hasher is None:
            _whole_hasher = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="gridbackup-sha256")
        return _whole_hasher


@attr.frozen
class ChunkParams:
    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024


@attr.frozen
class Chunk:
    hash: str
    offset: int
    size: int


@attr.frozen
class FileDigest:
    """The result of reading one file: its hash, its size and its chunks."""

    sha256: str
    size: int
    chunks: tuple
    inline: bytes | None = None


def read_whole(fd, limit):
    """Read at most ``limit`` bytes from ``fd`` (a tiny file)."""
    parts = []
    remaining = limit + 1
    while remaining > 0:
        data = os.read(fd, remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def digest_fd(fd, tiny_max, chunk_threshold, params=ChunkParams(), sink=None):
    """
    Read ``fd`` from its current position to the end.

    Files of at most ``tiny_max`` bytes come back inline; files smaller
    than ``chunk_threshold`` are one chunk; larger ones are cut by FastCDC.
    ``sink(hash, data)``, if given, gets every chunk's bytes as read (a
    memoryview valid during the call), to keep what was read.
    """
    head = read_whole(fd, tiny_max)
    if len(head) <= tiny_max:
        return FileDigest(hashlib.sha256(head).hexdigest(), len(head), (), inline=head)

    whole = hashlib.sha256()
    chunks = []
    offset = 0  # file offset of pending[0]
    pending = head
    eof = False
    hashing = None  # the whole-file update of the previous buffer, running
    while True:
        if not eof and len(pending) < BUFFER:
            data = os.read(fd, BUFFER)
            if data:
                pending += data
                continue
            eof = True
        if eof and offset == 0 and len(pending) < chunk_threshold:
            # A small file: one chunk, the whole file.
            digest = hashlib.sha256(pending).hexdigest()
            if sink is not None:
                sink(digest, memoryview(pending))
            return FileDigest(digest, len(pending), (Chunk(digest, 0, len(pending)),))
        view = memoryview(pending)
        cut = list(fastcdc(pending, params.min_size, params.avg_size, params.max_size))
        if not eof:
            # The last chunk of a buffer may be cut short by the buffer's
            # end: carry it over and cut it again with more data behind it.
            cut = cut[:-1]
        consumed = cut[-1].offset + cut[-1].length if cut else 0
        # One whole-file update at a time, in order; at most two buffers alive.
        if hashing is not None:
            hashing.result()
        hashing = _hasher().submit(whole.update, view[:consumed])
        for c in cut:
            piece = view[c.offset:c.offset + c.length]
            chunk_hash = hashlib.sha256(piece).hexdigest()
            if sink is not None:
                sink(chunk_hash, piece)
            chunks.append(Chunk(chunk_hash, offset + c.offset, c.length))
        pending = pending[consumed:]
        offset += consumed
        if eof and not pending:
            break
    if hashing is not None:
        hashing.result()
    return FileDigest(whole.hexdigest(), offset, tuple(chunks))
