"""
The pack format: blobs stored one after the other (each zstd-compressed
where that pays), then a JSON trailer that lists them, then a footer that
gives the trailer's length, so that a pack describes itself.  docs/FORMAT.md
("Packs") specifies every byte; ``parse_trailer`` refuses anything else.
"""

import json
import re
import struct

import attr
import zstandard

from gridbackupd.errors import FormatError
from gridbackupd.format import strictjson

__all__ = [
    "FOOTER",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BLOB",
    "MAX_PACK",
    "MAX_TRAILER",
    "MAX_WINDOW_SIZE",
    "PackFormatError",
    "PackedBlob",
    "check_pack_size",
    "trailer_length",
    "decode_blob",
    "encode_blob",
    "encode_trailer",
    "parse_trailer",
]

MAGIC = b"GBPACK\x00\x01"
FOOTER = struct.Struct(">I8s")
FORMAT_VERSION = 1
ZSTD_LEVEL = 3
# Compress a blob only when that saves at least this fraction.
MIN_SAVING = 0.05
# A reader refuses a longer trailer, so hostile input is bounded.
MAX_TRAILER = 64 * 1024 * 1024
# Upper bounds on the numbers a trailer (or an index segment, or a directory
# listing) gives, so a hostile one cannot make a reader allocate, seek or
# store beyond them: a blob's stored and plain sizes, a pack's size (and so
# every offset in it).  docs/FORMAT.md states them.
MAX_BLOB = 2**32
MAX_PACK = 2**40
# The largest zstd window a blob's frame may ask for (the writer's level 3
# uses 2 MiB at most), so that decoding one needs bounded memory.
MAX_WINDOW_SIZE = 1 << 23
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class PackFormatError(FormatError, ValueError):
    """A pack's trailer is not what format version 1 says."""


@attr.frozen
class PackedBlob:
    hash: str
    offset: int
    length: int
    size: int
    compression: str


def encode_blob(data):
    """The stored form of a blob: zstd where it pays, else the bytes as they are."""
    if len(data) >= 64:
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return packed, "zstd"
    return data, "none"


def decode_blob(stored, compression, size):
    """
    A blob's bytes from its stored form, checked to be ``size`` bytes long.

    Bounded by ``size`` whatever ``stored`` holds: zstandard's one-shot
    ``decompress`` (and ``decompressobj``) ignore an output limit when the
    frame declares its content size, so a frame of a few KiB from a hostile
    pack could expand to gigabytes before any length check.  The declared
    size is compared first; then at most ``size + 1`` bytes are decoded.
    """
    if compression == "none":
        data = stored
    elif compression == "zstd":
        data = _decompress_bounded(stored, size)
    else:
        raise PackFormatError(f"unknown compression {compression!r}")
    if len(data) != size:
        raise PackFormatError(f"blob decodes to {len(data)} bytes, expected {size}")
    return data


def _decompress_bounded(stored, size):
    """The one zstd frame ``stored``, decoded into at most ``size`` bytes (else PackFormatError)."""
    if bytes(stored[:4]) != zstandard.FRAME_HEADER:
        raise PackFormatError("blob does not decompress: not a zstd frame")
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as e:
        raise PackFormatError(f"blob does not decompress: {e}") from None
    # -1 (zstandard's answer, not its CONTENTSIZE_UNKNOWN constant): not declared.
    if declared > size:
        raise PackFormatError(
            f"blob content larger than recorded: the frame declares {declared} bytes, the index {size}")
    if declared != -1 and declared != size:
        raise PackFormatError(
            f"blob content smaller than recorded: the frame declares {declared} bytes, the index {size}")
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE).stream_reader(stored)
        with reader:
            data = reader.read(size + 1)
            if len(data) > size:
                raise PackFormatError(f"blob content larger than recorded: more than {size} bytes")
            if len(data) == size and reader.read(1):
                raise PackFormatError("blob holds data after its zstd frame")
    except zstandard.ZstdError as e:
        raise PackFormatError(f"blob does not decompress: {e}") from None
    return data


def encode_trailer(packed):
    """The trailer and footer that end a pack of the ``PackedBlob``s ``packed``."""
    body = json.dumps(
        {
            "format": "gridbackup-pack",
            "version": FORMAT_VERSION,
            "blobs": [[b.hash, b.offset, b.length, b.size, b.compression] for b in packed],
        },
        separators=(",", ":"),
    ).encode("utf-8")
    return body + FOOTER.pack(len(body), MAGIC)


def check_pack_size(size):
    """``size`` if it is a pack size this reader accepts (an integer from the footer's 12 bytes to MAX_PACK)."""
    if type(size) is not int or not FOOTER.size <= size <= MAX_PACK:
        raise PackFormatError(f"a pack size must be an integer from {FOOTER.size} to {MAX_PACK}, got {size!r:.40}")
    return size


def trailer_length(tail, pack_size):
    """
    The trailer's length that the footer (the last 12 bytes of ``tail``)
    states, once it is one a reader fetches: at most ``MAX_TRAILER`` and
    within the pack.  Call it before a ranged read of the whole trailer, so
    a hostile footer cannot ask for gigabytes.
    """
    check_pack_size(pack_size)
    if len(tail) < FOOTER.size:
        raise PackFormatError("pack too short for its footer")
    length, magic = FOOTER.unpack(bytes(tail[-FOOTER.size:]))
    if magic != MAGIC:
        raise PackFormatError("not a gridbackup pack (bad magic)")
    if length > MAX_TRAILER:
        raise PackFormatError(f"trailer of {length} bytes is larger than {MAX_TRAILER}")
    if length + FOOTER.size > pack_size:
        raise PackFormatError("trailer longer than the pack")
    return length


def parse_trailer(tail, pack_size):
    """
    Read the blob list from the last bytes of a pack (``tail`` must hold the
    whole trailer and footer; ``pack_size`` is the size of the whole pack).
    Strict: anything docs/FORMAT.md does not allow is refused.
    """
    length = trailer_length(tail, pack_size)
    if length + FOOTER.size > len(tail):
        raise PackFormatError("trailer longer than the bytes given")
    doc = strictjson.load_object(
        bytes(tail[len(tail) - FOOTER.size - length:len(tail) - FOOTER.size]), "pack trailer", PackFormatError
    )
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
            or not 1 <= item[2] <= MAX_BLOB or not 1 <= item[3] <= MAX_BLOB
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
