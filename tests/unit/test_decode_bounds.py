"""
Hostile data from the grid costs a bounded amount of memory and download:
a zstd bomb in a pack, a pack footer asking for a huge trailer, an object
whose cap says it is larger than its kind may be (docs/FORMAT.md, "Sizes a
reader accepts").
"""

import io
import json
import os
import tracemalloc

import zstandard
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.errors import TahoeTooLarge
from gridbackupd.format import pack
from gridbackupd.format.index import MAX_LOCK, encode_lock, settings_document
from gridbackupd.format.logframe import FrameError, FrameReader
from gridbackupd.format.pack import (
    FOOTER,
    MAGIC,
    PackedBlob,
    PackFormatError,
    decode_blob,
    encode_blob,
    encode_trailer,
    trailer_length,
)
from gridbackupd.grid import client as clientmod
from gridbackupd.grid.answers import DirChild
from gridbackupd.restore import recover
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import db as dbmod
from gridbackupd.testing.fake_tahoe import fake_client
from gridbackupd.upload.publisher import Publisher
from gridbackupd.upload.writerlock import LOCK_HEARTBEAT

MiB = 1024 * 1024
# What the bombs below expand to: far more than any test should hold.
BOMB = 256 * MiB


def run(coro):
    return Deferred.fromCoroutine(coro)


def bomb(declare_size):
    """A frame of a few KiB that expands to BOMB zero bytes, built without holding them."""
    params = zstandard.ZstdCompressionParameters.from_level(3, write_content_size=declare_size)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj(
        size=BOMB if declare_size else -1)
    zeros = bytes(MiB)
    frame = b"".join(compressor.compress(zeros) for _ in range(BOMB // MiB)) + compressor.flush()
    assert len(frame) < 64 * 1024
    return frame


class DecodeBlobTests(SynchronousTestCase):
    def decode_bounded(self, stored, size):
        """decode_blob's failure, with the most memory Python allocated meanwhile."""
        tracemalloc.start()
        try:
            with self.assertRaises(PackFormatError) as caught:
                decode_blob(stored, "zstd", size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 4 * MiB, "decoding a bomb allocated its expansion")
        return str(caught.exception)

    def test_bomb_declaring_its_content_size(self):
        frame = bomb(declare_size=True)
        self.assertEqual(zstandard.frame_content_size(frame), BOMB)
        reason = self.decode_bounded(frame, 1000)
        self.assertIn("blob content larger than recorded", reason)
        self.assertIn(str(BOMB), reason)

    def test_bomb_not_declaring_its_content_size(self):
        frame = bomb(declare_size=False)
        self.assertEqual(zstandard.frame_content_size(frame), -1)
        reason = self.decode_bounded(frame, 1000)
        self.assertIn("blob content larger than recorded", reason)

    def test_what_a_writer_stores_decodes(self):
        data = b"a line of text\n" * 5000
        stored, compression = encode_blob(data)
        self.assertEqual(compression, "zstd")
        self.assertEqual(decode_blob(stored, compression, len(data)), data)
        # Without a declared size (another writer), bounded all the same.
        plain = zstandard.ZstdCompressor(write_content_size=False).compress(data)
        self.assertEqual(decode_blob(plain, "zstd", len(data)), data)
        self.assertEqual(decode_blob(data, "none", len(data)), data)

    def test_frames_that_do_not_match_the_index(self):
        data = os.urandom(3000) * 4
        stored, _ = encode_blob(data)
        undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(data)
        wide = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
            3, window_log=27, write_content_size=False)).compress(os.urandom(1000) * 20000)
        cases = [
            (stored, len(data) + 1, "smaller than recorded"),
            (stored, len(data) - 1, "larger than recorded"),
            (undeclared, len(data) + 1, f"decodes to {len(data)} bytes"),
            (undeclared, len(data) - 1, "larger than recorded"),
            (stored + stored, len(data), "after its zstd frame"),
            (stored + b"xx", len(data), "does not decompress"),
            (stored[:-5], len(data), "decodes to 0 bytes"),
            (b"\x50\x2a\x4d\x18" + bytes(8) + stored, len(data), "not a zstd frame"),
            (wide, 20_000_000, "does not decompress"),
            (b"", 1, "not a zstd frame"),
        ]
        for frame, size, reason in cases:
            with self.assertRaises(PackFormatError, msg=reason) as caught:
                decode_blob(frame, "zstd", size)
            self.assertIn(reason, str(caught.exception))


class LogFrameTests(SynchronousTestCase):
    def read_all(self, data, **kwargs):
        reader = FrameReader(io.BytesIO(data), **kwargs)
        while reader.read():
            pass
        reader.finish()

    def test_content_beyond_the_bound_is_refused(self):
        content = b'{"a":1}\n' * 100_000
        declared = zstandard.ZstdCompressor(write_checksum=True).compress(content)
        streamed = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(content)
        self.read_all(declared, max_content=len(content))
        self.read_all(streamed, max_content=len(content))
        with self.assertRaises(FrameError) as caught:
            self.read_all(declared, max_content=len(content) - 1)
        self.assertIn(f"declares {len(content)} bytes", str(caught.exception))
        with self.assertRaises(FrameError) as caught:
            self.read_all(streamed, max_content=len(content) - 1)
        self.assertIn("decodes to more than", str(caught.exception))


