"""
A watched scan: walk only the directories a watcher saw change and take
every other entry from the parent snapshot, for the same log a full walk
would write.

A dirty directory is listed and each of its entries looked at, as a full
walk does; a directory found there that the parent did not have as the
same directory (new, renamed in, replaced, of another type) is walked
whole.  A directory that is not dirty keeps its parent's entries below it
(``Previous.copy_below``), except the paths on the way to a dirty
directory, which are looked at one by one.  Some paths are looked at
whatever the watcher said (``paths_to_revisit``): every name of a hard
link (a write through one name is an event in that name's directory
only) and entries a full walk would read again (flagged racy or possibly
inconsistent).

The walk is the full walk's (``Scanner``), in the same order, by
directory descriptor; only ``visit_dir`` decides what is listed.
"""

import base64
import json
import os
import stat

import zstandard

from gridbackupd.format.logfields import LogFormatError
from gridbackupd.format.logframe import MAX_WINDOW_SIZE
from gridbackupd.model import DIR, FILE, HARDLINK, Entry
from gridbackupd.scan.metadata import reason
from gridbackupd.scan.values import NewBlob, ScanStopped
from gridbackupd.scan.walker import MAX_DEPTH, PATH_MAX, Scanner

# Lines of a log that name a path to look at again (compact JSON, as written).
_MARKERS = (b'"kind":"hardlink"', b'"flags":[')
_READ = 1 << 20
# Beside a log the scan wrote: the paths it names to look at again.
REVISIT_SUFFIX = ".revisit"


def marked(record):
    """The paths of a record that ``paths_to_revisit`` finds in a log: () for most."""
    if type(record) is Entry:
        if record.kind == HARDLINK:
            return (record.path, record.target)
        if record.flags:
            return (record.path,)
    return ()


