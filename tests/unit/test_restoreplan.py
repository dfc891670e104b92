"""Restore planning: one ranged GET per run of neighbouring blobs, not per file."""

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.model import FILE, Entry
from gridbackupd.restore.plan import BlobRead, coalesce, plan


def read(offset, length):
    return BlobRead(f"{offset:064x}", offset, length, length, "none", ())


class CoalesceTests(SynchronousTestCase):
    def test_neighbours_share_a_span(self):
        spans = coalesce("cap", [read(0, 10), read(10, 10), read(100, 5)], max_gap=100)
        self.assertEqual([(s.start, s.end, len(s.reads)) for s in spans], [(0, 105, 3)])

    def test_gap_and_size_split(self):
        spans = coalesce("cap", [read(0, 10), read(1000, 10), read(1010, 10)], max_gap=100)
        self.assertEqual([(s.start, s.end) for s in spans], [(0, 10), (1000, 1020)])
        spans = coalesce("cap", [read(0, 60), read(60, 60)], max_gap=100, max_span=100)
        self.assertEqual([(s.start, s.end) for s in spans], [(0, 60), (60, 120)])


class PlanTests(SynchronousTestCase):
    def test_plan(self):
        locations = {
            "a": ("cap1", 0, 5, "none"),
            "b": ("cap1", 5, 7, "zstd"),
            "c": ("cap2", 0, 3, "none"),
        }
        files = [
            Entry(path=b"/x", kind=FILE, size=20, blobs=(("a", 10), ("c", 10))),
            Entry(path=b"/y", kind=FILE, size=20, blobs=(("b", 10), ("a", 10))),
            Entry(path=b"/z", kind=FILE, size=10, blobs=(("missing", 10),)),
            Entry(path=b"/e", kind=FILE, size=0, inline=b""),
            Entry(path=b"/i", kind=FILE, size=13, blobs=(("tiny", 3), ("c", 10))),
        ]
        locations["tiny"] = b"abc"  # a blob the index holds inline
        jobs, spans, pending = plan(files, locations.get)
        self.assertEqual([e.path for e in pending], [b"/z"])
        self.assertEqual([j.remaining for j in jobs], [2, 2, 0, 1])
        self.assertEqual(jobs[3].direct, ((0, "tiny", b"abc"),))
        by_cap = {s.cap: s for s in spans}
        self.assertEqual(set(by_cap), {"cap1", "cap2"})
        # Blob "a" is fetched once and written to both files at their offsets.
        [a, b] = by_cap["cap1"].reads
        self.assertEqual(a.hash, "a")
        self.assertEqual(sorted((j.entry.path, off) for j, off in a.targets), [(b"/x", 0), (b"/y", 10)])
        self.assertEqual((by_cap["cap1"].start, by_cap["cap1"].end), (0, 12))
