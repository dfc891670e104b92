"""Index segments and gridbackup.json: exact bytes, strict readers; the publish order."""

import hashlib
import json
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.index import (
    IndexFormatError,
    UnknownLayoutVersion,
    commit_name,
    encode_index_segment,
    encode_settings,
    parse_index_segment,
    parse_settings,
    settings_document,
)
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import db as dbmod
from gridbackupd.testing.fake_tahoe import fake_client
from gridbackupd.upload.publisher import Publisher

H1 = "1" * 64
H2 = "2" * 64
PACK = "pack-" + "a" * 64


def inline(data):
    return hashlib.sha256(data).hexdigest(), data


class IndexSegmentTests(SynchronousTestCase):
    def test_round_trip_and_exact_bytes(self):
        h, d = inline(b"hi")
        seg = encode_index_segment([(H2, PACK, 10, 5, 9, "zstd"), (H1, PACK, 0, 10, 10, "none")], [(h, d)])
        self.assertEqual(seg, (
            '{"format":"gridbackup-index","version":1,"blobs":['
            f'["{H1}","{PACK}",0,10,10,"none"],["{H2}","{PACK}",10,5,9,"zstd"]],'
            f'"inline":[["{h}","aGk="]]}}').encode())
        parsed = parse_index_segment(seg, {PACK})
        self.assertEqual([b.hash for b in parsed.blobs], [H1, H2])
        self.assertEqual(parsed.inline[0].data, b"hi")
        self.assertEqual(parsed.packs(), [PACK])
        self.assertEqual(commit_name(seg), "commit-" + hashlib.sha256(seg).hexdigest()[:32])

    def doc(self, **changes):
        h, d = inline(b"hi")
        doc = {"format": "gridbackup-index", "version": 1,
               "blobs": [[H1, PACK, 0, 10, 10, "none"]], "inline": [[h, "aGk="]]}
        doc.update(changes)
        return json.dumps(doc).encode()

    def test_rejects(self):
        h, _ = inline(b"hi")
        bad = [
            b"", b"[]", b"\xef\xbb\xbf{}", b"{\"format\":1,\"format\":1}",
            self.doc(version=2), self.doc(version=True), self.doc(version=1.0),
            self.doc(format="gridbackup-pack"), self.doc(extra=1),
            self.doc(blobs=[[H1, PACK, 0, 10, 10]]),
            self.doc(blobs=[["A" * 64, PACK, 0, 10, 10, "none"]]),
            self.doc(blobs=[[H1, "pack-x", 0, 10, 10, "none"]]),
            self.doc(blobs=[[H1, PACK, -1, 10, 10, "none"]]),
            self.doc(blobs=[[H1, PACK, 0, 0, 10, "zstd"]]),
            self.doc(blobs=[[H1, PACK, 0, 10, 11, "none"]]),
            self.doc(blobs=[[H1, PACK, 0, 10, 10, "lz4"]]),
            self.doc(blobs=[[H1, PACK, True, 10, 10, "none"]]),
            self.doc(blobs=[[H2, PACK, 0, 1, 1, "none"], [H1, PACK, 0, 1, 1, "none"]]),
            self.doc(blobs=[[H1, PACK, 0, 1, 1, "none"], [H1, PACK, 0, 1, 1, "none"]]),
            self.doc(blobs=[[h, PACK, 0, 2, 2, "none"]]),  # also inline
            self.doc(inline=[[h, "aGk"]]), self.doc(inline=[[h, "aGl="]]),
            self.doc(inline=[[H1, "aGk="]]), self.doc(inline=[[inline(b"")[0], ""]]),
            self.doc(inline=None), self.doc(blobs={}),
            self.doc().replace(b"10, 10", b"10, 1e1"),
            self.doc().replace(b"10, 10", b"10, NaN"),
        ]
        for data in bad:
            self.assertRaises(IndexFormatError, parse_index_segment, data)
        # A pack the commit directory does not hold.
        self.assertRaises(IndexFormatError, parse_index_segment, self.doc(), {"pack-" + "b" * 64})
        parse_index_segment(self.doc(), {PACK})


