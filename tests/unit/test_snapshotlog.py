"""
Tests for the backup log format, gridbackupd.format.log* (docs/FORMAT.md).
"""

import base64
import hashlib
import io
import json

import attr
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.errors import FormatError
from gridbackupd.format.chain import ChainError
from gridbackupd.format.logfields import BLOBS_PER_LINE, MAX_LINE_LENGTH, LogFormatError
from gridbackupd.format.logmerge import merge_records
from gridbackupd.format.logpaths import is_in_subtree, path_key, validate_path
from gridbackupd.format.logreader import LogReader, read_log
from gridbackupd.format.logwriter import LogWriter, write_log
from gridbackupd.model import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    FLAGS,
    HARDLINK,
    KINDS,
    POSSIBLY_INCONSISTENT,
    SOCKET,
    SYMLINK,
    Deletion,
    Entry,
    LogHeader,
)

PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HASH_A = hashlib.sha256(b"a").hexdigest()
HASH_B = hashlib.sha256(b"b").hexdigest()


# ---------------------------------------------------------------------------
# Strategies

# A few components chosen to collide in interesting ways under a naive
# byte order ("a" < "a+" < "a/b" as raw bytes, but not as components).
_TRICKY = [b"a", b"a+", b"ab", b"a.", b"...", b"-", b"\xff", b"\xc3\xa9", b" ", b"\n"]

components = st.one_of(
    st.sampled_from(_TRICKY),
    st.binary(min_size=1, max_size=10)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
    .filter(lambda b: b not in (b".", b"..")),
)


def join(parts):
    return b"/" + b"/".join(parts)


paths = st.lists(components, min_size=0, max_size=5).map(join)
nonroot_paths = st.lists(components, min_size=1, max_size=5).map(join)

unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
hexes = st.binary(min_size=32, max_size=32).map(bytes.hex)
big = st.integers(min_value=-(2**127), max_value=2**127 - 1)


@st.composite
def entries(draw, path=None, kind=None):
    if path is None:
        path = draw(paths)
    if kind is None:
        kind = draw(st.sampled_from(sorted(KINDS)))
    fields = dict(
        path=path,
        kind=kind,
        mode=draw(st.integers(0, 2**32 - 1)),
        uid=draw(st.integers(0, 2**32 - 1)),
        gid=draw(st.integers(0, 2**32 - 1)),
        user=draw(st.none() | unicode_text),
        group=draw(st.none() | unicode_text),
        size=draw(st.integers(0, 2**63 - 1)),
        mtime_ns=draw(big),
        ctime_ns=draw(big),
        ino=draw(st.integers(0, 2**64 - 1)),
        dev=draw(st.integers(0, 2**64 - 1)),
        rdev=draw(st.integers(0, 2**64 - 1)),
    )
    if kind == SYMLINK:
        fields["target"] = draw(st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b))
    elif kind == HARDLINK:
        fields["target"] = draw(nonroot_paths.filter(lambda p: p != path))
    elif kind == FILE:
        content = draw(st.sampled_from(["none", "inline", "blobs"]))
        if content == "inline":
            data = draw(st.binary(max_size=40))
            fields["inline"] = data
            fields["size"] = len(data)
            if draw(st.booleans()):
                fields["sha256"] = hashlib.sha256(data).hexdigest()
        elif content == "blobs":
            blobs = draw(
                st.lists(st.tuples(hexes, st.integers(1, 2**40)), min_size=1, max_size=4)
            )
            fields["blobs"] = blobs
            fields["size"] = sum(n for _, n in blobs)
            if draw(st.booleans()):
                fields["sha256"] = draw(hexes)
        elif draw(st.booleans()):
            fields["sha256"] = draw(hexes)
        if fields["size"] and draw(st.booleans()):
            cuts = sorted(draw(st.sets(st.integers(0, fields["size"]), max_size=6)))
            # pairs of cuts, kept apart by at least one byte
            holes = []
            for offset, end in zip(cuts[::2], cuts[1::2]):
                if end > offset and (not holes or offset > sum(holes[-1])):
                    holes.append((offset, end - offset))
            fields["holes"] = tuple(holes)
    xattr_names = st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b)
    names = draw(st.lists(xattr_names, max_size=3, unique=True))
    fields["xattrs"] = tuple((n, draw(st.binary(max_size=20))) for n in sorted(names))
    fields["flags"] = tuple(sorted(draw(st.sets(st.sampled_from(sorted(FLAGS))))))
    return Entry(**fields)


snapshot_ids = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


@st.composite
def headers(draw, kind=None):
    if kind is None:
        kind = draw(st.sampled_from(["full", "incremental"]))
    return LogHeader(
        snapshot=draw(snapshot_ids),
        kind=kind,
        parent=draw(snapshot_ids) if kind == "incremental" else None,
        host=draw(unicode_text),
        paths=tuple(draw(st.lists(paths, max_size=3, unique=True))),
        tags=tuple(draw(st.lists(unicode_text.filter(bool), max_size=3, unique=True))),
        started=draw(st.floats(allow_nan=False, allow_infinity=False)),
        finished=draw(st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**40)),
    )


@st.composite
def logs(draw):
    """A header and records in log order."""
    header = draw(headers())
    chosen = draw(st.lists(paths, max_size=12, unique_by=path_key))
    chosen.sort(key=path_key)
    records = []
    for path in chosen:
        if header.kind == "incremental" and draw(st.integers(0, 3)) == 0:
            records.append(Deletion(path))
        else:
            records.append(draw(entries(path=path)))
    return header, records


# ---------------------------------------------------------------------------
# Helpers


def encode(header, records):
    buf = io.BytesIO()
    write_log(buf, header, records)
    return buf.getvalue()


def decode(data):
    header, records = read_log(io.BytesIO(data))
    return header, list(records)


def plain(data):
    """The decompressed text of a log."""
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()


def frame(text):
    """Compress text as one checksummed zstd frame."""
    return zstandard.ZstdCompressor(write_checksum=True).compress(text)


def header_object(**changes):
    obj = {
        "format": "gridbackup-log",
        "version": 1,
        "snapshot": "snap-1",
        "kind": "full",
        "parent": None,
        "host": "host",
        "paths": ["/home"],
        "tags": [],
        "started": 1.0,
        "finished": 2.0,
    }
    obj.update(changes)
    return obj


