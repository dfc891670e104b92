"""Packs: deterministic, self-describing, and never holding changed content."""

import hashlib
import json
import os
import random

import attr
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.pack import PackFormatError, decode_blob, parse_trailer
from gridbackupd.state.queue import QueuedBlob
from gridbackupd.upload import packer
from gridbackupd.upload.packer import build_pack, read_verified


class PackTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
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
        self.assertEqual([(s.hash, s.reason) for s in built.stale],
                         [(victim.hash, "changed since the scan")])
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
        self.assertEqual([s.hash for s in stale], [blobs[0].hash])
        self.assertEqual({hashlib.sha256(d).hexdigest() for d in found.values()}, set(found))
        self.assertEqual(len(found), 2)

    def test_format_errors(self):
        """The pack and index parsers' errors are FormatErrors, and still ValueErrors."""
        from gridbackupd.errors import FormatError
        from gridbackupd.format.index import IndexFormatError

        for error in (PackFormatError, IndexFormatError):
            self.assertTrue(issubclass(error, FormatError))
            self.assertTrue(issubclass(error, ValueError))


class SourceTests(SynchronousTestCase):
    """
    The packer reads a blob only from the very file the scan read, reached
    as the scan reached it; anything else is "changed since the scan".
    """

    def setUp(self):
        self.base = os.fsencode(os.path.abspath(self.mktemp()))
        self.d = os.path.join(self.base, b"root", b"d")
        os.makedirs(self.d)
        self.data = random.Random(7).randbytes(3000)
        self.path = os.path.join(self.d, b"f")
        with open(self.path, "wb") as f:
            f.write(self.data)
        st = os.stat(self.path)
        self.blob = QueuedBlob(hashlib.sha256(self.data).hexdigest(), len(self.data), self.path, 0,
                               st.st_dev, st.st_ino, len(self.base))
        # Elsewhere, a directory with a file of the same name and bytes, as a
        # state directory's private/rootcap would be under a swapped link.
        self.other = os.path.join(self.base, b"other")
        os.makedirs(self.other)
        with open(os.path.join(self.other, b"f"), "wb") as f:
            f.write(self.data)

    def read(self, blob=None):
        found, stale = read_verified([blob or self.blob])
        return found, [(s.path, s.reason) for s in stale]

    def test_the_scanned_file_is_read(self):
        self.assertEqual(self.read(), ({self.blob.hash: self.data}, []))

    def test_directory_swapped_for_a_link(self):
        os.rename(self.d, self.d + b".away")
        os.symlink(self.other, self.d)
        self.assertEqual(self.read(), ({}, [(self.path, "changed since the scan")]))

    def test_file_replaced_by_a_link(self):
        os.unlink(self.path)
        os.symlink(os.path.join(self.other, b"f"), self.path)
        self.assertEqual(self.read(), ({}, [(self.path, "changed since the scan")]))

    def test_file_replaced_by_another_with_the_same_bytes(self):
        os.rename(os.path.join(self.other, b"f"), self.path)
        self.assertEqual(self.read(), ({}, [(self.path, "changed since the scan")]))

    def test_file_replaced_by_a_fifo(self):
        os.unlink(self.path)
        os.mkfifo(self.path)
        self.assertEqual(self.read(), ({}, [(self.path, "changed since the scan")]))

    def test_deleted(self):
        os.unlink(self.path)
        self.assertEqual(self.read(), ({}, [(self.path, "vanished since the scan")]))

    def test_a_row_queued_before_identities_is_still_read_from_a_regular_file(self):
        legacy = attr.evolve(self.blob, source_dev=None, source_ino=None, source_base=None)
        self.assertEqual(self.read(legacy), ({self.blob.hash: self.data}, []))
        os.rename(self.d, self.d + b".away")
        os.symlink(self.other, self.d)
        self.assertEqual(self.read(legacy), ({}, [(self.path, "changed since the scan")]))

    def test_hook_runs_before_the_open(self):
        """The test hook integration tests use to change a file between scan and upload."""
        self.patch(packer, "before_open", lambda blob: os.unlink(blob.source_path))
        built = build_pack([self.blob], os.fsdecode(self.base))
        self.assertEqual((built.blobs, [s.reason for s in built.stale]),
                         ((), ["vanished since the scan"]))


class MarkChangedTests(SynchronousTestCase):
    """A stale blob is a per-file error of each uploading snapshot that needs it."""

    def test_errors_once_per_file_and_snapshot(self):
        from gridbackupd.scan.values import NewBlob
        from gridbackupd.state import db, queue, snapshots

        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        conn = db.open_database(os.path.join(d, "state.sqlite"))
        for sid, state in (("s1", "uploading"), ("s2", "complete")):
            conn.execute("INSERT INTO snapshots (id, state, host, requested) VALUES (?, ?, 'h', 1)",
                         (sid, state))
        chunks = [NewBlob(f"{n:064x}", 10, b"/big/\xff", 10 * n, 0, 1, 2, 1) for n in range(3)]
        queue.add_uncommitted(conn, "s1", chunks)
        queue.add_uncommitted(conn, "s2", chunks[:1])
        queue.mark_changed(conn, [(b.hash, b.source_path, "changed since the scan") for b in chunks])
        self.assertEqual(snapshots.stale_blob_count(conn, "s1"), 3)
        errors = {sid: json.loads(e) for sid, e in conn.execute("SELECT id, errors FROM snapshots")}
        self.assertEqual(errors, {"s1": [{"path": "/big/\\xff", "reason": "changed since the scan"}],
                                  "s2": []})
