"""
The read-cap index on the grid: index segments, ``gridbackup.json`` and the
writer lock document.  Encoders write exactly the bytes docs/FORMAT.md
specifies; parsers are strict and raise ``IndexFormatError`` (a
``FormatError`` and a ``ValueError``) for anything that page does not allow.

An index segment describes one commit: for every blob the commit adds,
either where it sits in one of the commit's packs, or (very small blobs)
its bytes inline.  The union of the segments of all linked commits is the
whole index of a backup set.
"""

import base64
import binascii
import hashlib
import json
import re

import attr

from gridbackupd.errors import FormatError
from gridbackupd.format import strictjson
from gridbackupd.format.pack import MAX_BLOB, MAX_PACK

INDEX_FORMAT = "gridbackup-index"
INDEX_VERSION = 1
SETTINGS_FORMAT = "gridbackup"
SETTINGS_VERSION = 2
# The layout versions this code reads and writes (docs/FORMAT.md "On-grid layout").
SETTINGS_VERSIONS = (1, 2)
LOCK_FORMAT = "gridbackup-lock"
LOCK_VERSION = 1
# A reader refuses a segment, settings or lock document larger than these,
# so hostile input is bounded; they are also the most it downloads of each
# (docs/FORMAT.md, "Sizes a reader accepts").
MAX_SEGMENT = 256 * 1024 * 1024
MAX_SETTINGS = 64 * 1024
MAX_LOCK = 4096
# Largest blob a segment may hold inline.
MAX_INLINE = 65536
COMPRESSIONS = ("none", "zstd")

_HASH = re.compile(r"[0-9a-f]{64}\Z")
_PACK = re.compile(r"pack-[0-9a-f]{64}\Z")


class IndexFormatError(FormatError, ValueError):
    """Bytes that are not what docs/FORMAT.md allows."""


@attr.frozen
class IndexedBlob:
    """A blob in a pack of the same commit: ``pack`` is the pack's name in the commit directory."""

    hash: str
    pack: str
    offset: int
    length: int
    size: int
    compression: str


@attr.frozen
class InlineBlob:
    hash: str
    data: bytes = attr.field(repr=False)


@attr.frozen
class IndexSegment:
    blobs: tuple  # IndexedBlob, by hash
    inline: tuple  # InlineBlob, by hash

    def packs(self):
        return sorted({b.pack for b in self.blobs})


# -- strict JSON -------------------------------------------------------------


def _load(data, what):
    return strictjson.load_object(data, what, IndexFormatError)


def _dump(doc):
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def _int(value, what, minimum=0, maximum=2**63 - 1):
    if type(value) is not int or not minimum <= value <= maximum:
        raise IndexFormatError(f"{what} must be an integer from {minimum} to {maximum}, got {value!r:.40}")
    return value


def _hash(value, what):
    if type(value) is not str or not _HASH.match(value):
        raise IndexFormatError(f"{what} must be 64 lowercase hex digits, got {value!r:.80}")
    return value


def _header(doc, fmt, version, keys, what):
    if set(doc) != set(keys):
        raise IndexFormatError(
            f"{what}: expected exactly the keys {sorted(keys)}, got {sorted(doc)}"
        )
    if doc["format"] != fmt:
        raise IndexFormatError(f"{what}: format {doc['format']!r:.40} is not {fmt!r}")
    if type(doc["version"]) is not int or doc["version"] != version:
        raise IndexFormatError(
            f"{what}: version {doc['version']!r:.40} is not supported (this reader knows {version})"
        )


# -- index segments -----------------------------------------------------------

def encode_index_segment(blobs, inline=()):
    """
    blobs: (hash, pack name, offset, length, size, compression) rows;
    inline: (hash, bytes) pairs.  Sorted here, so the bytes depend only on
    the set of rows.
    """
    blobs = sorted(tuple(r) for r in blobs)
    inline = sorted((h, bytes(d)) for h, d in inline)
    return _dump({
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "blobs": [list(r) for r in blobs],
        "inline": [[h, base64.b64encode(d).decode("ascii")] for h, d in inline],
    })