class SettingsTests(SynchronousTestCase):
    def test_exact_bytes_and_parse(self):
        doc = settings_document(ChunkParams(), 128, 1048576, 2048)
        data = encode_settings(doc)
        self.assertTrue(data.startswith(b'{\n "chunking": {\n  "algorithm": "fastcdc",'))
        self.assertTrue(data.endswith(b' "version": 2\n}\n'))
        self.assertEqual(parse_settings(data), doc)
        v1 = encode_settings({**doc, "version": 1})
        self.assertEqual(parse_settings(v1)["version"], 1)
        for key, value in [("version", 3), ("version", True), ("version", 0), ("hash", "md5"), ("extra", 1)]:
            self.assertRaises(IndexFormatError, parse_settings, encode_settings({**doc, key: value}))
        tiers = {**doc["tiers"], "inline_max": 65537}
        self.assertRaises(IndexFormatError, parse_settings, encode_settings({**doc, "tiers": tiers}))
        chunking = {**doc["chunking"], "min_size": 10**9}
        self.assertRaises(IndexFormatError, parse_settings, encode_settings({**doc, "chunking": chunking}))


class UnknownVersionTests(SynchronousTestCase):
    """A reader that knows only some layout versions refuses the others, saying what to do."""

    def test_v1_reader_refuses_a_v2_set(self):
        data = encode_settings(settings_document(ChunkParams(), 128, 1048576, 2048))
        e = self.assertRaises(UnknownLayoutVersion, parse_settings, data, known=(1,))
        self.assertEqual(str(e), (
            "gridbackup.json: this backup set has on-grid layout version 2, and this gridbackupd "
            "knows only version 1: read or write it with a gridbackupd that knows version 2"))

    def test_a_newer_version_is_refused_by_name(self):
        data = encode_settings({**settings_document(ChunkParams(), 128, 1048576, 2048), "version": 3})
        e = self.assertRaises(UnknownLayoutVersion, parse_settings, data)
        self.assertIn("layout version 3", str(e))
        self.assertIn("knows only versions 1, 2", str(e))


def run(coro):
    return Deferred.fromCoroutine(coro)


class PublishOrderTests(SynchronousTestCase):
    """An incremental snapshot's log is linked only after its parent's."""

    def test_child_waits_for_parent(self):
        client, _ = fake_client()
        root = self.successResultOf(run(client.mkdir()))
        base = self.mktemp()
        conn = dbmod.open_database(os.path.join(base, "state.sqlite"))
        self.addCleanup(conn.close)
        settings = settings_document(ChunkParams(), 128, 1048576, 2048)
        publisher = Publisher(conn, client, settings, writer_id="w", host="h", now=lambda: 1e9)
        self.successResultOf(run(publisher.ensure_layout(root)))
        logs = {}
        for name in ("parent", "child"):
            logs[name] = os.path.join(base, name + ".log")
            with open(logs[name], "wb") as f:
                f.write(name.encode())
        with dbmod.transaction(conn):
            conn.execute(
                "INSERT INTO snapshots (id, state, kind, parent, host, requested, log_path) "
                "VALUES ('1-parent', 'uploading', 'full', NULL, 'h', 1, ?), "
                "       ('2-child', 'uploading', 'incremental', '1-parent', 'h', 2, ?)",
                (logs["parent"], logs["child"]))
            conn.execute("INSERT INTO blobs (hash, size, state) VALUES (?, 1, 'pending')", (H1,))
            conn.execute("INSERT INTO snapshot_blobs (snapshot, hash) VALUES ('1-parent', ?)", (H1,))
        self.assertEqual(self.successResultOf(run(publisher.publish_snapshots())), [])
        with dbmod.transaction(conn):
            conn.execute("UPDATE blobs SET state = 'committed'")
        self.assertEqual(self.successResultOf(run(publisher.publish_snapshots())), ["1-parent"])
        self.assertEqual(self.successResultOf(run(publisher.publish_snapshots())), ["2-child"])
