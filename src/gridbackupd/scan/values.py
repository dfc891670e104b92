"""
The values a scan is given and gives back: its options, the counters the
API reads while it runs, and the blobs it finds.
"""

import builtins
import time

import attr

from gridbackupd.scan import chunker
from gridbackupd.scan.metadata import display_path

MAX_ERRORS = 1000


@attr.frozen
class ScanOptions:
    roots: tuple
    exclude: tuple = ()
    excluded_dirs: tuple = ()  # absolute paths never entered (the state dir)
    exclude_if_present: tuple = ()  # marker names: a directory holding one is left out
    exclude_caches: bool = True  # directories with a valid CACHEDIR.TAG are left out
    one_file_system: bool = False  # do not enter directories on another file system
    # Where the content of a file that never held still is kept as read
    # (the uploader reads its blobs from there); None: not kept.
    spool_dir: str | None = None
    tiny_max: int = 128
    chunk_threshold: int = 1024 * 1024
    params: chunker.ChunkParams = chunker.ChunkParams()


@attr.define
class ScanProgress:
    """
    Counters the API reads while the scan runs in its thread (plain
    attribute writes: a reader sees each value whole).  ``errors`` keeps
    the first MAX_ERRORS errors in full, ``error_count`` counts them all,
    so a tree of a million unreadable files costs no memory.
    """

    entries: int = 0
    visited: int = 0  # entries looked at on disk (a watched scan takes the others from its parent)
    files: int = 0
    bytes: int = 0
    bytes_hashed: int = 0
    excluded: int = 0
    current: builtins.bytes = b""  # the directory or file being scanned
    errors: list = attr.Factory(list)
    error_count: int = 0
    started: float = attr.Factory(time.time)
    stop_requested: bool = False  # set from another thread: the scan stops at the next entry

    def add_error(self, path, why):
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"path": display_path(path), "reason": why})

    def error_list(self):
        """The errors as a snapshot records them: a note says how many were left out."""
        if self.error_count <= len(self.errors):
            return list(self.errors)
        more = self.error_count - len(self.errors)
        return self.errors + [{"path": None, "reason": f"and {more} more errors"}]

    def restart(self):
        """The scan starts over (its previous logs were damaged)."""
        self.entries = self.visited = self.files = self.bytes = self.bytes_hashed = self.excluded = 0
        self.current = b""
        self.errors = []
        self.error_count = 0


class ScanStopped(Exception):
    """The scan was asked to stop (the daemon is stopping); it resumes later."""


@attr.frozen
class NewBlob:
    """
    A blob the scanner read: where to read it again for upload, and the
    identity of the file it was read from (``source_dev``,
    ``source_ino``), which the packer checks before reading a byte.
    ``source_base`` is how many leading bytes of ``source_path`` are the
    directory opened by its path (the root's parent, as configured);
    every component after it is opened without following a link.
    """

    hash: str
    size: int
    source_path: bytes
    source_offset: int
    mtime_ns: int
    source_dev: int | None = None
    source_ino: int | None = None
    source_base: int | None = None