def entry_object(path="/home", **changes):
    obj = {
        "t": "e",
        "path": path,
        "kind": "dir",
        "mode": 0o40755,
        "uid": 0,
        "gid": 0,
        "user": "root",
        "group": "root",
        "size": 4096,
        "mtime_ns": 1,
        "ctime_ns": 2,
        "ino": 3,
        "dev": 4,
        "rdev": 0,
    }
    obj.update(changes)
    return obj


def lines_to_log(*objects, trailer=True):
    """A log from JSON objects (or raw bytes lines); the trailer counts records."""
    out = []
    count = 0
    for obj in objects:
        if isinstance(obj, bytes):
            out.append(obj)
            continue
        if obj.get("t") in ("e", "d"):
            count += 1
        out.append(json.dumps(obj).encode("utf-8"))
    if trailer:
        out.append(json.dumps({"t": "end", "records": count}).encode())
    return frame(b"".join(line + b"\n" for line in out))


def one_entry(*args, **changes):
    """A log of one entry, made by entry_object(*args, **changes)."""
    return lines_to_log(header_object(), entry_object(*args, **changes))


class Base(SynchronousTestCase):
    def assertRejected(self, data, *fragments):
        """Reading data raises LogFormatError mentioning a line and fragments."""
        try:
            decode(data)
        except LogFormatError as e:
            message = str(e)
        else:
            self.fail("the log was accepted")
        self.assertIn("line ", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def assertNoOtherException(self, data):
        try:
            decode(data)
        except LogFormatError:
            pass


# ---------------------------------------------------------------------------
# Round trips


class RoundTripTests(Base):
    @PROPERTY
    @given(logs())
    def test_round_trip(self, log):
        """Whatever the writer accepts reads back equal, in order."""
        header, records = log
        header_read, records_read = decode(encode(header, records))
        self.assertEqual(header_read, header)
        self.assertEqual(records_read, records)

    @PROPERTY
    @given(logs())
    def test_unverified_reads_the_same(self, log):
        """verify=False (the daemon's own local logs) reads a valid log identically."""
        header, records = log
        reader = LogReader(io.BytesIO(encode(header, records)), verify=False)
        self.assertEqual((reader.header, list(reader)), (header, records))

    def test_unverified_still_checks_framing_order_and_trailer(self):
        """Only per-entry value checks are skipped, never truncation or order."""
        truncated = lines_to_log(header_object(), entry_object("/a"), trailer=False)
        disordered = lines_to_log(header_object(), entry_object("/b"), entry_object("/a"))
        for data in (truncated, disordered, b"not zstd at all"):
            with self.assertRaises(LogFormatError):
                list(LogReader(io.BytesIO(data), verify=False))
        # A value the strict reader refuses passes unverified: that is the trade.
        odd = one_entry("/a", mode=-1)
        self.assertRaises(LogFormatError, lambda: list(LogReader(io.BytesIO(odd))))
        self.assertEqual(list(LogReader(io.BytesIO(odd), verify=False))[0].mode, -1)

    def test_unverified_integers_beyond_64_bits(self):
        """orjson reads them as floats: such a line is read again strictly, to the exact integer."""
        for value in (-(1 << 63) - 1, 1 << 64):
            data = one_entry("/a", mtime_ns=value)
            self.assertEqual(list(LogReader(io.BytesIO(data), verify=False))[0].mtime_ns, value)

    @PROPERTY
    @given(logs())
    def test_deterministic(self, log):
        """The same log is the same bytes: re-uploads converge on one cap."""
        header, records = log
        self.assertEqual(encode(header, records), encode(header, records))

    def test_non_utf8_path(self):
        path = b"/home/caf\xe9/\xff\xfe"
        target = b"../\x80"
        header = LogHeader(snapshot="s", kind="full", paths=(b"/home/caf\xe9",))
        records = [
            Entry(
                path=path, kind=FILE, size=2, inline=b"\x00\xff",
                xattrs=((b"user.\xe9", b"\x01"),),
            ),
            Entry(path=path + b"/link", kind=SYMLINK, target=target),
        ]
        data = encode(header, records)
        self.assertEqual(decode(data), (header, records))
        lines = plain(data).split(b"\n")
        first = json.loads(lines[1])
        self.assertEqual(first["path"], {"b64": base64.b64encode(path).decode()})
        self.assertEqual(first["inline"], "AP8=")
        self.assertEqual(first["xattrs"], [[{"b64": "dXNlci7p"}, "AQ=="]])
        self.assertEqual(json.loads(lines[0])["paths"], [{"b64": "L2hvbWUvY2Fm6Q=="}])
        self.assertEqual(json.loads(lines[2])["target"], {"b64": "Li4vgA=="})

    def test_utf8_path_is_text(self):
        header = LogHeader(snapshot="s", kind="full")
        data = encode(header, [Entry(path="/é\n".encode(), kind=DIR)])
        self.assertEqual(json.loads(plain(data).split(b"\n")[1])["path"], "/é\n")
        self.assertIn("/é".encode(), plain(data))

    def test_exact_bytes(self):
        """The writer's output, byte for byte (docs/FORMAT.md shows it)."""
        header = LogHeader(
            snapshot="s2", kind="incremental", parent="s1", host="h", paths=(b"/",),
            tags=("t",), started=1.5, finished=2,
        )
        records = [
            Entry(
                path=b"/a", kind=FILE, mode=0o100644, size=1, inline=b"x",
                flags=(POSSIBLY_INCONSISTENT,),
            ),
            Deletion(b"/b"),
        ]
        self.assertEqual(
            plain(encode(header, records)),
            b'{"format":"gridbackup-log","version":1,"snapshot":"s2","kind":"incremental",'
            b'"parent":"s1","host":"h","paths":["/"],"tags":["t"],"started":1.5,"finished":2}\n'
            b'{"t":"e","path":"/a","kind":"file","mode":33188,"uid":0,"gid":0,"user":null,'
            b'"group":null,"size":1,"mtime_ns":0,"ctime_ns":0,"ino":0,"dev":0,"rdev":0,'
            b'"inline":"eA==","flags":["possibly-inconsistent"]}\n'
            b'{"t":"d","path":"/b"}\n'
            b'{"t":"end","records":2}\n',
        )

    def test_zstd_frame(self):
        """One frame, with a content checksum, and no dictionary."""
        data = encode(LogHeader(snapshot="s", kind="full"), [])
        params = zstandard.get_frame_parameters(data)
        self.assertTrue(params.has_checksum)
        self.assertEqual(params.dict_id, 0)

    def test_many_blobs(self):
        """A file with more blobs than a line holds continues on more lines."""
        header = LogHeader(snapshot="s", kind="full")
        records = []
        counts = [BLOBS_PER_LINE - 1, BLOBS_PER_LINE, BLOBS_PER_LINE + 1, 2 * BLOBS_PER_LINE + 3]
        for i, count in enumerate(counts):
            blobs = [(HASH_A, 1 + j % 7) for j in range(count)]
            records.append(
                Entry(path=b"/f%d" % i, kind=FILE, size=sum(n for _, n in blobs), blobs=blobs)
            )
        data = encode(header, records)
        self.assertEqual(decode(data), (header, records))
        lines = [json.loads(line) for line in plain(data).splitlines()]
        self.assertEqual(
            [line.get("t") for line in lines[1:]], ["e", "e", "e", "b", "e", "b", "b", "end"]
        )
        self.assertEqual(lines[-1]["records"], 4)

    def test_write_log_counts(self):
        header = LogHeader(snapshot="s", kind="full")
        self.assertEqual(write_log(io.BytesIO(), header, iter([Entry(path=b"/a", kind=DIR)])), 1)
        self.assertTrue(issubclass(LogFormatError, ValueError))
        self.assertTrue(issubclass(LogFormatError, FormatError))
        self.assertTrue(issubclass(ChainError, LogFormatError))

    def test_root_and_empty(self):
        header = LogHeader(snapshot="s", kind="full", paths=(b"/",))
        records = [Entry(path=b"/", kind=DIR), Entry(path=b"/e", kind=FILE, inline=b"")]
        self.assertEqual(decode(encode(header, records)), (header, records))

    def test_big_numbers(self):
        header = LogHeader(snapshot="s", kind="full", started=-1e300, finished=1e300)
        records = [
            Entry(
                path=b"/x", kind=CHARDEV, mode=2**32 - 1, uid=2**32 - 1, gid=2**32 - 1,
                size=2**63 - 1, mtime_ns=-(2**127), ctime_ns=2**127 - 1,
                ino=2**64 - 1, dev=2**64 - 1, rdev=2**64 - 1,
            )
        ]
        self.assertEqual(decode(encode(header, records)), (header, records))

    def test_all_kinds(self):
        header = LogHeader(snapshot="s", kind="full")
        records = [
            Entry(path=b"/1", kind=BLOCKDEV, rdev=5),
            Entry(path=b"/2", kind=CHARDEV, rdev=6),
            Entry(path=b"/3", kind=DIR),
            Entry(path=b"/4", kind=FIFO),
            Entry(path=b"/5", kind=FILE, size=2, blobs=[(HASH_A, 2)], sha256=HASH_B),
            Entry(path=b"/6", kind=HARDLINK, target=b"/5"),
            Entry(path=b"/7", kind=SOCKET),
            Entry(path=b"/8", kind=SYMLINK, target=b"5"),
        ]
        self.assertEqual(decode(encode(header, records)), (header, records))

    def test_reader_class(self):
        header = LogHeader(snapshot="s", kind="full")
        records = [Entry(path=b"/a", kind=DIR)]
        reader = LogReader(io.BytesIO(encode(header, records)))
        self.assertEqual(reader.header, header)
        self.assertEqual(list(reader), records)
        self.assertRaises(ValueError, iter, reader)

    def test_fileobj_stays_open(self):
        buf = io.BytesIO()
        with LogWriter(buf, LogHeader(snapshot="s", kind="full")) as writer:
            writer.add(Entry(path=b"/a", kind=DIR))
        self.assertFalse(buf.closed)
        buf.seek(0)
        reader = LogReader(buf)
        list(reader)
        self.assertFalse(buf.closed)

    def test_closefd(self):
        buf = io.BytesIO()
        writer = LogWriter(buf, LogHeader(snapshot="s", kind="full"), closefd=True)
        writer.close()
        self.assertTrue(buf.closed)

    def test_aborted_log_is_rejected(self):
        """An exception inside the with block leaves a log without trailer."""
        buf = io.BytesIO()
        with self.assertRaises(ZeroDivisionError):
            with LogWriter(buf, LogHeader(snapshot="s", kind="full")) as writer:
                writer.add(Entry(path=b"/a", kind=DIR))
                1 / 0
        self.assertRaises(LogFormatError, decode, buf.getvalue())


class ConstantMemoryTests(Base):
    def test_200000_entries(self):
        """Write and read 200,000 entries from generators, keeping none."""
        count = 200_000
        header = LogHeader(snapshot="big", kind="full", paths=(b"/data",))

        def generate():
            yield Entry(path=b"/data", kind=DIR, mode=0o40755)
            for i in range(count):
                yield Entry(
                    path=b"/data/f%07d" % i, kind=FILE, mode=0o100644, uid=1000,
                    gid=1000, size=10, mtime_ns=1_700_000_000_000_000_000 + i,
                    ino=i, dev=2049, blobs=((HASH_A, 10),),
                )

        buf = io.BytesIO()
        self.assertEqual(write_log(buf, header, generate()), count + 1)
        buf.seek(0)
        read_header, records = read_log(buf)
        self.assertEqual(read_header, header)
        seen = 0
        for record in records:
            seen += 1
        self.assertEqual(seen, count + 1)


# ---------------------------------------------------------------------------
# Order


class OrderTests(Base):
    def test_components_not_bytes(self):
        ordered = [b"/", b"/a", b"/a/b", b"/a/b/c", b"/a/c", b"/a+", b"/a+/x", b"/ab", b"/b"]
        self.assertEqual(sorted(reversed(ordered), key=path_key), ordered)
        # Raw byte order would put "/a+" between "/a" and "/a/b".
        self.assertNotEqual(sorted(ordered), ordered)

    @PROPERTY
    @given(st.lists(st.lists(components, max_size=4), max_size=10))
    def test_key_is_component_tuple_order(self, lists):
        joined = [join(parts) for parts in lists]
        self.assertEqual(
            sorted(joined, key=path_key),
            [join(parts) for parts in sorted(lists, key=tuple)],
        )

    @PROPERTY
    @given(st.lists(paths, max_size=15), paths)
    def test_subtree_is_contiguous(self, chosen, top):
        """A directory's descendants follow it without a gap."""
        ordered = sorted(set(chosen) | {top}, key=path_key)
        inside = [i for i, p in enumerate(ordered) if is_in_subtree(p, top)]
        self.assertEqual(inside, list(range(inside[0], inside[-1] + 1)))
        self.assertEqual(ordered[inside[0]], top)

    def test_is_in_subtree(self):
        self.assertTrue(is_in_subtree(b"/a", b"/a"))
        self.assertTrue(is_in_subtree(b"/a/b", b"/a"))
        self.assertTrue(is_in_subtree(b"/a", b"/"))
        self.assertFalse(is_in_subtree(b"/ab", b"/a"))
        self.assertFalse(is_in_subtree(b"/a+", b"/a"))
        self.assertFalse(is_in_subtree(b"/", b"/a"))

    def test_validate_path(self):
        for good in [b"/", b"/a", b"/a/b", b"/.a", b"/a./...", b"/\xff"]:
            validate_path(good)
        for bad in [b"", b"a", b"a/b", b"/a/", b"//", b"/a//b", b"/.", b"/..", b"/a/./b",
                    b"/a/../b", b"/a\0b", "/a", None]:
            self.assertRaises(ValueError, validate_path, bad)


class MergeTests(Base):
    @PROPERTY
    @given(st.data())
    def test_chain(self, data):
        """A full log and incremental logs merge into the newest state."""
        pool = data.draw(st.lists(paths, min_size=1, max_size=10, unique_by=path_key))
        state = {}
        for path in data.draw(st.lists(st.sampled_from(pool), unique=True)):
            state[path] = data.draw(entries(path=path))
        base = sorted(state.values(), key=lambda e: path_key(e.path))
        changes = []
        for _ in range(data.draw(st.integers(0, 3))):
            records = []
            for path in data.draw(st.lists(st.sampled_from(pool), unique=True)):
                if path in state and data.draw(st.booleans()):
                    del state[path]
                    records.append(Deletion(path))
                else:
                    state[path] = data.draw(entries(path=path))
                    records.append(state[path])
            changes.append(sorted(records, key=lambda r: path_key(r.path)))
        expected = sorted(state.values(), key=lambda e: path_key(e.path))
        self.assertEqual(list(merge_records(iter(base), *map(iter, changes))), expected)

    def test_through_logs(self):
        full = LogHeader(snapshot="s1", kind="full")
        inc = LogHeader(snapshot="s2", kind="incremental", parent="s1")
        a, b, c = (Entry(path=p, kind=DIR) for p in (b"/a", b"/b", b"/c"))
        b2 = Entry(path=b"/b", kind=DIR, mode=0o40700)
        first = io.BytesIO(encode(full, [a, b]))
        second = io.BytesIO(encode(inc, [Deletion(b"/a"), b2, c]))
        self.assertEqual(list(merge_records(read_log(first)[1], read_log(second)[1])), [b2, c])

    def test_deleting_what_is_not_there(self):
        a = Entry(path=b"/a", kind=DIR)
        with self.assertRaises(LogFormatError):
            list(merge_records([a], [Deletion(b"/b")]))
        with self.assertRaises(LogFormatError):
            list(merge_records([a], [Deletion(b"/a")], [Deletion(b"/a")]))


# ---------------------------------------------------------------------------
# The writer refuses what the reader would reject


class WriterTests(Base):
    def writer(self, kind="full"):
        parent = "p" if kind == "incremental" else None
        return LogWriter(io.BytesIO(), LogHeader(snapshot="s", kind=kind, parent=parent))

    def test_order(self):
        writer = self.writer()
        writer.add(Entry(path=b"/a/b", kind=DIR))
        self.assertRaises(ValueError, writer.add, Entry(path=b"/a", kind=DIR))
        self.assertRaises(ValueError, writer.add, Entry(path=b"/a/b", kind=DIR))
        # Still usable after a refused record.
        writer.add(Entry(path=b"/a+", kind=DIR))
        writer.close()
        self.assertEqual(writer.records, 2)

    def test_deletion_in_full_log(self):
        self.assertRaises(ValueError, self.writer().add, Deletion(b"/a"))
        self.writer("incremental").add(Deletion(b"/a"))

    def test_bad_records(self):
        bad = [
            Entry(path=b"a", kind=DIR),
            Entry(path=b"/a\0", kind=DIR),
            Entry(path=b"/a/../b", kind=DIR),
            Entry(path=b"/a//b", kind=DIR),
            Entry(path="/a", kind=DIR),
            Entry(path=b"/a", kind=DIR, mode=True),
            Entry(path=b"/a", kind=DIR, mode=-1),
            Entry(path=b"/a", kind=DIR, uid=2**32),
            Entry(path=b"/a", kind=DIR, size=1.0),
            Entry(path=b"/a", kind=DIR, mtime_ns=2**127),
            Entry(path=b"/a", kind=DIR, user="\udcff"),
            Entry(path=b"/a", kind=DIR, group=5),
            Entry(path=b"/a", kind=DIR, target=b"/b"),
            Entry(path=b"/a", kind=DIR, inline=b""),
            Entry(path=b"/a", kind=DIR, sha256=HASH_A),
            Entry(path=b"/a", kind=SYMLINK),
            Entry(path=b"/a", kind=SYMLINK, target=b""),
            Entry(path=b"/a", kind=SYMLINK, target=b"x\0"),
            Entry(path=b"/a", kind=HARDLINK, target=b"b"),
            Entry(path=b"/a", kind=HARDLINK, target=b"/a"),
            Entry(path=b"/a", kind=FILE, size=2, inline=b"x"),
            Entry(path=b"/a", kind=FILE, size=1, inline="x"),
            Entry(path=b"/a", kind=FILE, size=1, inline=b"x", blobs=[(HASH_A, 1)]),
            Entry(path=b"/a", kind=FILE, size=3, blobs=[(HASH_A, 2)]),
            Entry(path=b"/a", kind=FILE, size=0, blobs=[(HASH_A, 0)]),
            Entry(path=b"/a", kind=FILE, size=2, blobs=[(HASH_A.upper(), 2)]),
            Entry(path=b"/a", kind=FILE, size=2, blobs=[(HASH_A[:-1], 2)]),
            Entry(path=b"/a", kind=FILE, size=1, inline=b"x", sha256=HASH_A),
            Entry(path=b"/a", kind=FILE, sha256="0" * 63),
            Entry(path=b"/a", kind=DIR, xattrs=((b"b", b""), (b"a", b""))),
            Entry(path=b"/a", kind=DIR, xattrs=((b"a", b""), (b"a", b""))),
            Entry(path=b"/a", kind=DIR, xattrs=((b"", b""),)),
            Entry(path=b"/a", kind=DIR, xattrs=((b"a\0", b""),)),
            Entry(path=b"/a", kind=DIR, xattrs=(("a", b""),)),
            Entry(path=b"/a", kind=DIR, xattrs=((b"a", "v"),)),
            Entry(path=b"/a", kind=DIR, xattrs=[(b"a", b"v")]),
            Entry(path=b"/a", kind=DIR, flags=("new-flag",)),
            Entry(path=b"/a", kind=DIR, flags=(POSSIBLY_INCONSISTENT, POSSIBLY_INCONSISTENT)),
            Entry(path=b"/a", kind=DIR, xattrs=((b"a", b"x" * MAX_LINE_LENGTH),)),
            Entry(path=b"/a", kind=DIR, holes=((0, 1),)),
            Entry(path=b"/a", kind=FILE, size=4, holes=((0, 5),)),
            Entry(path=b"/a", kind=FILE, size=4, holes=((0, 0),)),
            Entry(path=b"/a", kind=FILE, size=4, holes=((2, 1), (0, 1))),
            Entry(path=b"/a", kind=FILE, size=4, holes=((0, 2), (2, 1))),
            Entry(path=b"/a", kind=FILE, size=4, holes=((True, 1),)),
            Entry(path=b"/a", kind=FILE, size=4, holes=[(0, 1)]),
            Deletion(b"/a"),
            "not a record",
        ]
        writer = self.writer()
        for record in bad:
            with self.assertRaises(ValueError, msg=repr(record)[:200]):
                writer.add(record)
        writer.add(Entry(path=b"/a", kind=DIR))
        writer.close()
        self.assertRaises(ValueError, writer.add, Entry(path=b"/b", kind=DIR))
        self.assertEqual(writer.records, 1)

    @PROPERTY
    @given(logs(), st.data())
    def test_writer_and_reader_agree(self, log, data):
        """A record with one field changed is refused by the writer or reads back."""
        header, records = log
        assume(any(type(r) is Entry for r in records))
        i = data.draw(st.sampled_from([i for i, r in enumerate(records) if type(r) is Entry]))
        names = [a.name for a in attr.fields(Entry) if a.name not in ("kind", "blobs")]
        name = data.draw(st.sampled_from(names))
        value = data.draw(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
            | st.binary(max_size=4) | st.tuples()
            | st.tuples(st.binary(max_size=2), st.binary(max_size=2))
            | st.just(((b"n", b"v"),)) | st.just((POSSIBLY_INCONSISTENT,)) | st.just(HASH_A)
        )
        records[i] = attr.evolve(records[i], **{name: value})
        buf = io.BytesIO()
        try:
            write_log(buf, header, records)
        except ValueError:
            return
        self.assertEqual(decode(buf.getvalue()), (header, records))

    def test_bad_headers(self):
        for header in [
            LogHeader(snapshot="", kind="full"),
            LogHeader(snapshot="a/b", kind="full"),
            LogHeader(snapshot="..", kind="full"),
            LogHeader(snapshot="a\nb", kind="full"),
            LogHeader(snapshot="x" * 256, kind="full"),
            LogHeader(snapshot="s", kind="full", parent="p"),
            LogHeader(snapshot="s", kind="incremental"),
            LogHeader(snapshot="s", kind="full", paths=(b"rel",)),
            LogHeader(snapshot="s", kind="full", paths=(b"/a", b"/a")),
            LogHeader(snapshot="s", kind="full", paths=[b"/a"]),
            LogHeader(snapshot="s", kind="full", tags=("",)),
            LogHeader(snapshot="s", kind="full", tags=("a", "a")),
            LogHeader(snapshot="s", kind="full", host=None),
            LogHeader(snapshot="s", kind="full", started=float("nan")),
            LogHeader(snapshot="s", kind="full", finished=float("inf")),
            LogHeader(snapshot="s", kind="full", finished=True),
            "header",
        ]:
            self.assertRaises(ValueError, LogWriter, io.BytesIO(), header)


# ---------------------------------------------------------------------------
# The reader's strictness, rule by rule


class ReaderStrictnessTests(Base):
    def test_hand_written_log_is_accepted(self):
        """The helpers below write valid logs unless a test breaks one rule."""
        header, records = decode(one_entry())
        self.assertEqual(header.snapshot, "snap-1")
        self.assertEqual(records[0].user, "root")

    def test_format_and_version(self):
        self.assertRejected(lines_to_log(header_object(format="other")), "line 1", "format")
        for version in [2, 0, "1", True, 1.0, None]:
            self.assertRejected(lines_to_log(header_object(version=version)), "line 1", "version")

    def test_header_keys(self):
        obj = header_object()
        del obj["host"]
        self.assertRejected(lines_to_log(obj), "line 1", "missing host")
        self.assertRejected(lines_to_log(header_object(extra=1)), "line 1", "unknown extra")

    def test_header_values(self):
        for changes in [
            {"kind": "partial"},
            {"parent": "p"},
            {"kind": "incremental"},
            {"kind": "incremental", "parent": 5},
            {"snapshot": ""},
            {"snapshot": "a/b"},
            {"snapshot": 7},
            {"host": None},
            {"paths": "/home"},
            {"paths": ["home"]},
            {"paths": ["/home", "/home"]},
            {"paths": [{"b64": "L2hvbWU="}]},
            {"tags": "t"},
            {"tags": [1]},
            {"started": True},
            {"started": "1"},
            {"finished": None},
            {"finished": 1e400},
            {"finished": 2**1100},
        ]:
            self.assertRejected(lines_to_log(header_object(**changes)), "line 1")

    def test_no_header(self):
        self.assertRejected(lines_to_log(entry_object()), "line 1")
        self.assertRejected(frame(b""), "line 1", "empty")
        self.assertRejected(lines_to_log(b"[]"), "line 1", "object")

    def test_entry_keys(self):
        obj = entry_object()
        del obj["ino"]
        self.assertRejected(lines_to_log(header_object(), obj), "line 2", "missing ino")
        self.assertRejected(
            one_entry(colour="red"), "line 2", "unknown colour"
        )

    def test_entry_values(self):
        for changes in [
            {"kind": "door"},
            {"kind": ["dir"]},
            {"mode": True},
            {"uid": False},
            {"mode": 1.0},
            {"mode": "1"},
            {"size": -1},
            {"size": 2**63},
            {"ino": -1},
            {"gid": 2**32},
            {"mtime_ns": 2**127},
            {"mtime_ns": 1.5},
            {"user": 0},
            {"user": "\ud800"},
            {"group": ["root"]},
            {"target": "/x"},
            {"target": None},
            {"inline": ""},
            {"sha256": HASH_A},
            {"xattrs": []},
            {"xattrs": [["user.a"]]},
            {"xattrs": [["user.a", "not base64!"]]},
            {"xattrs": [["user.a", "YQ"]]},
            {"xattrs": [["user.a", "YR=="]]},
            {"xattrs": [["user.b", ""], ["user.a", ""]]},
            {"xattrs": [["user.a", ""], ["user.a", ""]]},
            {"xattrs": [["", ""]]},
            {"xattrs": [[{"b64": "dXNlcg=="}, ""]]},
            {"flags": []},
            {"flags": ["unknown"]},
            {"flags": [POSSIBLY_INCONSISTENT, POSSIBLY_INCONSISTENT]},
            {"flags": sorted(FLAGS, reverse=True)},
            {"flags": "possibly-inconsistent"},
            {"holes": []},
            {"holes": [[0, 1]]},  # a dir
            {"holes": None},
        ]:
            self.assertRejected(one_entry(**changes), "line 2")

    def test_file_content(self):
        def f(**changes):
            return one_entry(kind="file", **changes)

        decode(f(size=1, inline="eA=="))
        decode(f(size=3, blobs=[[HASH_A, 1], [HASH_B, 2]], sha256=HASH_A))
        decode(f(size=10, holes=[[0, 2], [5, 5]]))
        for changes in [
            {"size": 10, "holes": [[0, 11]]},
            {"size": 10, "holes": [[5, 1], [0, 1]]},
            {"size": 10, "holes": [[0, 1], [1, 1]]},
            {"size": 10, "holes": [[0, 0]]},
            {"size": 10, "holes": [[-1, 1]]},
            {"size": 10, "holes": [[0, 1.0]]},
            {"size": 10, "holes": [[0, True]]},
            {"size": 10, "holes": [[0, 1, 2]]},
            {"size": 10, "holes": [{"offset": 0}]},
            {"size": 2, "inline": "eA=="},
            {"size": 1, "inline": "eA==", "blobs": [[HASH_A, 1]]},
            {"size": 1, "inline": None},
            {"size": 1, "inline": "eA==", "sha256": HASH_A},
            {"size": 1, "inline": "eA\n=="},
            {"size": 1, "inline": " eA=="},
            {"size": 1, "inline": "e*A=="},
            {"size": 1, "inline": "eA"},
            {"size": 1, "inline": "eB=="},
            {"size": 1, "inline": "\u00e9A=="},
            {"size": 2, "blobs": [[HASH_A, 1]]},
            {"size": 0, "blobs": []},
            {"size": 0, "blobs": [[HASH_A, 0]]},
            {"size": 1, "blobs": [[HASH_A.upper(), 1]]},
            {"size": 1, "blobs": [[HASH_A[:62], 1]]},
            {"size": 1, "blobs": [["g" * 64, 1]]},
            {"size": 1, "blobs": [[HASH_A, 1, 0]]},
            {"size": 1, "blobs": [[HASH_A, True]]},
            {"size": 1, "blobs": [{"hash": HASH_A, "size": 1}]},
            {"size": 0, "sha256": "0" * 65},
            {"size": 0, "sha256": None},
        ]:
            self.assertRejected(f(**changes), "line 2")

    def test_links(self):
        sym = entry_object(kind="symlink", target="../x")
        decode(lines_to_log(header_object(), sym))
        for target in ["", "a\u0000b", None, 5, {"b64": "Li4veA=="}]:
            self.assertRejected(one_entry(kind="symlink", target=target), "line 2")
        self.assertRejected(one_entry(kind="symlink"), "line 2", "target")
        decode(one_entry(kind="hardlink", target="/other"))
        for target in ["rel", "/home", "/a/../b"]:
            self.assertRejected(one_entry(kind="hardlink", target=target), "line 2")

    def test_paths(self):
        for path in ["home", "", "/home/", "//home", "/home//x", "/.", "/home/..", "/a/./b",
                     "/a\u0000b", None, 5, ["/a"], {"b64": "L2hvbWU="}, {"b64": "L2hvbWX/", "x": 1},
                     {"b64": "L2hvbWX_"}, {"b64": "L2hvbWX/\n"}, {"b64": 5}, {}]:
            self.assertRejected(one_entry(path=path), "line 2")
        decode(one_entry(path="/"))
        decode(one_entry(path={"b64": "L2hvbWX/"}))

    def test_order(self):
        log = lines_to_log(
            header_object(), entry_object("/a/b"), entry_object("/a+"), entry_object("/a/c")
        )
        self.assertRejected(log, "line 4", "out of order")
        log = lines_to_log(header_object(), entry_object("/a"), entry_object("/a"))
        self.assertRejected(log, "line 3", "twice")

    def test_deletions(self):
        inc = header_object(kind="incremental", parent="snap-0")
        header, records = decode(lines_to_log(inc, {"t": "d", "path": "/a"}, entry_object("/b")))
        self.assertEqual(records[0], Deletion(b"/a"))
        deletion = {"t": "d", "path": "/a"}
        self.assertRejected(lines_to_log(header_object(), deletion), "line 2", "full log")
        self.assertRejected(lines_to_log(inc, {"t": "d", "path": "/a", "kind": "dir"}), "line 2")
        self.assertRejected(lines_to_log(inc, {"t": "d"}), "line 2")
        self.assertRejected(lines_to_log(inc, {"t": "d", "path": "a"}), "line 2")
        self.assertRejected(lines_to_log(inc, entry_object("/a"), deletion), "line 3")

    def test_unknown_record_type(self):
        self.assertRejected(lines_to_log(header_object(), {"t": "x", "path": "/a"}), "line 2")
        self.assertRejected(lines_to_log(header_object(), {"path": "/a"}), "line 2")

    def test_trailer(self):
        body = [json.dumps(header_object()).encode(), json.dumps(entry_object()).encode()]

        def log(*extra):
            return frame(b"".join(line + b"\n" for line in body + list(extra)))

        decode(log(b'{"t":"end","records":1}'))
        self.assertRejected(log(), "line 3", "truncated")
        self.assertRejected(log(b'{"t":"end","records":2}'), "line 3", "counts 2")
        self.assertRejected(log(b'{"t":"end","records":0}'), "line 3")
        self.assertRejected(log(b'{"t":"end","records":true}'), "line 3")
        self.assertRejected(log(b'{"t":"end","records":1.0}'), "line 3")
        self.assertRejected(log(b'{"t":"end"}'), "line 3")
        self.assertRejected(log(b'{"t":"end","records":1,"x":1}'), "line 3")
        trailer = b'{"t":"end","records":1}'
        self.assertRejected(log(trailer, trailer), "line 4", "after the trailer")
        self.assertRejected(log(b'{"t":"end","records":1}', b""), "line 4")
        self.assertRejected(
            frame(b"".join(line + b"\n" for line in body) + trailer), "line 3", "newline"
        )

    def test_line_too_long(self):
        long_name = "x" * MAX_LINE_LENGTH
        self.assertRejected(one_entry(user=long_name), "line 2", "too long")
        # A line of exactly the maximum (newline included) is fine.
        obj = entry_object(user="")
        room = MAX_LINE_LENGTH - len(json.dumps(obj).encode()) - 1
        decode(one_entry(user="y" * room))
        self.assertRejected(one_entry(user="y" * (room + 1)), "line 2", "too long")
        # Without any newline at all.
        self.assertRejected(frame(b"z" * (3 * MAX_LINE_LENGTH)), "line 1", "too long")

    def test_bad_text(self):
        self.assertRejected(
            lines_to_log(header_object(), b'{"t":"e","path":"/\xff"}'), "line 2", "UTF-8"
        )
        self.assertRejected(lines_to_log(header_object(), b"{not json}"), "line 2", "JSON")
        self.assertRejected(lines_to_log(header_object(), b"\xef\xbb\xbf{}"), "line 2")
        self.assertRejected(lines_to_log(header_object(), b"[" * 100000 + b"]" * 100000), "line 2")
        self.assertRejected(lines_to_log(header_object(), b'{"t":"e","t":"e"}'), "line 2", "twice")
        self.assertRejected(lines_to_log(header_object(), b'{"t":' + b"9" * 5000 + b"}"), "line 2")
        self.assertRejected(lines_to_log(header_object(), b""), "line 2")
        for constant in [b"NaN", b"Infinity", b"-Infinity"]:
            header = json.dumps(header_object()).encode().replace(b"1.0", constant)
            self.assertRejected(lines_to_log(header), "line 1")

    def test_continuation_lines(self):
        full = [[HASH_A, 1]] * BLOBS_PER_LINE
        more = {"t": "b", "blobs": [[HASH_B, 1]]}

        def log(*objects):
            return lines_to_log(header_object(), *objects)

        def big(size, blobs=full):
            return entry_object("/f", kind="file", size=size, blobs=blobs)

        decode(log(big(BLOBS_PER_LINE + 1), more))
        decode(log(big(BLOBS_PER_LINE)))
        for objects in [
            # An orphan continuation.
            [more],
            [entry_object("/d"), more],
            # After an entry line that is not full.
            [big(2, [[HASH_A, 1]]), more],
            # After a continuation line that is not full.
            [big(BLOBS_PER_LINE + 2), more, more],
            # Sizes that do not add up, with and without continuation.
            [big(BLOBS_PER_LINE + 2), more],
            [big(BLOBS_PER_LINE + 1)],
            # Malformed continuations.
            [big(BLOBS_PER_LINE + 1), {"t": "b", "blobs": []}],
            [big(BLOBS_PER_LINE + 1), dict(more, x=1)],
            [big(BLOBS_PER_LINE + 1), {"t": "b", "blobs": [["x", 1]]}],
            # Too many on one line.
            [big(BLOBS_PER_LINE + 1, full + [[HASH_A, 1]])],
        ]:
            self.assertRejected(log(*objects))


class FrameTests(Base):
    def setUp(self):
        self.header = LogHeader(snapshot="s", kind="full")
        self.records = [Entry(path=b"/a", kind=DIR)]
        self.data = encode(self.header, self.records)

    def test_trailing_data(self):
        self.assertRejected(self.data + b"\0", "after the end")
        self.assertRejected(self.data + self.data, "after the end")
        # A skippable frame is still data after the end.
        self.assertRejected(self.data + b"\x50\x2a\x4d\x18\x00\x00\x00\x00", "after the end")

    def test_truncated_frame(self):
        for cut in range(len(self.data)):
            self.assertRejected(self.data[:cut])

    def test_not_zstd(self):
        self.assertRejected(b"", "empty")
        self.assertRejected(b"{}\n")
        self.assertRejected(plain(self.data))
        self.assertRejected(b"\x50\x2a\x4d\x18\x00\x00\x00\x00" + self.data)

    def test_checksum_required(self):
        text = plain(self.data)
        unchecked = zstandard.ZstdCompressor(write_checksum=False).compress(text)
        self.assertRejected(unchecked, "checksum")
        streamed = io.BytesIO()
        compressor = zstandard.ZstdCompressor(write_checksum=True)
        with compressor.stream_writer(streamed, closefd=False) as w:
            w.write(text)
        self.assertEqual(decode(streamed.getvalue()), (self.header, self.records))

    def test_dictionary_refused(self):
        dictionary = zstandard.ZstdCompressionDict(b"gridbackup-log dictionary content " * 20)
        text = plain(self.data)
        compressor = zstandard.ZstdCompressor(
            dict_data=dictionary, write_checksum=True, write_dict_id=True
        )
        data = compressor.compress(text)
        self.assertRejected(data)

    def assertRejectedOrSame(self, data):
        """
        Rejected, or read as exactly the original log.

        The frame checksum covers the content, not the frame: a changed
        window size or an unused bit of an entropy table can leave the
        content (checked by its checksum) as it was.
        """
        try:
            result = decode(data)
        except LogFormatError:
            return
        self.assertEqual(result, (self.header, self.records))

    def test_every_byte_flip_detected(self):
        for i in range(len(self.data)):
            for bit in (0x01, 0x80):
                corrupt = bytearray(self.data)
                corrupt[i] ^= bit
                self.assertRejectedOrSame(bytes(corrupt))
        # The checksum itself.
        for i in range(len(self.data) - 4, len(self.data)):
            corrupt = bytearray(self.data)
            corrupt[i] ^= 1
            self.assertRejected(bytes(corrupt), "zstd")

    def test_huge_window_refused(self):
        text = plain(self.data)
        params = zstandard.ZstdCompressionParameters.from_level(
            3, window_log=27, write_checksum=True
        )
        # The window is declared in the frame header only if the size is unknown.
        out = io.BytesIO()
        compressor = zstandard.ZstdCompressor(compression_params=params)
        with compressor.stream_writer(out, closefd=False) as w:
            w.write(text)
        self.assertRejected(out.getvalue(), "zstd")

    def test_explosive_frame_read_in_bounded_memory(self):
        """256 MiB of zeros after the header (a few KiB compressed): refused without holding them."""
        import tracemalloc

        out = io.BytesIO()
        compressor = zstandard.ZstdCompressor(write_checksum=True)
        with compressor.stream_writer(out, closefd=False) as w:
            w.write(plain(self.data).split(b"\n")[0] + b"\n")
            zeros = bytes(1 << 20)
            for _ in range(256):
                w.write(zeros)
        data = out.getvalue()
        self.assertLess(len(data), 1 << 20)
        tracemalloc.start()
        try:
            self.assertRejected(data, "line too long")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 32 << 20)


