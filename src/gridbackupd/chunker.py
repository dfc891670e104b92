"""
Pure content functions: read a file once, cut it into content-defined
chunks and hash every chunk and the whole file in the same pass.

Runs in a worker thread.  fastcdc is fed bounded buffers read with
``os.read`` rather than a path: given a path it memory-maps the file, and a
file truncated while it is chunked would kill the process with SIGBUS.
"""

import hashlib
import os

import attr
from fastcdc import fastcdc

BUFFER = 16 * 1024 * 1024


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


def digest_fd(fd, tiny_max, chunk_threshold, params=ChunkParams()):
    """
    Read ``fd`` from its current position to the end.

    Files of at most ``tiny_max`` bytes come back inline; files smaller
    than ``chunk_threshold`` are one chunk; larger ones are cut by FastCDC.
    """
    head = read_whole(fd, tiny_max)
    if len(head) <= tiny_max:
        return FileDigest(hashlib.sha256(head).hexdigest(), len(head), (), inline=head)

    whole = hashlib.sha256()
    chunks = []
    offset = 0  # file offset of pending[0]
    pending = head
    eof = False
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
            return FileDigest(digest, len(pending), (Chunk(digest, 0, len(pending)),))
        view = memoryview(pending)
        cut = list(fastcdc(pending, params.min_size, params.avg_size, params.max_size))
        if not eof:
            # The last chunk of a buffer may be cut short by the buffer's
            # end: carry it over and cut it again with more data behind it.
            cut = cut[:-1]
        consumed = 0
        for c in cut:
            piece = view[c.offset:c.offset + c.length]
            whole.update(piece)
            chunks.append(Chunk(hashlib.sha256(piece).hexdigest(), offset + c.offset, c.length))
            consumed = c.offset + c.length
        view.release()
        pending = pending[consumed:]
        offset += consumed
        if eof and not pending:
            break
    return FileDigest(whole.hexdigest(), offset, tuple(chunks))
