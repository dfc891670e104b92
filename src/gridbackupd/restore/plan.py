"""
Planning a restore per pack: which byte ranges of which packs to fetch, and
where each blob in them goes.

Every ranged GET costs Tahoe a round of share, hash-tree and segment
fetches, so a restore asks each pack once per run of neighbouring blobs
(gaps of up to ``MAX_GAP`` bytes are fetched and thrown away rather than
paid for with another request), never once per file.  Pure functions: the
restorer gives them blob locations and runs what they return.
"""

import attr

MAX_GAP = 512 * 1024
MAX_SPAN = 16 * 1024 * 1024


@attr.define(eq=False)
class FileJob:
    """One regular file being restored: how many blob writes it still waits for."""

    entry: object
    remaining: int
    direct: tuple = ()  # (file offset, hash, bytes) of blobs the index holds inline
    out: object = None
    failed: bool = False
    skipped: bool = False
    done: bool = False


@attr.frozen
class BlobRead:
    """One blob of a pack and the (file job, file offset) places it is written to."""

    hash: str
    offset: int
    length: int
    size: int
    compression: str
    targets: tuple


@attr.frozen
class Span:
    """One ranged GET: ``[start, end)`` of a pack and the blobs in it."""

    cap: str = attr.field(repr=False)
    start: int
    end: int
    reads: tuple


def plan(files, locate):
    """
    files: Entries of regular files; locate(hash) -> (cap, offset, length,
    compression), the blob's bytes (a very small blob the index holds
    inline), or None (not uploaded yet).  Returns (jobs, spans, pending
    entries); a job's ``remaining`` counts its blobs in packs only.
    """
    by_pack: dict[str, dict] = {}
    jobs = []
    pending = []
    for entry in files:
        locations = [locate(h) for h, _ in entry.blobs]
        if any(loc is None for loc in locations):
            pending.append(entry)
            continue
        direct = []
        file_offset = 0
        for (h, size), location in zip(entry.blobs, locations):
            if isinstance(location, (bytes, bytearray, memoryview)):
                direct.append((file_offset, h, bytes(location)))
            file_offset += size
        job = FileJob(entry, remaining=len(entry.blobs) - len(direct), direct=tuple(direct))
        jobs.append(job)
        file_offset = 0
        for (h, size), location in zip(entry.blobs, locations):
            if isinstance(location, (bytes, bytearray, memoryview)):
                file_offset += size
                continue
            cap, offset, length, compression = location
            key = (offset, length, h)
            pack = by_pack.setdefault(cap, {})
            if key not in pack:
                pack[key] = (size, compression, [])
            pack[key][2].append((job, file_offset))
            file_offset += size
    spans = []
    for cap, blobs in by_pack.items():
        reads = [
            BlobRead(h, offset, length, size, compression, tuple(targets))
            for (offset, length, h), (size, compression, targets) in sorted(blobs.items())
        ]
        spans.extend(coalesce(cap, reads))
    return jobs, spans, pending


def coalesce(cap, reads, max_gap=MAX_GAP, max_span=MAX_SPAN):
    """Group reads sorted by offset into spans: close neighbours share one GET."""
    spans = []
    current: list[BlobRead] = []
    start = end = 0  # set by the first read
    for read in reads:
        read_end = read.offset + read.length
        if current and (read.offset - end > max_gap or read_end - start > max_span):
            spans.append(Span(cap, start, end, tuple(current)))
            current = []
        if not current:
            start = read.offset
            end = read_end
        current.append(read)
        end = max(end, read_end)
    if current:
        spans.append(Span(cap, start, end, tuple(current)))
    return spans