# ---------------------------------------------------------------------------
# Garbage never gets through, and never raises anything else


class GarbageTests(Base):
    @PROPERTY
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data):
        self.assertRaises(LogFormatError, decode, data)

    @PROPERTY
    @given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    def test_arbitrary_compressed(self, text):
        self.assertRaises(LogFormatError, decode, frame(text))

    @PROPERTY
    @given(
        st.lists(
            st.dictionaries(
                st.sampled_from(["t", "path", "kind", "records", "blobs", "format"]),
                st.none() | st.booleans() | st.integers() | st.text(max_size=5)
                | st.lists(st.integers(), max_size=2),
                max_size=4,
            ),
            max_size=4,
        )
    )
    def test_arbitrary_json_lines(self, objects):
        self.assertNoOtherException(lines_to_log(header_object(), *objects))

    @PROPERTY
    @given(logs(), st.data())
    def test_line_removed_or_duplicated(self, log, data):
        header, records = log
        lines = plain(encode(header, records)).splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        if data.draw(st.booleans()):
            mutated = lines[:i] + lines[i + 1:]
        else:
            mutated = lines[:i] + [lines[i]] + lines[i:]
        self.assertRaises(LogFormatError, decode, frame(b"".join(mutated)))

    @PROPERTY
    @given(logs(), st.data())
    def test_lines_swapped(self, log, data):
        header, records = log
        lines = plain(encode(header, records)).splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 2))
        j = data.draw(st.integers(i + 1, len(lines) - 1))
        assume(lines[i] != lines[j])
        lines[i], lines[j] = lines[j], lines[i]
        self.assertRaises(LogFormatError, decode, frame(b"".join(lines)))

    @PROPERTY
    @given(logs(), st.data())
    def test_text_truncated(self, log, data):
        header, records = log
        text = plain(encode(header, records))
        cut = data.draw(st.integers(0, len(text) - 1))
        self.assertRaises(LogFormatError, decode, frame(text[:cut]))

    @PROPERTY
    @given(logs(), st.data())
    def test_compressed_truncated_or_extended(self, log, data):
        header, records = log
        encoded = encode(header, records)
        if data.draw(st.booleans()):
            mutated = encoded[: data.draw(st.integers(0, len(encoded) - 1))]
        else:
            mutated = encoded + data.draw(st.binary(min_size=1, max_size=20))
        self.assertRaises(LogFormatError, decode, mutated)

    @PROPERTY
    @given(logs(), st.data())
    def test_compressed_byte_changed(self, log, data):
        header, records = log
        encoded = bytearray(encode(header, records))
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] ^= data.draw(st.integers(1, 255))
        try:
            result = decode(bytes(encoded))
        except LogFormatError:
            return
        # Only a change that leaves the checksummed content as it was.
        self.assertEqual(result, (header, records))

    @PROPERTY
    @given(logs(), st.data())
    def test_line_mutated(self, log, data):
        """A changed value either still makes a valid log or is rejected."""
        header, records = log
        lines = plain(encode(header, records)).splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        obj = json.loads(lines[i])
        key = data.draw(st.sampled_from(sorted(obj) + ["extra"]))
        how = data.draw(st.sampled_from(["delete", "replace"]))
        if how == "delete":
            obj.pop(key, None)
        else:
            obj[key] = data.draw(
                st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=8) | st.lists(st.integers(), max_size=2)
                | st.just({"b64": "AA=="})
            )
        lines[i] = json.dumps(obj).encode() + b"\n"
        self.assertNoOtherException(frame(b"".join(lines)))

    @FEW
    @given(logs(), st.data())
    def test_line_bytes_mutated(self, log, data):
        """A changed byte inside the text: rejected, or still a valid log."""
        header, records = log
        text = bytearray(plain(encode(header, records)))
        i = data.draw(st.integers(0, len(text) - 1))
        text[i] = data.draw(st.integers(0, 255))
        self.assertNoOtherException(frame(bytes(text)))


