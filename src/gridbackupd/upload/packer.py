"""
Packs: many blobs in one immutable Tahoe file, with a trailer that says
what is where, so that a pack describes itself.

``build_pack`` is pure file work for a worker thread: it re-reads every
blob from the file the scanner saw it in and checks its SHA-256, so a file
that changed since its scan is never uploaded under the wrong hash.  Blobs
sit in path order, and the same blobs always give the same bytes, so a pack
built again after a crash converges on the same cap.
"""

import hashlib
import json
import os
import re
import struct

import attr
import zstandard

MAGIC = b"GBPACK\x00\x01"
FOOTER = struct.Struct(">I8s")
FORMAT_VERSION = 1
ZSTD_LEVEL = 3
# Compress a blob only when that saves at least this fraction.
MIN_SAVING = 0.05
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class PackFormatError(ValueError):
    """A pack's trailer is not what format version 1 says."""


@attr.frozen
class PackedBlob:
    hash: str
    offset: int
    length: int
    size: int
    compression: str


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


def encode_blob(data):
    """The stored form of a blob: zstd where it pays, else the bytes as they are."""
    if len(data) >= 64:
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return packed, "zstd"
    return data, "none"


def decode_blob(stored, compression, size):
    if compression == "none":
        data = stored
    elif compression == "zstd":
        try:
            data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
        except zstandard.ZstdError as e:
            raise PackFormatError(f"blob does not decompress: {e}")
    else:
        raise PackFormatError(f"unknown compression {compression!r}")
    if len(data) != size:
        raise PackFormatError(f"blob decodes to {len(data)} bytes, expected {size}")
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

    return _write_pack(stored_blobs(), directory, stale)


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
    with open(tmp, "wb") as out:
        for blob_hash, data, compression, size in stored:
            out.write(data)
            whole.update(data)
            packed.append(PackedBlob(blob_hash, offset, len(data), size, compression))
            offset += len(data)
        trailer = encode_trailer(packed)
        out.write(trailer)
        whole.update(trailer)
        size = offset + len(trailer)
    name = "pack-" + whole.hexdigest()
    final = os.path.join(directory, name)
    os.replace(tmp, final)
    return BuiltPack(name, final, size, tuple(packed), tuple(stale))


def encode_trailer(packed):
    body = json.dumps(
        {
            "format": "gridbackup-pack",
            "version": FORMAT_VERSION,
            "blobs": [[b.hash, b.offset, b.length, b.size, b.compression] for b in packed],
        },
        separators=(",", ":"),
    ).encode("utf-8")
    return body + FOOTER.pack(len(body), MAGIC)


MAX_TRAILER = 64 * 1024 * 1024


def parse_trailer(tail, pack_size):
    """
    Read the blob list from the last bytes of a pack (``tail`` must hold the
    whole trailer and footer; ``pack_size`` is the size of the whole pack).
    Strict: anything docs/FORMAT.md does not allow is refused.
    """
    from gridbackupd.format.index import IndexFormatError, _load

    if len(tail) < FOOTER.size or pack_size < FOOTER.size:
        raise PackFormatError("pack too short for its footer")
    length, magic = FOOTER.unpack(tail[-FOOTER.size:])
    if magic != MAGIC:
        raise PackFormatError("not a gridbackup pack (bad magic)")
    if length > MAX_TRAILER:
        raise PackFormatError(f"trailer of {length} bytes is larger than {MAX_TRAILER}")
    if length + FOOTER.size > len(tail) or length + FOOTER.size > pack_size:
        raise PackFormatError("trailer longer than the bytes given")
    try:
        doc = _load(bytes(tail[len(tail) - FOOTER.size - length:len(tail) - FOOTER.size]), "pack trailer")
    except IndexFormatError as e:
        raise PackFormatError(str(e)) from None
    if set(doc) != {"format", "version", "blobs"} or doc["format"] != "gridbackup-pack":
        raise PackFormatError("trailer is not a gridbackup pack trailer")
    if type(doc["version"]) is not int or doc["version"] != FORMAT_VERSION:
        raise PackFormatError(f"pack version {doc['version']!r:.20} is not supported")
    if type(doc["blobs"]) is not list:
        raise PackFormatError("trailer blobs must be an array")
    data_end = pack_size - FOOTER.size - length
    result = []
    seen = set()
    expected = 0
    for item in doc["blobs"]:
        if (
            type(item) is not list or len(item) != 5
            or type(item[0]) is not str or not _HEX64.match(item[0])
            or not all(type(v) is int for v in item[1:4])
            or item[2] < 1 or item[3] < 1
            or type(item[4]) is not str or item[4] not in ("none", "zstd")
            or (item[4] == "none" and item[2] != item[3])
        ):
            raise PackFormatError(f"bad trailer record {item!r:.80}")
        if item[1] != expected:
            raise PackFormatError(f"trailer record {item[0][:12]} is not where the previous one ended")
        if item[0] in seen:
            raise PackFormatError(f"blob {item[0][:12]} twice in one pack")
        seen.add(item[0])
        expected = item[1] + item[2]
        result.append(PackedBlob(*item))
    if expected != data_end:
        raise PackFormatError(f"the blobs end at {expected}, the trailer starts at {data_end}")
    return result


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
