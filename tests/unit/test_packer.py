"""Packs: deterministic, self-describing, and never holding changed content."""

import hashlib
import os
import random

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.pack import PackFormatError, decode_blob, parse_trailer
from gridbackupd.state.queue import QueuedBlob
from gridbackupd.upload.packer import build_pack


class PackTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        rnd = random.Random(5)
        self.files = {}
        for name, data in [(b"a", b"hello world " * 100), (b"b", rnd.randbytes(5000)),
                           (b"c", b"z" * 70)]:
            path = os.path.join(os.fsencode(self.dir), name)
            with open(path, "wb") as f:
                f.write(data)
            self.files[path] = data

    def blobs(self):
        return [QueuedBlob(hashlib.sha256(d).hexdigest(), len(d), p, 0)
                for p, d in reversed(list(self.files.items()))]

    def test_round_trip(self):
        built = build_pack(self.blobs(), self.dir)
        with open(built.path, "rb") as f:
            pack = f.read()
        self.assertEqual(len(pack), built.size)
        listed = parse_trailer(pack, len(pack))
        self.assertEqual(list(built.blobs), listed)
        # Path order inside the pack.
        by_hash = {hashlib.sha256(d).hexdigest(): p for p, d in self.files.items()}
        self.assertEqual([by_hash[b.hash] for b in listed], sorted(self.files))
        for b in listed:
            data = decode_blob(pack[b.offset:b.offset + b.length], b.compression, b.size)
            self.assertEqual(hashlib.sha256(data).hexdigest(), b.hash)
        # Repetitive text is compressed, random bytes are not.
        self.assertEqual({b.compression for b in listed}, {"zstd", "none"})

    def test_deterministic(self):
        one = build_pack(self.blobs(), self.dir)
        with open(one.path, "rb") as f:
            first = f.read()
        two = build_pack(list(reversed(self.blobs())), self.dir)
        with open(two.path, "rb") as f:
            self.assertEqual(f.read(), first)
        self.assertEqual(one.name, two.name)

    def test_changed_file_is_stale(self):
        blobs = self.blobs()
        victim = blobs[0]
        with open(victim.source_path, "wb") as f:
            f.write(b"changed since the scan")
        built = build_pack(blobs, self.dir)
        self.assertEqual(built.stale, (victim.hash,))
        self.assertNotIn(victim.hash, [b.hash for b in built.blobs])

    def test_strict_trailer(self):
        built = build_pack(self.blobs(), self.dir)
        with open(built.path, "rb") as f:
            pack = f.read()
        for bad in (pack[:-1], pack[:-12] + b"\0" * 12, b"", pack[:-20] + b"x" * 20):
            self.assertRaises(PackFormatError, parse_trailer, bad, len(bad))

    def test_trailer_rules(self):
        import json

        from gridbackupd.format.pack import FOOTER, MAGIC

        h1, h2 = "1" * 64, "2" * 64

        def pack(doc, data_len):
            body = json.dumps(doc, separators=(",", ":")).encode()
            whole = b"x" * data_len + body + FOOTER.pack(len(body), MAGIC)
            return whole

        good = {"format": "gridbackup-pack", "version": 1,
                "blobs": [[h1, 0, 10, 10, "none"], [h2, 10, 5, 20, "zstd"]]}
        data = pack(good, 15)
        self.assertEqual(len(parse_trailer(data, len(data))), 2)
        # The footer's bytes: trailer length, big-endian, then GBPACK\0\1.
        self.assertEqual(data[-8:], b"GBPACK\x00\x01")
        bad = [
            ({**good, "extra": 1}, 15),
            ({**good, "version": 2}, 15),
            ({**good, "version": True}, 15),
            ({**good, "blobs": [[h1, 0, 10, 10, "none"], [h2, 11, 4, 20, "zstd"]]}, 15),  # gap
            ({**good, "blobs": [[h1, 0, 10, 10, "none"], [h1, 10, 5, 20, "zstd"]]}, 15),  # twice
            ({**good, "blobs": [[h1, 0, 10, 11, "none"]]}, 10),  # none but sizes differ
            ({**good, "blobs": [[h1, 0, 10, 10, "none"]]}, 15),  # data left over
            ({**good, "blobs": [[h1, 0, 10, 10.0, "none"]]}, 10),
            ({**good, "blobs": [["A" * 64, 0, 10, 10, "none"]]}, 10),
        ]
        for doc, n in bad:
            data = pack(doc, n)
            self.assertRaises(PackFormatError, parse_trailer, data, len(data))

    def test_trailer_bounds(self):
        """Sizes past the documented bounds are refused, whatever else the trailer says."""
        import json

        from gridbackupd.format.pack import FOOTER, MAGIC, MAX_BLOB, MAX_PACK, check_pack_size

        def pack(blobs, data_len):
            body = json.dumps({"format": "gridbackup-pack", "version": 1, "blobs": blobs},
                              separators=(",", ":")).encode()
            return b"x" * data_len + body + FOOTER.pack(len(body), MAGIC)

        h = "1" * 64
        data = pack([[h, 0, 10, MAX_BLOB, "zstd"]], 10)
        self.assertEqual(parse_trailer(data, len(data))[0].size, MAX_BLOB)
        for record in ([h, 0, 10, 2**70, "zstd"], [h, 0, 10, MAX_BLOB + 1, "zstd"]):
            data = pack([record], 10)
            with self.assertRaises(PackFormatError) as caught:
                parse_trailer(data, len(data))
            self.assertIn("bad trailer record", str(caught.exception))
        # A pack size (from a directory listing or a cap) out of bounds.
        data = pack([[h, 0, 10, 10, "none"]], 10)
        for size in (2**70, MAX_PACK + 1, 11, "12", None):
            self.assertRaises(PackFormatError, parse_trailer, data, size)
            self.assertRaises(PackFormatError, check_pack_size, size)
        self.assertEqual(check_pack_size(MAX_PACK), MAX_PACK)

    def test_index_segment_bounds(self):
        from gridbackupd.format.index import IndexFormatError, encode_index_segment, parse_index_segment
        from gridbackupd.format.pack import MAX_BLOB, MAX_PACK

        h, name = "1" * 64, "pack-" + "2" * 64
        good = encode_index_segment([(h, name, MAX_PACK - 10, 10, MAX_BLOB, "zstd")])
        self.assertEqual(parse_index_segment(good, {name}).blobs[0].size, MAX_BLOB)
        for row in ((h, name, 0, 10, 2**70, "zstd"), (h, name, 0, 2**70, 10, "zstd"),
                    (h, name, 2**70, 10, 10, "none"), (h, name, MAX_PACK - 9, 10, 10, "none"),
                    (h, name, 0, 10, MAX_BLOB + 1, "zstd")):
            self.assertRaises(IndexFormatError, parse_index_segment, encode_index_segment([row]), {name})

    def test_read_verified(self):
        from gridbackupd.upload.packer import read_verified

        blobs = self.blobs()
        with open(blobs[0].source_path, "wb") as f:
            f.write(b"changed")
        found, stale = read_verified(blobs)
        self.assertEqual(stale, (blobs[0].hash,))
        self.assertEqual({hashlib.sha256(d).hexdigest() for d in found.values()}, set(found))
        self.assertEqual(len(found), 2)

    def test_format_errors(self):
        """The pack and index parsers' errors are FormatErrors, and still ValueErrors."""
        from gridbackupd.errors import FormatError
        from gridbackupd.format.index import IndexFormatError

        for error in (PackFormatError, IndexFormatError):
            self.assertTrue(issubclass(error, FormatError))
            self.assertTrue(issubclass(error, ValueError))
