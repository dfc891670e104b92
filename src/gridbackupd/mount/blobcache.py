"""
The mount's cache of checked blobs: a few in memory, the rest on disk under
``state_dir/mount/cache`` up to ``[mount] cache_size``, least recently used
first out.  A blob from disk is checked against its SHA-256 again before
it is used, so a damaged cache file costs a fetch, never wrong bytes.
"""

import collections
import hashlib
import os
import threading

MEMORY = 64 * 1024 * 1024


class BlobCache:
    def __init__(self, directory, limit, memory=MEMORY):
        self.directory = directory
        self.limit = limit
        self.memory_limit = memory
        self._lock = threading.Lock()
        self._memory: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._memory_size = 0
        self._disk: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._disk_size = 0
        os.makedirs(directory, mode=0o700, exist_ok=True)
        found = []
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.endswith(".tmp"):
                os.unlink(path)
                continue
            st = os.stat(path)
            found.append((st.st_mtime, name, st.st_size))
        for _, name, size in sorted(found):
            self._disk[name] = size
            self._disk_size += size
        self._evict()

    def _path(self, blob_hash):
        return os.path.join(self.directory, blob_hash)

    def get(self, blob_hash):
        """The blob's bytes if cached (and still matching its hash), else None."""
        with self._lock:
            data = self._memory.get(blob_hash)
            if data is not None:
                self._memory.move_to_end(blob_hash)
                return data
            on_disk = blob_hash in self._disk
            if on_disk:
                self._disk.move_to_end(blob_hash)
        if not on_disk:
            return None
        try:
            with open(self._path(blob_hash), "rb") as f:
                data = f.read()
        except OSError:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != blob_hash:
            self._forget(blob_hash)
            return None
        self._remember(blob_hash, data)
        return data

    def put(self, blob_hash, data):
        """Keep a checked blob."""
        self._remember(blob_hash, data)
        if self.limit <= 0 or len(data) > self.limit:
            return
        with self._lock:
            if blob_hash in self._disk:
                return
        path = self._path(blob_hash)
        tmp = f"{path}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            # A full disk or the like: the cache is only a cache.
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        with self._lock:
            if blob_hash not in self._disk:
                self._disk[blob_hash] = len(data)
                self._disk_size += len(data)
        self._evict()

    def _remember(self, blob_hash, data):
        with self._lock:
            if blob_hash in self._memory:
                return
            self._memory[blob_hash] = data
            self._memory_size += len(data)
            while self._memory_size > self.memory_limit and len(self._memory) > 1:
                _, old = self._memory.popitem(last=False)
                self._memory_size -= len(old)

    def _forget(self, blob_hash):
        with self._lock:
            size = self._disk.pop(blob_hash, None)
            if size is not None:
                self._disk_size -= size
        try:
            os.unlink(self._path(blob_hash))
        except OSError:
            pass

    def _evict(self):
        while True:
            with self._lock:
                if self._disk_size <= self.limit or not self._disk:
                    return
                name, size = self._disk.popitem(last=False)
                self._disk_size -= size
            try:
                os.unlink(self._path(name))
            except OSError:
                pass

    @property
    def disk_size(self):
        return self._disk_size
