"""Chunking: tiers, boundaries that survive buffer edges, and shift resistance."""

import hashlib
import os
import random

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.scan import chunker
from gridbackupd.scan.chunker import ChunkParams, digest_fd

SMALL = ChunkParams(min_size=4096, avg_size=16384, max_size=65536)


def digest_bytes(testcase, data, tiny_max=128, threshold=64 * 1024, params=SMALL):
    path = testcase.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_fd(fd, tiny_max, threshold, params)
    finally:
        os.close(fd)


class TierTests(SynchronousTestCase):
    def test_empty_and_tiny_are_inline(self):
        for data in (b"", b"x" * 128):
            d = digest_bytes(self, data)
            self.assertEqual(d.inline, data)
            self.assertEqual(d.chunks, ())
            self.assertEqual(d.sha256, hashlib.sha256(data).hexdigest())

    def test_small_is_one_chunk(self):
        data = os.urandom(129)
        d = digest_bytes(self, data)
        self.assertIsNone(d.inline)
        self.assertEqual([(c.offset, c.size) for c in d.chunks], [(0, 129)])
        self.assertEqual(d.chunks[0].hash, hashlib.sha256(data).hexdigest())

    def test_large_chunks_cover_the_file(self):
        data = random.Random(1).randbytes(1_000_000)
        d = digest_bytes(self, data)
        self.assertEqual(d.size, len(data))
        self.assertEqual(d.sha256, hashlib.sha256(data).hexdigest())
        offset = 0
        for c in d.chunks:
            self.assertEqual(c.offset, offset)
            self.assertEqual(c.hash, hashlib.sha256(data[c.offset:c.offset + c.size]).hexdigest())
            self.assertLessEqual(c.size, SMALL.max_size)
            offset += c.size
        self.assertEqual(offset, len(data))
        self.assertGreater(len(d.chunks), 10)


class BufferTests(SynchronousTestCase):
    def test_buffer_size_does_not_change_boundaries(self):
        data = random.Random(2).randbytes(700_000)
        whole = digest_bytes(self, data)
        self.patch(chunker, "BUFFER", 100_000)
        pieces = digest_bytes(self, data)
        self.assertEqual(whole, pieces)

    def test_insertion_changes_few_chunks(self):
        data = random.Random(3).randbytes(2_000_000)
        before = {c.hash for c in digest_bytes(self, data).chunks}
        changed = data[:1_000_000] + b"!" + data[1_000_000:]
        after = [c.hash for c in digest_bytes(self, changed).chunks]
        new = [h for h in after if h not in before]
        self.assertLessEqual(len(new), 2)