class CheckpointTests(Base):
    """A log being written can be read up to its last checkpoint (a resumed scan)."""

    @PROPERTY
    @given(logs(), st.data())
    def test_read_partial_at_each_checkpoint(self, log, data):
        from gridbackupd.format.logreader import read_partial

        header, records = log
        buf = io.BytesIO()
        writer = LogWriter(buf, header)
        marks = [(writer.checkpoint(), 0)]
        for i, record in enumerate(records):
            writer.add(record)
            if data.draw(st.booleans()):
                marks.append((writer.checkpoint(), i + 1))
        writer.close()
        for offset, count in marks:
            partial = io.BytesIO(buf.getvalue())
            got_header, got = read_partial(partial, offset)
            self.assertEqual(got_header, header)
            self.assertEqual(list(got), records[:count])
        # The finished log is an ordinary, strict log.
        self.assertEqual(decode(buf.getvalue())[1], records)

    def test_partial_garbage_is_rejected(self):
        from gridbackupd.format.logreader import read_partial

        buf = io.BytesIO()
        writer = LogWriter(buf, LogHeader(snapshot="s", kind="full"))
        writer.add(Entry(path=b"/a", kind=DIR))
        offset = writer.checkpoint()
        data = bytearray(buf.getvalue()[:offset])
        data[-3] ^= 0xFF
        with self.assertRaises(LogFormatError):
            list(read_partial(io.BytesIO(bytes(data)), offset)[1])
