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
import struct

import attr
import zstandard

MAGIC = b"GBPACK\x00\x01"
FOOTER = struct.Struct(">I8s")
FORMAT_VERSION = 1
ZSTD_LEVEL = 3
# Compress a blob only when that saves at least this fraction.
MIN_SAVING = 0.05


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
        data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
    else:
        raise PackFormatError(f"unknown compression {compression!r}")
    if len(data) != size:
        raise PackFormatError(f"blob decodes to {len(data)} bytes, expected {size}")
    return data


def build_pack(blobs, directory):
    """Write the given queued blobs into a new pack file under ``directory``."""
    ordered = sorted(blobs, key=lambda b: (b.source_path, b.source_offset, b.hash))
    tmp = os.path.join(directory, f"building-{os.getpid()}-{id(ordered)}")
    whole = hashlib.sha256()
    packed = []
    stale = []
    offset = 0
    with open(tmp, "wb") as out:
        for blob in ordered:
            try:
                data = _read_source(blob)
            except OSError:
                data = None
            if data is None or hashlib.sha256(data).hexdigest() != blob.hash:
                stale.append(blob.hash)
                continue
            stored, compression = encode_blob(data)
            out.write(stored)
            whole.update(stored)
            packed.append(PackedBlob(blob.hash, offset, len(stored), blob.size, compression))
            offset += len(stored)
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


def parse_trailer(tail, pack_size):
    """
    Read the blob list from the last bytes of a pack (``tail`` must hold the
    whole trailer and footer).  Strict: anything unexpected is refused.
    """
    if len(tail) < FOOTER.size:
        raise PackFormatError("pack too short for its footer")
    length, magic = FOOTER.unpack(tail[-FOOTER.size:])
    if magic != MAGIC:
        raise PackFormatError("not a gridbackup pack (bad magic)")
    if length + FOOTER.size > len(tail):
        raise PackFormatError("trailer longer than the bytes given")
    try:
        doc = json.loads(tail[-FOOTER.size - length:-FOOTER.size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PackFormatError(f"trailer is not JSON: {e}")
    if not isinstance(doc, dict) or doc.get("format") != "gridbackup-pack":
        raise PackFormatError("trailer is not a gridbackup pack trailer")
    if doc.get("version") != FORMAT_VERSION:
        raise PackFormatError(f"pack version {doc.get('version')!r} is not supported")
    data_end = pack_size - FOOTER.size - length
    result = []
    for item in doc.get("blobs", ()):
        if (
            not isinstance(item, list) or len(item) != 5
            or not isinstance(item[0], str) or len(item[0]) != 64
            or not all(type(v) is int and v >= 0 for v in item[1:4])
            or item[4] not in ("none", "zstd")
            or item[1] + item[2] > data_end
        ):
            raise PackFormatError(f"bad trailer record {item!r:.80}")
        result.append(PackedBlob(*item))
    return result
