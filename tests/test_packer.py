"""Packs: deterministic, self-describing, and never holding changed content."""

import hashlib
import os
import random

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.packer import PackFormatError, build_pack, decode_blob, parse_trailer
from gridbackupd.queue import QueuedBlob


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
