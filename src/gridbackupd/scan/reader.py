"""
Reading a changed file: chunk and hash it while making sure it held still.

A file that changes while it is read is read again, up to
``REREAD_ATTEMPTS`` times; the last time, what is read is also kept in the
spool (``ScanOptions.spool_dir``), because the file may never match it
again.  Runs in the scan's worker thread, like the walk.

A file is opened relative to its directory's descriptor, never followed,
never as a controlling terminal, never waiting on a FIFO or device; and it
must still be the regular file the walk saw (device, inode) before a byte
is read.
"""

import os
import stat

from gridbackupd.model import POSSIBLY_INCONSISTENT
from gridbackupd.scan import chunker
from gridbackupd.scan.metadata import find_holes, reason

REREAD_ATTEMPTS = 3

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Test hooks, called with the file's path: before it is opened (an OSError
# it raises is the open's), and once it is open and checked, before it is
# read (a test changes the file there).
before_open = None
while_open = None


class FileReader:
    """Reads regular files for one scan; errors go to ``error(path, why)``."""

    def __init__(self, options, progress, error):
        self.options = options
        self.progress = progress
        self.error = error

    def _spooler(self, size):
        """
        A chunk sink that keeps the chunks of this read in the spool, and
        the map hash -> spool path it fills; (None, None) when there is no
        spool or not room enough for a copy of the file.
        """
        spool = self.options.spool_dir
        if not spool:
            return None, None
        try:
            os.makedirs(spool, exist_ok=True)
            fs = os.statvfs(spool)
        except OSError:
            return None, None
        if size > fs.f_bavail * fs.f_frsize // 2:
            return None, None
        kept = {}
        broken: list[bool] = []

        def sink(chunk_hash, data):
            if broken or chunk_hash in kept:
                return
            target = os.path.join(spool, chunk_hash)
            if not os.path.exists(target):
                tmp = f"{target}.{os.getpid()}.tmp"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, target)
                except OSError:
                    broken.append(True)
                    return
            try:
                copy = os.stat(target, follow_symlinks=False)
            except OSError:
                broken.append(True)
                return
            # Where the packer reads it: the spool is opened by its path.
            kept[chunk_hash] = (os.fsencode(target), copy.st_dev, copy.st_ino,
                                len(os.fsencode(spool)))

        def result():
            if broken:
                self._unspool(kept)  # a partial copy is no use
                return None
            return kept

        return sink, result

    def _unspool(self, kept):
        for target, _, _, _ in (kept or {}).values():
            try:
                os.unlink(target)
            except OSError:
                pass

    def read(self, path, st, dir_fd, name):
        """
        Read the regular file ``name`` of the open directory ``dir_fd``
        (``path``, for errors; ``st``, its lstat in the walk), again if it
        changed meanwhile; None on error.
        Returns ``(digest, final stat, flags, holes, spooled)``: ``spooled``
        maps the chunk hashes of a file that never held still to copies of
        what was read (see ``ScanOptions.spool_dir``), else None.
        """
        for attempt in range(REREAD_ATTEMPTS):
            sink = kept = None
            if attempt == REREAD_ATTEMPTS - 1:
                # The last try of a file that changed under every read so
                # far: keep what is read, the file may never match it again.
                sink, kept = self._spooler(st.st_size)
            try:
                if before_open is not None:
                    before_open(path)
                fd = os.open(name, OPEN_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                self.error(path, reason(e, "cannot open"))
                return None
            try:
                before = os.fstat(fd)
                if (
                    not stat.S_ISREG(before.st_mode)
                    or before.st_ino != st.st_ino
                    or before.st_dev != st.st_dev
                ):
                    self.error(path, "replaced by another file while scanned")
                    if kept is not None:
                        self._unspool(kept())
                    return None
                if while_open is not None:
                    while_open(path)
                holes = ()
                if before.st_blocks * 512 < before.st_size:
                    holes = find_holes(fd, before.st_size)
                digest = chunker.digest_fd(
                    fd, self.options.tiny_max, self.options.chunk_threshold, self.options.params,
                    sink=sink,
                )
                after = os.fstat(fd)
            except OSError as e:
                self.error(path, reason(e, "cannot read"))
                if kept is not None:
                    self._unspool(kept())
                return None
            finally:
                os.close(fd)
            self.progress.bytes_hashed += digest.size
            if (
                before.st_size == after.st_size == digest.size
                and before.st_mtime_ns == after.st_mtime_ns
            ):
                if kept is not None:
                    self._unspool(kept())  # it held still after all
                return digest, after, (), holes, None
            st = after
        # Holes of a file that never held still are not worth recording.
        return digest, after, (POSSIBLY_INCONSISTENT,), (), kept() if kept is not None else None