def _identity(log_path):
    st = os.stat(log_path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def write_revisit(log_path, paths):
    """
    Beside the log just written at ``log_path``: ``paths``, what
    ``paths_to_revisit`` would find in it, so that a watched scan need not
    read the whole log to know.  A cache: it names the log's size, mtime
    and inode, and a file missing, unreadable or naming another log (a
    forget rewrote it, a recovery brought it back) is not used.
    """
    side = log_path + REVISIT_SUFFIX
    doc = {"log": _identity(log_path),
           "paths": sorted(base64.b64encode(p).decode("ascii") for p in set(paths))}
    fd = os.open(side + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(side + ".tmp", side)


def _read_revisit(log_path):
    """``write_revisit``'s paths for the log at ``log_path``, or None if there are none for it."""
    try:
        with open(log_path + REVISIT_SUFFIX, "rb") as f:
            doc = json.load(f)
        if doc["log"] != _identity(log_path):
            return None
        return {base64.b64decode(p, validate=True) for p in doc["paths"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def paths_to_revisit(chain_logs):
    """
    The paths of the parent's logs (``(id, path)`` pairs) a watched scan
    looks at whatever the watcher said: hard links and their targets, and
    flagged entries.  A superset is harmless (a path looked at gives what a
    full walk gives).  From each log's ``write_revisit`` file, or else by
    reading the log raw, without decoding the entries around them; raises
    OSError or LogFormatError.
    """
    paths: set[bytes] = set()
    for _, log_path in chain_logs:
        known = _read_revisit(log_path)
        if known is not None:
            paths |= known
            continue
        with open(log_path, "rb") as f:
            try:
                reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE).stream_reader(f)
                pending = b""
                while True:
                    data = reader.read(_READ)
                    if not data:
                        break
                    data = pending + data
                    end = data.rfind(b"\n")
                    if end < 0:
                        pending = data
                        continue
                    lines, pending = data[:end], data[end + 1:]
                    if any(m in lines for m in _MARKERS):
                        for line in lines.split(b"\n"):
                            if any(m in line for m in _MARKERS):
                                _add_paths(paths, line)
            except zstandard.ZstdError as e:
                raise LogFormatError(f"{log_path}: invalid zstd data: {e}") from None
    return paths


def _add_paths(paths, line):
    try:
        obj = json.loads(line)
        paths.add(_path_bytes(obj["path"]))
        if obj.get("kind") == HARDLINK:
            paths.add(_path_bytes(obj["target"]))
    except (ValueError, KeyError, TypeError) as e:
        raise LogFormatError(f"an unreadable entry in a previous log: {e}") from None


def _path_bytes(value):
    if isinstance(value, str):
        return value.encode("utf-8")
    return base64.b64decode(value["b64"], validate=True)


def wanted_children(roots, paths):
    """
    ``{directory: sorted names}``: for each of ``paths`` under one of
    ``roots``, every directory above it (up to its root) and the name to
    follow there.  Paths under no root are left out.
    """
    wanted: dict[bytes, set] = {}
    tops = [r.rstrip(b"/") + b"/" for r in roots]
    for path in paths:
        path = os.path.normpath(path)
        if not any(path.startswith(t) or path + b"/" == t for t in tops):
            continue
        while path + b"/" not in tops and path != b"/":
            parent, name = os.path.split(path)
            wanted.setdefault(parent, set()).add(name)
            path = parent
    return {d: sorted(names) for d, names in wanted.items()}


class WatchedScanner(Scanner):
    """
    A ``Scanner`` that lists only the ``dirty`` directories (absolute,
    bytes) and looks at the ``revisit`` paths, and takes every other entry
    from ``previous``.  ``copy_blobs``: whether the blobs of files taken
    from the parent are queued again (as a full walk queues an unchanged
    file's): only needed while some of them may not be committed.
    """

    def __init__(self, *args, dirty=frozenset(), revisit=frozenset(), copy_blobs=True, **kwargs):
        super().__init__(*args, **kwargs)
        roots = [os.fsencode(os.path.normpath(r)) for r in self.options.roots]
        self.dirty = frozenset(os.path.normpath(d) for d in dirty)
        self.wanted = wanted_children(roots, self.dirty | frozenset(revisit))
        self.copy_blobs = copy_blobs
        self._whole = 0  # > 0: inside a directory walked whole

    def visit_dir(self, path, st, fields, same, dir_fd, name):
        if self._whole:
            return super().visit_dir(path, st, fields, same, dir_fd, name)
        prev = self.previous.find(path)
        if prev is None or prev.kind != DIR or (prev.dev, prev.ino) != (st.st_dev, st.st_ino):
            # New here (created, renamed in, replaced): all of it is new.
            self._whole += 1
            try:
                return super().visit_dir(path, st, fields, same, dir_fd, name)
            finally:
                self._whole -= 1
        if path in self.dirty or self._depth >= MAX_DEPTH:
            return super().visit_dir(path, st, fields, same, dir_fd, name)
        # Not dirty: no entry was added, removed or renamed in it, nor a
        # marker file that would exclude it; its entry is as it is now.
        self.progress.current = path
        wanted = self.wanted.get(path)
        if not wanted or (self.excluder.one_file_system and st.st_dev != self._root_dev):
            self.emit_entry(same if same is not None and same.size == 0 else Entry(**fields))
            self.previous.copy_below(path, self._copied)
            return
        try:
            fd = self._open_dir(path, st, dir_fd, name)
        except OSError as e:
            self._unlistable(path, st, fields, e)
            return
        try:
            self.emit_entry(same if same is not None and same.size == 0 else Entry(**fields))
            self._depth += 1
            try:
                self._merge_children(path, fd, wanted)
            finally:
                self._depth -= 1
        finally:
            os.close(fd)

    def _merge_children(self, path, fd, wanted):
        """The entries of a directory not listed: its parent's, and the ``wanted`` names looked at."""
        prefix = path if path.endswith(b"/") else path + b"/"
        names = iter(wanted)
        look = next(names, None)
        previous, progress = self.previous, self.progress
        while True:
            if progress.stop_requested:
                raise ScanStopped()
            head = previous.next_below(path)
            child = None
            if head is not None:
                child = head.path[len(prefix):].split(b"/", 1)[0]
            if look is not None and (child is None or look <= child):
                self._look_at(prefix + look, fd, look)
                look = next(names, None)
            elif child is None:
                return
            elif head.path == prefix + child:
                self._copied(head)
                previous.emit(head)
                if head.kind == DIR:
                    previous.copy_below(head.path, self._copied)
            else:
                previous.drop_through(prefix + child)  # below a path the parent did not have

    def _look_at(self, path, dir_fd, name):
        """A path of a directory not listed, looked at as a full walk would."""
        if len(path) >= PATH_MAX:
            self.error(path, "path too long (cannot read)")
        else:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.error(path, reason(e, "cannot read"))
            else:
                if self.excluder.path_excluded(path, stat.S_ISDIR(st.st_mode)):
                    self.progress.excluded += 1
                else:
                    self.visit(path, st, dir_fd, name)
        # Whatever the parent had there and the look did not find is gone.
        self.previous.drop_through(path)

    def _copied(self, entry):
        """An entry taken from the parent: counted as a full walk counts it."""
        progress = self.progress
        progress.entries += 1
        if entry.kind == FILE or entry.kind == HARDLINK:
            progress.files += 1
            progress.bytes += entry.size
        if self.copy_blobs and entry.kind == FILE and entry.blobs:
            offset = 0
            for h, size in entry.blobs:
                self.emit_blob(NewBlob(h, size, entry.path, offset, entry.mtime_ns,
                                       entry.dev, entry.ino, self._base))
                offset += size