def parse_index_segment(data, pack_names=None):
    """
    Parse an index segment (bytes) into an ``IndexSegment``.  With
    ``pack_names`` (the pack children of the commit directory), every pack
    the segment names must be one of them.  Raises IndexFormatError.
    """
    if len(data) > MAX_SEGMENT:
        raise IndexFormatError(f"index segment: {len(data)} bytes is more than {MAX_SEGMENT}")
    doc = _load(data, "index segment")
    _header(doc, INDEX_FORMAT, INDEX_VERSION, ("format", "version", "blobs", "inline"), "index segment")
    if type(doc["blobs"]) is not list or type(doc["inline"]) is not list:
        raise IndexFormatError("index segment: blobs and inline must be arrays")
    seen = set()
    blobs = []
    previous = None
    for n, item in enumerate(doc["blobs"]):
        what = f"index segment: blobs[{n}]"
        if type(item) is not list or len(item) != 6:
            raise IndexFormatError(f"{what} must be an array of 6 values")
        h = _hash(item[0], what + " hash")
        pack = item[1]
        if type(pack) is not str or not _PACK.match(pack):
            raise IndexFormatError(f"{what} pack must be pack-<64 hex>, got {pack!r:.80}")
        if pack_names is not None and pack not in pack_names:
            raise IndexFormatError(f"{what} names {pack[:17]}, which is not in the commit")
        offset = _int(item[2], what + " offset", 0, MAX_PACK)
        length = _int(item[3], what + " length", 1, MAX_BLOB)
        size = _int(item[4], what + " size", 1, MAX_BLOB)
        if offset + length > MAX_PACK:
            raise IndexFormatError(f"{what} ends past {MAX_PACK}, the largest pack size")
        compression = item[5]
        if compression not in COMPRESSIONS or type(compression) is not str:
            raise IndexFormatError(f"{what} compression must be one of {COMPRESSIONS}")
        if compression == "none" and length != size:
            raise IndexFormatError(f"{what} is stored uncompressed but length != size")
        if previous is not None and h <= previous:
            raise IndexFormatError(f"{what} is out of order or repeated")
        previous = h
        seen.add(h)
        blobs.append(IndexedBlob(h, pack, offset, length, size, compression))
    inline = []
    previous = None
    for n, item in enumerate(doc["inline"]):
        what = f"index segment: inline[{n}]"
        if type(item) is not list or len(item) != 2:
            raise IndexFormatError(f"{what} must be an array of 2 values")
        h = _hash(item[0], what + " hash")
        text = item[1]
        if type(text) is not str:
            raise IndexFormatError(f"{what} data must be a base64 string")
        try:
            raw = text.encode("ascii")
            content = base64.b64decode(raw, validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise IndexFormatError(f"{what} data is not valid base64") from None
        if base64.b64encode(content) != raw:
            raise IndexFormatError(f"{what} data is not canonical base64")
        if not 1 <= len(content) <= MAX_INLINE:
            raise IndexFormatError(f"{what} holds {len(content)} bytes: expected 1 to {MAX_INLINE}")
        if hashlib.sha256(content).hexdigest() != h:
            raise IndexFormatError(f"{what} does not match its SHA-256")
        if previous is not None and h <= previous:
            raise IndexFormatError(f"{what} is out of order or repeated")
        previous = h
        if h in seen:
            raise IndexFormatError(f"{what} is also listed in blobs")
        inline.append(InlineBlob(h, content))
    return IndexSegment(tuple(blobs), tuple(inline))


def commit_name(segment):
    """A commit's name: a function of its index segment's bytes only."""
    return "commit-" + hashlib.sha256(segment).hexdigest()[:32]


# -- gridbackup.json -------------------------------------------------------------

_SETTINGS_KEYS = ("format", "version", "hash", "chunking", "tiers")
_CHUNKING_KEYS = ("algorithm", "min_size", "avg_size", "max_size")
_TIER_KEYS = ("tiny_max", "inline_max", "chunk_threshold")

# Very small blobs go inline in the index segment up to this size, by default.
INLINE_MAX = 2048


def settings_document(chunk_params, tiny_max, chunk_threshold, inline_max=INLINE_MAX,
                      version=SETTINGS_VERSION):
    return {
        "format": SETTINGS_FORMAT,
        "version": version,
        "hash": "sha256",
        "chunking": {
            "algorithm": "fastcdc",
            "min_size": chunk_params.min_size,
            "avg_size": chunk_params.avg_size,
            "max_size": chunk_params.max_size,
        },
        "tiers": {"tiny_max": tiny_max, "inline_max": inline_max, "chunk_threshold": chunk_threshold},
    }


def encode_settings(doc):
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"


class UnknownLayoutVersion(IndexFormatError):
    """The backup set has a layout version this code does not know (a newer gridbackupd wrote it)."""


def parse_settings(data, known=SETTINGS_VERSIONS):
    """
    Parse gridbackup.json strictly; returns the document (a dict).  A
    version not in ``known`` is refused before anything else is trusted
    (UnknownLayoutVersion), with a message that says what to do.
    """
    if len(data) > MAX_SETTINGS:
        raise IndexFormatError(f"gridbackup.json: larger than {MAX_SETTINGS} bytes")
    doc = _load(data, "gridbackup.json")
    version = doc.get("version")
    if doc.get("format") == SETTINGS_FORMAT and version not in known and type(version) is int:
        raise UnknownLayoutVersion(
            f"gridbackup.json: this backup set has on-grid layout version {version}, and this "
            f"gridbackupd knows only version{'s' if len(known) > 1 else ''} "
            f"{', '.join(map(str, known))}: read or write it with a gridbackupd that knows "
            f"version {version}")
    _header(doc, SETTINGS_FORMAT, version if version in known else known[-1], _SETTINGS_KEYS,
            "gridbackup.json")
    if doc["hash"] != "sha256":
        raise IndexFormatError(f"gridbackup.json: hash {doc['hash']!r:.40} is not 'sha256'")
    chunking, tiers = doc["chunking"], doc["tiers"]
    if type(chunking) is not dict or set(chunking) != set(_CHUNKING_KEYS):
        raise IndexFormatError(f"gridbackup.json: chunking must have exactly the keys {list(_CHUNKING_KEYS)}")
    if chunking["algorithm"] != "fastcdc":
        raise IndexFormatError("gridbackup.json: chunking algorithm must be 'fastcdc'")
    lo = _int(chunking["min_size"], "gridbackup.json: chunking min_size", 1, MAX_BLOB)
    avg = _int(chunking["avg_size"], "gridbackup.json: chunking avg_size", 1, MAX_BLOB)
    hi = _int(chunking["max_size"], "gridbackup.json: chunking max_size", 1, MAX_BLOB)
    if not lo <= avg <= hi:
        raise IndexFormatError("gridbackup.json: chunking sizes must satisfy min <= avg <= max")
    if type(tiers) is not dict or set(tiers) != set(_TIER_KEYS):
        raise IndexFormatError(f"gridbackup.json: tiers must have exactly the keys {list(_TIER_KEYS)}")
    _int(tiers["tiny_max"], "gridbackup.json: tiers tiny_max")
    _int(tiers["inline_max"], "gridbackup.json: tiers inline_max", 0, MAX_INLINE)
    _int(tiers["chunk_threshold"], "gridbackup.json: tiers chunk_threshold", 1, MAX_BLOB)
    return doc


# -- the writer lock ---------------------------------------------------------------

def encode_lock(writer, host, heartbeat, seq=None):
    """
    The writer lock document.  ``seq`` counts the writer's renewals: a
    reader judges staleness by how long it sees the same ``seq``, never by
    comparing ``heartbeat`` with its own clock.  Without ``seq``: the old
    form, which readers still take.
    """
    doc = {
        "format": LOCK_FORMAT, "version": LOCK_VERSION,
        "writer": writer, "host": host, "heartbeat": int(heartbeat),
    }
    if seq is not None:
        doc["seq"] = seq
    return _dump(doc)


def parse_lock(data):
    """
    The writer lock: a dict with writer, host, heartbeat (seconds since the
    epoch, as the writer's clock said) and seq (None in a lock written
    before renewals were counted).
    """
    if len(data) > MAX_LOCK:
        raise IndexFormatError(f"writer lock: larger than {MAX_LOCK} bytes")
    doc = _load(data, "writer lock")
    keys = ("format", "version", "writer", "host", "heartbeat")
    _header(doc, LOCK_FORMAT, LOCK_VERSION, keys + (("seq",) if "seq" in doc else ()), "writer lock")
    for key in ("writer", "host"):
        if type(doc[key]) is not str or not 1 <= len(doc[key]) <= 255:
            raise IndexFormatError(f"writer lock: {key} must be a string of 1 to 255 characters")
    _int(doc["heartbeat"], "writer lock: heartbeat")
    doc["seq"] = _int(doc["seq"], "writer lock: seq") if "seq" in doc else None
    return doc
