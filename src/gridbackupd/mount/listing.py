"""
A directory's listing in the mount index, and the walk that makes every
listing of a snapshot from its entries in one streaming pass.

A listing is the directory's children as rows (``Row``), in name order,
encoded with ``marshal`` and compressed; its SHA-256 names it, so a
directory unchanged between two snapshots is stored once.  The index is
made by this daemon from its own logs and read by its own mount, never
taken from the grid, which is why a compact ``marshal`` is fine here.
"""

import hashlib
import marshal
import stat

import zstandard

from gridbackupd.format import logpaths
from gridbackupd.model import DIR, FILE, HARDLINK

FORMAT = 1

# Row fields, by position: the name (raw bytes), the kind, st_mode (type
# bits included), uid, gid, size, mtime_ns, ctime_ns, rdev, a symlink's or
# hard link's target, a file's blobs ((32-byte hash, size), ...), its inline
# content, its xattrs ((name, value), ...), and whether its content is
# pending (not on the grid: the snapshot is incomplete).
NAME, KIND, MODE, UID, GID, SIZE, MTIME, CTIME, RDEV, TARGET, BLOBS, INLINE, XATTRS, PENDING = range(14)

_COMPRESS = zstandard.ZstdCompressor(level=1)
_DECOMPRESS = zstandard.ZstdDecompressor()


class ListingError(ValueError):
    """A stored listing that cannot be read (another format, damage)."""


def row_of(entry, name, pending=False):
    """The row of ``entry`` (an ``Entry``) under ``name`` in its parent's listing."""
    blobs = tuple((bytes.fromhex(h), n) for h, n in entry.blobs) if entry.kind == FILE else None
    return (name, entry.kind, entry.mode, entry.uid, entry.gid, entry.size, entry.mtime_ns,
            entry.ctime_ns, entry.rdev, entry.target, blobs, entry.inline, tuple(entry.xattrs), pending)


def virtual_row(name, mtime_ns):
    """A directory above the backed-up paths (``/home`` of ``/home/ann``): not itself backed up."""
    return (name, DIR, stat.S_IFDIR | 0o755, 0, 0, 0, mtime_ns, mtime_ns, 0, None, None, None, (), False)


def virtual_parents(roots):
    """The directories whose listings may hold a ``virtual_row``: ``/`` and those above each backed-up path."""
    found = {b"/"}
    for root in roots:
        path = parent_and_name(root.rstrip(b"/") or b"/")[0]
        while path != b"/":
            found.add(path)
            path = parent_and_name(path)[0]
    return found


def encode(rows):
    """``(digest, data)`` of a listing."""
    raw = marshal.dumps((FORMAT, tuple(rows)), 4)
    return hashlib.sha256(raw).digest(), _COMPRESS.compress(raw)


def decode(data):
    """The rows of a stored listing (ListingError if it is not one)."""
    try:
        version, rows = marshal.loads(_DECOMPRESS.decompress(data))
    except (ValueError, EOFError, TypeError, zstandard.ZstdError) as e:
        raise ListingError(f"a listing that cannot be read: {e}") from None
    if version != FORMAT:
        raise ListingError(f"a listing of format {version!r}, not {FORMAT}")
    return rows


def parent_and_name(path):
    """The directory whose listing holds ``path``, and its name there."""
    head, name = path.rsplit(b"/", 1)
    return head or b"/", name


def build(entries, sink, mtime_ns, pending=None):
    """
    Every listing of the snapshot whose entries (path order) are
    ``entries``: ``sink.directory(path, digest, data)`` once per directory,
    ``/`` included, and ``sink.link(dir, name, nlink)`` for every hard-linked
    entry.  ``pending(entry)`` says whether a file's content is missing.
    Holds the listings of the open directories only (one path from the
    root).  Returns the number of entries.
    """
    stack: list[tuple[bytes, list]] = [(b"/", [])]
    link_targets: dict[bytes, list[bytes]] = {}
    count = 0

    def close():
        path, rows = stack.pop()
        digest, data = encode(rows)
        sink.directory(path, digest, data)

    for entry in entries:
        count += 1
        parent, name = parent_and_name(entry.path)
        while not logpaths.is_in_subtree(parent, stack[-1][0]):
            close()
        top = stack[-1][0]
        if top != parent:
            # Directories that are no entry of the snapshot (above a backed-up path).
            missing = parent[len(top):] if top != b"/" else parent
            for part in missing.strip(b"/").split(b"/"):
                path = (stack[-1][0] if stack[-1][0] != b"/" else b"") + b"/" + part
                stack[-1][1].append(virtual_row(part, mtime_ns))
                stack.append((path, []))
        rows = stack[-1][1]
        is_pending = entry.kind == FILE and pending is not None and pending(entry)
        rows.append(row_of(entry, name, is_pending))
        if entry.kind == HARDLINK:
            link_targets.setdefault(entry.target, []).append(entry.path)
        elif entry.kind == DIR:
            stack.append((entry.path, []))
    while stack:
        close()
    for target, paths in link_targets.items():
        nlink = 1 + len(paths)
        for path in (target, *paths):
            sink.link(*parent_and_name(path), nlink)
    return count
