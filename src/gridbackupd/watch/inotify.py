"""
The Linux backend: inotify(7), read by the reactor itself (no thread).

``twisted.internet.inotify`` was the first choice, but it drops the queue
overflow event (its watch descriptor, -1, is in no table), closes the whole
descriptor when one watched directory is deleted, and cannot tell ENOSPC
(the watch limit) from other failures; this module is the same ctypes calls
with those three things right.
"""

import ctypes
import ctypes.util
import errno
import os
import struct

from twisted.internet import fdesc
from twisted.internet.abstract import FileDescriptor

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What changes an entry of a directory: its content, metadata, name or existence.
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
        | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
ADD_FLAGS = IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK

_HEADER = struct.Struct("=iIII")

_libc = None


def _lib():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def supported():
    """None if inotify can be used here, else why not (one line)."""
    try:
        lib = _lib()
        getattr(lib, "inotify_init1")
    except (OSError, AttributeError, TypeError):
        return "this system has no inotify"
    return None


def max_user_watches():
    """fs.inotify.max_user_watches, or None if it cannot be read."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class _Reader(FileDescriptor):
    """The inotify descriptor in the reactor: whole events go to ``backend.dispatch``."""

    def __init__(self, reactor, fd, backend):
        FileDescriptor.__init__(self, reactor)
        self._fd = fd
        self._backend = backend
        self._buffer = b""

    def fileno(self):
        return self._fd

    def doRead(self):
        return fdesc.readFromFD(self._fd, self._read)

    def _read(self, data):
        buf = self._buffer + data
        at = 0
        while len(buf) - at >= _HEADER.size:
            wd, mask, _cookie, size = _HEADER.unpack_from(buf, at)
            end = at + _HEADER.size + size
            if end > len(buf):
                break
            name = buf[at + _HEADER.size:end].rstrip(b"\0")
            at = end
            self._backend.dispatch(wd, mask, name)
        self._buffer = buf[at:]

    def connectionLost(self, reason):
        FileDescriptor.connectionLost(self, reason)


class InotifyBackend:
    """
    One inotify instance.  ``add`` may be called from a worker thread (the
    set-up walk); the events are read and dispatched in the reactor thread:
    ``on_event(directory, name, mask)`` with the watched directory's path,
    ``on_overflow()`` when the kernel's queue overflowed (events were lost).
    """

    name = "inotify"

    def __init__(self, reactor, on_event, on_overflow):
        lib = _lib()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self._fd = fd
        self._on_event = on_event
        self._on_overflow = on_overflow
        self.paths: dict[int, bytes] = {}  # watch descriptor -> directory
        self.wds: dict[bytes, int] = {}  # directory -> watch descriptor
        self._reader = _Reader(reactor, fd, self)
        self._reader.startReading()

    def add(self, path):
        """Watch the directory ``path`` (bytes); raises OSError (ENOSPC: the watch limit)."""
        wd = _lib().inotify_add_watch(self._fd, path, MASK | ADD_FLAGS)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), os.fsdecode(path))
        old = self.paths.get(wd)
        if old is not None and old != path:
            self.wds.pop(old, None)
        self.paths[wd] = path
        self.wds[path] = wd
        return wd

    def remove_tree(self, path):
        """Stop watching ``path`` and every watched directory below it (it moved away or was deleted)."""
        prefix = path.rstrip(b"/") + b"/"
        # list() copies at once: the set-up walk may be adding in its thread.
        gone = [p for p in list(self.wds) if p == path or p.startswith(prefix)]
        for p in gone:
            wd = self.wds.pop(p)
            self.paths.pop(wd, None)
            _lib().inotify_rm_watch(self._fd, wd)
        return len(gone)

    def count(self):
        return len(self.wds)

    def dispatch(self, wd, mask, name):
        if mask & IN_Q_OVERFLOW:
            self._on_overflow()
            return
        path = self.paths.get(wd)
        if mask & IN_IGNORED:
            # The kernel dropped the watch (directory deleted, unmounted).
            if path is not None:
                self.paths.pop(wd, None)
                if self.wds.get(path) == wd:
                    del self.wds[path]
            return
        if path is None:
            return  # a watch set up this instant, or removed a moment ago: the scans cover both
        self._on_event(path, name, mask)

    def close(self):
        self._reader.stopReading()
        self.paths.clear()
        self.wds.clear()
        try:
            os.close(self._fd)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
