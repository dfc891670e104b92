"""
The one zstd frame a backup log is, read strictly.
"""

import zstandard

__all__ = ["MAX_WINDOW_SIZE", "READ_SIZE", "FrameSource", "PartialSource", "PartialStream"]

# The largest zstd window a reader accepts; level 3 uses 2 MiB at most.
MAX_WINDOW_SIZE = 1 << 23

READ_SIZE = 1 << 17


class FrameSource:
    """
    The compressed bytes of one zstd frame, checked on their way into the
    decompressor.

    The decompressor of the zstandard package silently accepts a frame cut
    short and reads on into a second frame.  This wrapper follows the frame
    structure (header, block headers, checksum) without decompressing, hands
    the decompressor the bytes of the first frame only, and remembers what
    is wrong: bad magic, a frame without a checksum or with a dictionary, a
    reserved block type, bytes after the frame, or an input that ends
    inside it.
    """

    def __init__(self, fileobj):
        self._fileobj = fileobj
        self._state = "start"
        self._need = 5  # bytes to collect in _pending before the next step
        self._pending = b""
        self._skip = 0  # block content bytes to pass over
        self._last_block = False
        self._has_checksum = False
        self._trailing = False
        self.done = False  # the frame is complete
        self.error = None

    def read(self, size):
        if self.error is not None or self.done:
            return b""
        data = self._fileobj.read(size)
        if not data:
            if self._state == "start" and not self._pending:
                self.error = "the file is empty"
            else:
                self.error = "the zstd frame is truncated"
            return b""
        if type(data) is not bytes:
            data = bytes(data)
        end = self._follow(data)
        if end < len(data):
            self._trailing = True  # reported by finish(), after the frame's lines
        return data[:end]

    def finish(self):
        """Check, once the decompressor is done, that the input ended with the frame."""
        if self.error is None:
            if not self.done:
                self.error = "the zstd frame is truncated"
            elif self._trailing or self._fileobj.read(1):
                self.error = "data after the end of the zstd frame"

    def _follow(self, data):
        """Advance the frame parser over data; return how much belongs to the frame."""
        pos = 0
        n = len(data)
        while pos < n and not self.done and self.error is None:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self._after_block()
                continue
            take = min(self._need - len(self._pending), n - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                field = self._pending
                self._pending = b""
                self._step(field)
        return pos

    def _step(self, field):
        if self._state == "start":
            if field[:4] != b"\x28\xb5\x2f\xfd":
                self.error = "not a zstd frame (bad magic number)"
                return
            fhd = field[4]
            single_segment = fhd & 0x20
            self._has_checksum = bool(fhd & 0x04)
            if not self._has_checksum:
                self.error = "the zstd frame has no content checksum"
                return
            if fhd & 0x03:
                self.error = "the zstd frame names a dictionary"
                return
            fcs_flag = fhd >> 6
            rest = (0 if single_segment else 1) + (
                (1 if single_segment else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
            )
            self._expect("header", rest)
        elif self._state == "header":
            self._expect("block", 3)
        elif self._state == "block":
            bits = int.from_bytes(field, "little")
            self._last_block = bool(bits & 1)
            block_type = (bits >> 1) & 3
            block_size = bits >> 3
            if block_type == 3:
                self.error = "reserved zstd block type"
                return
            self._skip = 1 if block_type == 1 else block_size
            if not self._skip:
                self._after_block()
        elif self._state == "checksum":
            self.done = True

    def _expect(self, state, count):
        self._state = state
        self._need = count
        if count == 0:
            self._step(b"")

    def _after_block(self):
        if self._last_block:
            self._expect("checksum", 4)
        else:
            self._expect("block", 3)



class PartialSource:
    """The first ``length`` bytes of a log being written, as a frame source."""

    error = None

    def __init__(self, fileobj, length):
        self._fileobj = fileobj
        self._left = length

    def read(self, size):
        data = self._fileobj.read(min(size, self._left)) if self._left > 0 else b""
        self._left -= len(data)
        return data

    def finish(self):
        pass


class PartialStream:
    """Decompress the start of a zstd frame that has no end yet."""

    def __init__(self, source):
        self._source = source
        self._decompressor = zstandard.ZstdDecompressor(
            max_window_size=MAX_WINDOW_SIZE
        ).decompressobj()

    def read(self, size):
        while True:
            data = self._source.read(READ_SIZE)
            if not data:
                return b""
            out = self._decompressor.decompress(data)
            if out:
                return out

