"""
The one zstd frame a backup log is, decompressed strictly.

zstandard's ``decompressobj()`` checks the content (block types, the window
size, the checksum) and says where the frame ends (``eof``,
``unused_data``); ``get_frame_parameters()`` says whether the frame header
promises a checksum and names a dictionary.  What this module adds is what
a log must be beyond any valid frame: one frame, starting at the first
byte (no skippable frame), with a content checksum, without a dictionary,
ending where the file ends.

Compressed bytes go into the decompressor ``_FEED`` at a time: one 4-byte
zstd block (an RLE block) may stand for 128 KiB, so an input made to
explode yields at most 4 MiB per step and memory stays bounded (neither
``decompress()`` nor ``decompressobj().decompress()`` of zstandard has an
output limit of its own).  The whole content is bounded too: a frame that
declares, or decodes to, more than ``MAX_LOG_CONTENT`` is refused, and a
log file on the grid larger than ``MAX_LOG`` is not downloaded.
"""

import zstandard

__all__ = ["MAX_LOG", "MAX_LOG_CONTENT", "MAX_WINDOW_SIZE", "READ_SIZE", "FrameError", "FrameReader"]

# The largest zstd window a reader accepts; level 3 uses 2 MiB at most.
MAX_WINDOW_SIZE = 1 << 23

# The largest log file (compressed) a reader downloads, and the most content
# it decodes from one (docs/FORMAT.md, "Sizes a reader accepts").
MAX_LOG = 16 * 1024**3
MAX_LOG_CONTENT = 256 * 1024**3

# Compressed bytes read from the file at a time.
READ_SIZE = 1 << 17

_FEED = 128

# Magic number and frame header descriptor: enough to know the header's size.
_HEAD = 5


class FrameError(ValueError):
    """What is wrong with the frame, for the reader to put a line number on."""


class FrameReader:
    """
    The decompressed content of the zstd frame in ``fileobj``, piece by piece.

    ``read()`` returns the next piece, ``b""`` once the frame is complete;
    ``finish()`` then checks that the file ended with it.  Both raise
    ``FrameError``.  With ``length``, only the first ``length`` bytes of a
    frame still being written are read: the header is not checked (the
    writer wrote it), and the content ends where those bytes end.
    """

    def __init__(self, fileobj, length=None, max_content=MAX_LOG_CONTENT):
        self._fileobj = fileobj
        self._max_content = max_content
        self._content = 0
        self._partial = length is not None
        self._decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE).decompressobj()
        chunks = _limited(fileobj, length) if self._partial else self._checked(fileobj, max_content)
        self._pieces = _pieces(chunks)

    def read(self):
        """The next piece of the content, or ``b""`` at the end of the frame."""
        while not self._decompressor.eof:
            piece = next(self._pieces, None)
            if piece is None:
                if self._partial:
                    return b""
                raise FrameError("the zstd frame is truncated")
            try:
                data = self._decompressor.decompress(piece)
            except zstandard.ZstdError as e:
                raise FrameError(f"invalid zstd data: {e}") from None
            if data:
                self._content += len(data)
                if self._content > self._max_content:
                    raise FrameError(f"the log decodes to more than {self._max_content} bytes")
                return data
        return b""

    def finish(self):
        """Check, once ``read()`` gave ``b""``, that the input ended with the frame."""
        if self._partial:
            return
        if not self._decompressor.eof:
            raise FrameError("the zstd frame is truncated")
        if self._decompressor.unused_data or next(self._pieces, None) is not None:
            raise FrameError("data after the end of the zstd frame")

    @staticmethod
    def _checked(fileobj, max_content):
        """The file's chunks, once its frame header is one a log may have."""
        head = b""
        need = _HEAD
        while len(head) < need:
            data = fileobj.read(READ_SIZE)
            if not data:
                raise FrameError("the zstd frame is truncated" if head else "the file is empty")
            head += data
            if need == _HEAD and len(head) >= _HEAD:
                if head[:4] != zstandard.FRAME_HEADER:
                    raise FrameError("not a zstd frame (bad magic number)")
                need = _zstd(zstandard.frame_header_size, head)
        params = _zstd(zstandard.get_frame_parameters, head)
        if not params.has_checksum:
            raise FrameError("the zstd frame has no content checksum")
        if params.dict_id:
            raise FrameError("the zstd frame names a dictionary")
        declared = params.content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > max_content:
            raise FrameError(f"the zstd frame declares {declared} bytes of content, "
                             f"more than {max_content}")
        yield head
        yield from iter(lambda: fileobj.read(READ_SIZE), b"")


def _zstd(function, head):
    try:
        return function(head)
    except zstandard.ZstdError as e:
        raise FrameError(f"invalid zstd data: {e}") from None


def _limited(fileobj, length):
    """The first ``length`` bytes of fileobj, in chunks."""
    while length > 0:
        data = fileobj.read(min(READ_SIZE, length))
        if not data:
            return
        length -= len(data)
        yield data


def _pieces(chunks):
    """The bytes of chunks, ``_FEED`` at a time."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), _FEED):
            yield view[start : start + _FEED]