class TrailerTests(SynchronousTestCase):
    def pack_with_footer(self, length, size):
        """``size`` bytes whose footer says the trailer is ``length`` bytes long."""
        return os.urandom(size - FOOTER.size) + FOOTER.pack(length, MAGIC)

    def test_trailer_length_is_checked_from_the_footer_alone(self):
        blobs = [PackedBlob("a" * 64, 0, 10, 10, "none")]
        trailer = encode_trailer(blobs)
        data = b"0123456789" + trailer
        self.assertEqual(trailer_length(data[-FOOTER.size:], len(data)), len(trailer) - FOOTER.size)
        for length, size in [(pack.MAX_TRAILER + 1, 2**40), (2**32 - 1, 2**40), (100, 100)]:
            self.assertRaises(PackFormatError, trailer_length, FOOTER.pack(length, MAGIC), size)
        self.assertRaises(PackFormatError, trailer_length, FOOTER.pack(10, b"GBPACK\x00\x02"), 100)

    def test_an_oversized_trailer_is_not_downloaded(self):
        # The bound lowered, so that a pack over it stays small in memory.
        self.patch(pack, "MAX_TRAILER", 100 * 1024)
        client, fake = fake_client()
        size = 300 * 1024
        cap = fake.add_file(self.pack_with_footer(200 * 1024, size))
        child = DirChild(name="pack-" + "b" * 64, kind="filenode", ro_uri=cap, size=size)
        before = len(fake.requests)
        f = self.failureResultOf(run(recover._pack_trailer(client, child, size)), PackFormatError)
        self.assertIn("larger than", str(f.value))
        ranges = [r.headers.get("range") for r in fake.requests[before:]]
        self.assertEqual(len(ranges), 1, "the trailer the footer asks for was fetched")
        self.assertEqual(ranges[0], [f"bytes={size - recover.TAIL}-{size - 1}"])

    def test_a_long_trailer_within_the_bound_is_read(self):
        client, fake = fake_client()
        blobs = []
        data = b""
        for i in range(1500):
            piece = os.urandom(20)
            blobs.append(PackedBlob(f"{i:064x}", len(data), 20, 20, "none"))
            data += piece
        whole = data + encode_trailer(blobs)
        self.assertGreater(len(whole) - len(data), recover.TAIL)
        cap = fake.add_file(whole)
        child = DirChild(name="pack-" + "c" * 64, kind="filenode", ro_uri=cap, size=len(whole))
        parsed = self.successResultOf(run(recover._pack_trailer(client, child, len(whole))))
        self.assertEqual(parsed, blobs)


class SizeBeforeDownloadTests(SynchronousTestCase):
    def setUp(self):
        self.client, self.fake = fake_client()

    def gets_of(self, cap):
        return [r for r in self.fake.requests if r.method == "GET" and cap in r.path]

    def test_a_cap_over_the_bound_is_refused_without_a_request(self):
        cap = self.fake.add_file(b"x" * 5000)
        before = len(self.fake.requests)
        for call in (self.client.download(cap, max_size=4096),
                     self.client.download(cap, 0, 5000, max_size=4096),
                     self.client.download(cap, 1000, max_size=3000),
                     self.client.download_to(cap, io.BytesIO(), max_size=4096)):
            f = self.failureResultOf(run(call), TahoeTooLarge)
            self.assertFalse(f.value.sent)
            self.assertIn("more than the", str(f.value))
        self.assertEqual(len(self.fake.requests), before, "an oversized object was asked for")
        # At the bound, it downloads.
        self.assertEqual(len(self.successResultOf(run(self.client.download(cap, max_size=5000)))), 5000)
        out = io.BytesIO()
        self.assertEqual(self.successResultOf(run(self.client.download_to(cap, out, max_size=5000))), 5000)

    def test_a_listing_over_the_bound_is_refused(self):
        root = self.successResultOf(run(self.client.mkdir()))
        small = self.fake.add_file(b"y" * 100)
        self.successResultOf(run(self.client.set_children(root, {f"c{i}": small for i in range(50)})))
        self.assertEqual(len(self.successResultOf(run(self.client.list_dir(root)))), 50)
        self.patch(clientmod, "MAX_LISTING", 1000)
        f = self.failureResultOf(run(self.client.list_dir(root)), TahoeTooLarge)
        self.assertIn("1000", str(f.value))

    def test_an_oversized_lock_is_taken_over_unread(self):
        conn = dbmod.open_database(os.path.join(self.mktemp(), "state.sqlite"))
        self.addCleanup(conn.close)
        settings = settings_document(ChunkParams(), 128, 1048576, 2048)
        now = [1_800_000_000.0]
        publisher = Publisher(conn, self.client, settings, writer_id="w-new", host="new",
                              now=lambda: now[0], monotonic=lambda: now[0])
        root = self.successResultOf(run(self.client.mkdir()))
        self.successResultOf(run(publisher.ensure_layout(root)))
        # Someone with the write cap links a lock far larger than a lock may be.
        padded = encode_lock("w-other", "x" * 200, 1_800_000_000)[:-1] + b" " * 10 * MAX_LOCK + b"}"
        self.assertEqual(json.loads(padded)["writer"], "w-other")
        huge = self.fake.add_file(padded)
        self.successResultOf(run(self.client.set_children(root, {"lock": huge})))
        # Its renewal is due: it reads the lock that is there, as far as the cap allows.
        now[0] += LOCK_HEARTBEAT + 1
        self.successResultOf(run(publisher.check_writer()))
        self.assertEqual(self.gets_of(huge), [], "the oversized lock was downloaded")
        linked = self.successResultOf(run(self.client.child_cap(root, "lock")))
        self.assertNotEqual(linked, huge)
