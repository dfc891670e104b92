"""
Skipping sub-trees of a chain of logs unread (``LogReader.skip_below``,
``logmerge.SkippingMerge``): what comes out is what the merge gives with
the skipped sub-trees left out, and the logs' trailers still check.
"""

import io
import random

from twisted.trial.unittest import TestCase

from gridbackupd.format.logfields import BLOBS_PER_LINE, LogFormatError
from gridbackupd.format.logmerge import SkippingMerge, merge_records
from gridbackupd.format.logpaths import path_key
from gridbackupd.format.logreader import LogReader
from gridbackupd.format.logwriter import LogWriter
from gridbackupd.model import DIR, FILE, Deletion, Entry, LogHeader


def _tree(rnd, size):
    """Sorted paths (``path_key`` order) of a random tree, and which are directories."""
    dirs = [b"/r"]
    paths = {b"/r": True}
    while len(paths) < size:
        parent = rnd.choice(dirs)
        name = rnd.choice([b"a", b"b", b"c", b"d\xff", b"e f", b"x" * 40]) + str(rnd.randrange(1000)).encode()
        path = parent + b"/" + name
        if path in paths:
            continue
        is_dir = rnd.random() < 0.15
        paths[path] = is_dir
        if is_dir:
            dirs.append(path)
    return sorted(paths.items(), key=lambda p: path_key(p[0]))


def _entry(rnd, path, is_dir, version=0):
    if is_dir:
        return Entry(path=path, kind=DIR, mode=0o40755, mtime_ns=version)
    blobs = ()
    if rnd.random() < 0.004:
        # Enough blobs for continuation lines (and lines longer than a read).
        blobs = tuple(("%064x" % rnd.getrandbits(256), 1) for _ in range(BLOBS_PER_LINE + rnd.randrange(5000)))
    return Entry(path=path, kind=FILE, mode=0o100644, size=len(blobs), mtime_ns=version, blobs=blobs,
                 user="u\"ser", group="g")


def _log(header, records):
    out = io.BytesIO()
    writer = LogWriter(out, header)
    for record in records:
        writer.add(record)
    writer.close()
    return out.getvalue()


def _chain(rnd, size, increments):
    """The logs (bytes) of a random snapshot chain."""
    tree = _tree(rnd, size)
    current = {p: _entry(rnd, p, d) for p, d in tree}
    logs = [_log(LogHeader(snapshot="s0", kind="full", paths=(b"/r",)),
                 [current[p] for p, _ in tree])]
    for n in range(1, increments + 1):
        records = {}
        for path, is_dir in tree:
            roll = rnd.random()
            if path not in current:
                if roll < 0.3:
                    records[path] = current[path] = _entry(rnd, path, is_dir, n)
            elif roll < 0.05 and path != b"/r":
                # Deleted with everything below it.
                for below in [q for q in current if q == path or q.startswith(path + b"/")]:
                    records[below] = Deletion(below)
                    del current[below]
            elif roll < 0.15:
                records[path] = current[path] = _entry(rnd, path, is_dir, n)
        logs.append(_log(LogHeader(snapshot=f"s{n}", kind="incremental", parent=f"s{n - 1}", paths=(b"/r",)),
                         [records[p] for p in sorted(records, key=path_key)]))
    return logs


def _readers(logs):
    return [LogReader(io.BytesIO(data), verify=False) for data in logs]


class SkippingMergeTests(TestCase):

    def check(self, seed, size, increments):
        rnd = random.Random(seed)
        logs = _chain(rnd, size, increments)
        whole = list(merge_records(*(iter(r) for r in _readers(logs))))
        dirs = [e.path for e in whole if e.kind == DIR and e.path != b"/r"]
        for attempt in range(4):
            chosen = set(rnd.sample(dirs, min(len(dirs), rnd.choice([1, 3, 20]))))
            merged = SkippingMerge(_readers(logs))
            got = []
            for entry in merged:
                got.append(entry)
                if entry.path in chosen:
                    merged.skip_below(path_key(entry.path) + b"\0")
            # What is left: every entry not strictly below a chosen directory
            # (one that is below another chosen one was skipped with it).
            kept = [e for e in whole if not any(e.path.startswith(d + b"/") for d in chosen)]
            self.assertEqual([e.path for e in got], [e.path for e in kept], (seed, attempt))
            self.assertEqual(got, kept)

    def test_full_log(self):
        for seed in range(6):
            self.check(seed, 3000, 0)

    def test_chain(self):
        for seed in range(6):
            self.check(100 + seed, 3000, 2)

    def test_trailer_still_checked(self):
        """A skip passes lines over unread, but a trailer that miscounts is still caught."""
        tree = _tree(random.Random(7), 3000)
        out = io.BytesIO()
        writer = LogWriter(out, LogHeader(snapshot="s0", kind="full", paths=(b"/r",)))
        rnd = random.Random(1)
        for path, is_dir in tree:
            writer.add(_entry(rnd, path, is_dir))
        writer.records -= 1  # a trailer that counts one record fewer
        writer.close()
        merged = SkippingMerge(_readers([out.getvalue()]))
        first_dir = next(p for p, d in tree if d and p != b"/r")
        with self.assertRaisesRegex(LogFormatError, "trailer counts"):
            for entry in merged:
                if entry.path == first_dir:
                    merged.skip_below(path_key(first_dir) + b"\0")

    def test_only_trusted(self):
        """A log read with its checks cannot be skipped through."""
        logs = _chain(random.Random(3), 50, 0)
        reader = LogReader(io.BytesIO(logs[0]))
        self.assertRaises(ValueError, reader.skip_below, b"\0r\0")
