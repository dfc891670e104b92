"""
The scanner: every kind of file, hostile names, metadata (xattrs, ACLs,
sparse holes), change detection, and errors that do not stop a scan.
"""

import errno
import hashlib
import io
import os
import stat
import struct

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format.logreader import read_log
from gridbackupd.format.logwriter import write_log
from gridbackupd.model import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    POSSIBLY_INCONSISTENT,
    RACY,
    SOCKET,
    SYMLINK,
    Entry,
    LogHeader,
)
from gridbackupd.scan import chunker, reader, values
from gridbackupd.scan.compare import Previous
from gridbackupd.scan.values import ScanOptions, ScanProgress
from gridbackupd.scan.walker import Scanner

OLD = 1_600_000_000_000_000_000
IS_ROOT = os.geteuid() == 0


def scan(roots, previous=None, incremental=False, **options):
    records, blobs = [], []
    progress = ScanProgress()
    Scanner(ScanOptions(roots=tuple(roots), **options), previous, records.append,
            blobs.append, progress, incremental=incremental).run()
    return records, blobs, progress


def round_trip(records, kind="full"):
    """Write records to a log and read them back: what a log says of them."""
    buf = io.BytesIO()
    write_log(buf, LogHeader(snapshot="s", kind=kind, parent="p" if kind != "full" else None),
                          records)
    buf.seek(0)
    _, read = read_log(buf)
    return list(read)


def acl_bytes(uid):
    """A POSIX ACL xattr value (version 2) with one named user entry."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


class KindsTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.fsencode(os.path.abspath(self.mktemp()))
        os.makedirs(self.root)

    def p(self, name):
        return os.path.join(self.root, name)

    def by_name(self, records):
        return {r.path[len(self.root) + 1:]: r for r in records if r.path != self.root}

    def test_every_kind_and_hostile_names(self):
        names = [b"plain", b"caf\xe9", b"new\nline", b"back\\slash", b"-dash", b" space ",
                 b"\x01ctl", b"\xff\xfe", b"quote\"s", b"\xe2\x80\xae-rtl", b"a" * 255]
        for i, name in enumerate(names):
            with open(self.p(name), "wb") as f:
                f.write(b"%d" % i * (i + 1))
        os.mkdir(self.p(b"dir\xee"))
        os.symlink(b"/nowhere/\xfa", self.p(b"dangling"))
        os.mkfifo(self.p(b"fifo"))
        os.mknod(self.p(b"sock"), 0o600 | stat.S_IFSOCK)
        os.link(self.p(b"plain"), self.p(b"plain-link"))
        if IS_ROOT:
            os.mknod(self.p(b"null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.mknod(self.p(b"loop"), 0o660 | stat.S_IFBLK, os.makedev(7, 0))
        records, blobs, progress = scan([self.root])
        self.assertEqual(progress.errors, [])
        got = self.by_name(records)
        for i, name in enumerate(names):
            e = got[name]
            self.assertEqual((e.kind, e.inline), (FILE, b"%d" % i * (i + 1)))
            self.assertEqual(e.sha256, hashlib.sha256(e.inline).hexdigest())
        self.assertEqual(got[b"dir\xee"].kind, DIR)
        self.assertEqual((got[b"dangling"].kind, got[b"dangling"].target), (SYMLINK, b"/nowhere/\xfa"))
        self.assertEqual(got[b"fifo"].kind, FIFO)
        self.assertEqual(got[b"sock"].kind, SOCKET)
        self.assertEqual(got[b"plain"].kind, FILE)
        self.assertEqual((got[b"plain-link"].kind, got[b"plain-link"].target),
                         (HARDLINK, self.p(b"plain")))
        if IS_ROOT:
            self.assertEqual((got[b"null"].kind, got[b"null"].rdev), (CHARDEV, os.makedev(1, 3)))
            self.assertEqual(got[b"loop"].kind, BLOCKDEV)
        # Paths are in log order, and a log describes them exactly.
        self.assertEqual(round_trip(records), records)
        st = os.lstat(self.p(b"fifo"))
        e = got[b"fifo"]
        self.assertEqual((e.mode, e.uid, e.gid, e.mtime_ns, e.ino), (
            st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ino))

    def test_xattrs_and_acls(self):
        path = self.p(b"f")
        with open(path, "wb") as f:
            f.write(b"x")
        os.setxattr(path, b"user.b", b"\x00\xffbin")
        os.setxattr(path, b"user.a", b"")
        os.setxattr(path, "system.posix_acl_access", acl_bytes(1234))
        os.mkdir(self.p(b"d"))
        os.setxattr(self.p(b"d"), "system.posix_acl_default", acl_bytes(4321))
        records, _, progress = scan([self.root])
        self.assertEqual(progress.errors, [])
        got = self.by_name(records)
        names = [n for n, _ in got[b"f"].xattrs]
        self.assertEqual(names, sorted(names))
        xattrs = dict(got[b"f"].xattrs)
        self.assertEqual(xattrs[b"user.a"], b"")
        self.assertEqual(xattrs[b"user.b"], b"\x00\xffbin")
        self.assertEqual(xattrs[b"system.posix_acl_access"], acl_bytes(1234))
        self.assertIn(b"system.posix_acl_default", dict(got[b"d"].xattrs))
        self.assertEqual(round_trip(records), records)

    def test_xattrs_unsupported_is_not_an_error(self):
        def unsupported(path, follow_symlinks=True):
            raise OSError(errno.ENOTSUP, "Operation not supported")

        self.patch(os, "listxattr", unsupported)
        with open(self.p(b"f"), "wb") as f:
            f.write(b"x")
        records, _, progress = scan([self.root])
        self.assertEqual((progress.errors, self.by_name(records)[b"f"].xattrs), ([], ()))

    def test_sparse_file(self):
        path = self.p(b"sparse")
        size = 8 * 1024 * 1024
        with open(path, "wb") as f:
            f.truncate(size)
            f.seek(3 * 1024 * 1024)
            f.write(b"data" * 4096)
        records, blobs, _ = scan([self.root], chunk_threshold=64 * 1024)
        e = self.by_name(records)[b"sparse"]
        if os.lstat(path).st_blocks * 512 >= size:
            raise self.skipTest("this file system does not make sparse files")
        self.assertTrue(e.holes)
        self.assertEqual(e.holes[0][0], 0)
        # All but the written 16 KiB (give or take a file system block or so).
        self.assertGreaterEqual(sum(h[1] for h in e.holes), size - 16384 - 65536)
        self.assertLessEqual(sum(h[1] for h in e.holes), size - 16384)
        self.assertLessEqual(e.holes[0][1], 3 * 1024 * 1024)
        self.assertEqual(e.holes[-1][0] + e.holes[-1][1], size)
        # The content still covers the holes, as zeros.
        with open(path, "rb") as f:
            self.assertEqual(e.sha256, hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(sum(n for _, n in e.blobs), size)
        self.assertEqual(round_trip(records), records)
        # A file without holes records none.
        with open(self.p(b"dense"), "wb") as f:
            f.write(b"x" * 100000)
        records, _, _ = scan([self.root])
        self.assertEqual(self.by_name(records)[b"dense"].holes, ())

    def test_fifo_is_never_opened(self):
        os.mkfifo(self.p(b"fifo"))
        opened = []
        real_open = os.open

        def watch(path, flags, *a, **kw):
            if not flags & os.O_DIRECTORY:
                opened.append(path)
            return real_open(path, flags, *a, **kw)

        self.patch(os, "open", watch)
        records, _, progress = scan([self.root])
        self.assertEqual(opened, [])  # only the directories were opened
        self.assertEqual(self.by_name(records)[b"fifo"].kind, FIFO)


class ChangeTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.fsencode(os.path.abspath(self.mktemp()))
        os.makedirs(self.root)
        self.file = os.path.join(self.root, b"f")
        with open(self.file, "wb") as f:
            f.write(b"x" * 1000)
        os.utime(self.file, ns=(OLD, OLD))

    def test_unchanged_files_are_not_read(self):
        first, blobs, p1 = scan([self.root])
        self.assertEqual(p1.bytes_hashed, 1000)
        second, blobs2, p2 = scan([self.root], previous=iter(first))
        self.assertEqual(p2.bytes_hashed, 0)
        self.assertEqual(second, first)
        self.assertEqual([b.hash for b in blobs2], [b.hash for b in blobs])

    def test_racy_file_is_read_again(self):
        os.utime(self.file)  # now: within the racy window of the scan
        first, _, _ = scan([self.root])
        f = [e for e in first if e.path == self.file][0]
        self.assertIn(RACY, f.flags)
        _, _, p2 = scan([self.root], previous=iter(first))
        self.assertEqual(p2.bytes_hashed, 1000)

    def test_file_that_never_holds_still(self):
        calls = []
        real_digest = chunker.digest_fd

        def digest_and_touch(fd, *args, **kwargs):
            result = real_digest(fd, *args, **kwargs)
            calls.append(1)
            with open(self.file, "ab") as f:
                f.write(b"y")
            return result

        self.patch(chunker, "digest_fd", digest_and_touch)
        records, _, progress = scan([self.root])
        f = [e for e in records if e.path == self.file][0]
        self.assertEqual(len(calls), reader.REREAD_ATTEMPTS)
        self.assertIn(POSSIBLY_INCONSISTENT, f.flags)
        self.assertEqual(progress.errors, [])

    def test_incremental_records(self):
        os.mkdir(os.path.join(self.root, b"d"))
        with open(os.path.join(self.root, b"d", b"g"), "wb") as f:
            f.write(b"g")
        os.utime(os.path.join(self.root, b"d", b"g"), ns=(OLD, OLD))
        os.utime(os.path.join(self.root, b"d"), ns=(OLD, OLD))
        os.utime(self.root, ns=(OLD, OLD))
        first, _, _ = scan([self.root])
        second, _, _ = scan([self.root], previous=iter(first), incremental=True)
        self.assertEqual(second, [])
        os.unlink(os.path.join(self.root, b"d", b"g"))
        os.utime(os.path.join(self.root, b"d"), ns=(OLD, OLD))
        third, _, _ = scan([self.root], previous=iter(first), incremental=True)
        # d's ctime changed with the unlink; g is gone
        self.assertEqual([(type(r).__name__, r.path) for r in third], [
            ("Entry", os.path.join(self.root, b"d")),
            ("Deletion", os.path.join(self.root, b"d", b"g")),
        ])
        self.assertEqual(round_trip(third, "incremental"), third)


class ErrorTests(SynchronousTestCase):
    """Each error is recorded with its reason; the scan goes on."""

    def setUp(self):
        self.root = os.fsencode(os.path.abspath(self.mktemp()))
        os.makedirs(self.root)
        for name in (b"a", b"b", b"c"):
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(name * 500)
        self.b = os.path.join(self.root, b"b")

    def patch_open(self, before_open):
        """Call ``before_open`` just before the scanner opens the file ``self.b`` (by its name)."""
        real_open = os.open

        def patched(path, flags, *args, **kwargs):
            if path == os.path.basename(self.b) and kwargs.get("dir_fd") is not None:
                before_open(self.b)
            return real_open(path, flags, *args, **kwargs)

        self.patch(os, "open", patched)

    def files(self, records):
        return [os.path.basename(r.path) for r in records if r.kind == FILE]

    def test_unreadable_file(self):
        def deny(path):
            raise PermissionError(errno.EACCES, "Permission denied")

        self.patch_open(deny)
        records, _, progress = scan([self.root])
        self.assertEqual(self.files(records), [b"a", b"c"])
        self.assertEqual(progress.errors, [{"path": os.fsdecode(self.b),
                                            "reason": "cannot open: permission denied"}])
        self.assertEqual(progress.error_count, 1)

    def test_file_replaced_by_a_fifo_between_lstat_and_open(self):
        def to_fifo(path):
            os.unlink(path)
            os.mkfifo(path)

        self.patch_open(to_fifo)
        records, _, progress = scan([self.root])  # must not block
        self.assertEqual(self.files(records), [b"a", b"c"])
        self.assertEqual([e["reason"] for e in progress.errors],
                         ["replaced by another file while scanned"])

    def test_vanished_file(self):
        self.patch_open(os.unlink)
        records, _, progress = scan([self.root])
        self.assertEqual(self.files(records), [b"a", b"c"])
        self.assertEqual([e["reason"] for e in progress.errors], ["vanished while scanned"])

    def test_unreadable_directory(self):
        os.mkdir(os.path.join(self.root, b"locked"))
        with open(os.path.join(self.root, b"locked", b"x"), "wb") as f:
            f.write(b"x")
        real_scandir = os.scandir

        def scandir(fd):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/locked"):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_scandir(fd)

        self.patch(os, "scandir", scandir)
        records, _, progress = scan([self.root])
        paths = [r.path for r in records]
        self.assertIn(os.path.join(self.root, b"locked"), paths)  # the directory itself
        self.assertNotIn(os.path.join(self.root, b"locked", b"x"), paths)
        self.assertEqual([e["reason"] for e in progress.errors],
                         ["cannot list directory: permission denied"])
        self.assertIn(os.path.join(self.root, b"c"), paths)

    def test_path_too_long(self):
        # A tree deeper than PATH_MAX, made with dir_fd so that it can be made.
        fd = os.open(self.root, os.O_RDONLY)
        name = b"d" * 250
        depth = 0
        try:
            while depth * 251 < 4200:
                os.mkdir(name, dir_fd=fd)
                new = os.open(name, os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = new
                depth += 1
            leaf = os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.close(leaf)
        finally:
            os.close(fd)
        records, _, progress = scan([self.root])
        self.assertEqual(progress.error_count, 1)
        self.assertTrue(progress.errors[0]["reason"].startswith("path too long"))
        self.assertIn(os.path.join(self.root, b"c"), [r.path for r in records])
        self.assertEqual(round_trip(records), records)

    def test_errors_are_capped_and_counted(self):
        self.patch(values, "MAX_ERRORS", 2)
        real_open = os.open

        def deny(path, flags, *args, **kwargs):
            if flags & os.O_DIRECTORY:
                return real_open(path, flags, *args, **kwargs)
            raise PermissionError(errno.EACCES, "Permission denied")

        self.patch(os, "open", deny)
        for i in range(5):
            with open(os.path.join(self.root, b"more%d" % i), "wb") as f:
                f.write(b"m" * 200)
        _, _, progress = scan([self.root])
        self.assertEqual(progress.error_count, 8)
        listed = progress.error_list()
        self.assertEqual(len(listed), 3)
        self.assertEqual(listed[-1], {"path": None, "reason": "and 6 more errors"})

    def test_undecodable_names_in_errors(self):
        bad = os.path.join(self.root, b"\xff\xfe")
        with open(bad, "wb") as f:
            f.write(b"z" * 300)
        self.b = bad

        def deny(path):
            raise PermissionError(errno.EACCES, "Permission denied")

        self.patch_open(deny)
        _, _, progress = scan([self.root])
        self.assertEqual(progress.errors[0]["path"], os.fsdecode(self.root) + "/\\xff\\xfe")
        import json

        json.dumps(progress.errors, ensure_ascii=False).encode("utf-8")  # never a surrogate

    def test_hard_link_to_an_unreadable_first_name(self):
        # b is unreadable; its second name must not become a link to nothing.
        os.link(self.b, os.path.join(self.root, b"d-link"))

        calls = []

        def deny_once(path):
            calls.append(path)
            if len(calls) == 1:
                raise PermissionError(errno.EACCES, "Permission denied")

        self.patch_open(deny_once)
        records, _, progress = scan([self.root])
        link = [r for r in records if r.path.endswith(b"/d-link")][0]
        self.assertEqual(link.kind, FILE)
        self.assertEqual(link.inline, None)
        self.assertEqual(sum(n for _, n in link.blobs), 500)
        self.assertEqual(progress.error_count, 1)


class MergeProperties(SynchronousTestCase):
    """An incremental diff applied to its parent gives the scan's entries back."""

    def test_diff_then_merge(self):
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from gridbackupd.format.logmerge import merge_records
        from gridbackupd.format.logpaths import path_key

        names = st.sampled_from([b"a", b"b", b"a+", b"ab", b"\xff"])
        paths = st.lists(names, min_size=1, max_size=3).map(lambda parts: b"/" + b"/".join(parts))
        entries = st.dictionaries(paths, st.integers(0, 2), max_size=12).map(
            lambda d: sorted(
                (Entry(path=p, kind=FILE, size=v, inline=b"x" * v) for p, v in d.items()),
                key=lambda e: path_key(e.path)))

        @settings(max_examples=300, deadline=None)
        @given(entries, entries, st.booleans())
        def check(previous, current, use_find):
            out = []
            merge = Previous(iter(previous), out.append, incremental=True)
            for e in current:
                if use_find:
                    merge.find(e.path)
                merge.emit(e)
            merge.finish()
            self.assertEqual(list(merge_records(iter(previous), iter(out))), current)
            full = []
            merge = Previous(iter(previous), full.append, incremental=False)
            for e in current:
                merge.emit(e)
            merge.finish()
            self.assertEqual(full, current)

        check()


class SpoolTests(SynchronousTestCase):
    """A file that never holds still is backed up as read: its last read is kept."""

    def setUp(self):
        self.root = os.fsencode(os.path.abspath(self.mktemp()))
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.file = os.path.join(self.root, b"vm.img")
        with open(self.file, "wb") as f:
            f.write(os.urandom(300_000))

    def test_volatile_file_is_spooled(self):
        real_digest = chunker.digest_fd

        def digest_and_touch(fd, *args, **kwargs):
            result = real_digest(fd, *args, **kwargs)
            with open(self.file, "ab") as f:
                f.write(b"y" * 1000)
            return result

        self.patch(chunker, "digest_fd", digest_and_touch)
        records, blobs, _ = scan([self.root], spool_dir=self.spool, chunk_threshold=64 * 1024,
                                 params=chunker.ChunkParams(4096, 16384, 65536))
        f = [e for e in records if e.path == self.file][0]
        self.assertIn(POSSIBLY_INCONSISTENT, f.flags)
        self.assertGreater(len(blobs), 1)
        # Every blob is read from the spool, where its bytes match its hash.
        for b in blobs:
            self.assertTrue(b.source_path.startswith(os.fsencode(self.spool)), b.source_path)
            with open(b.source_path, "rb") as spooled:
                data = spooled.read()
            self.assertEqual((hashlib.sha256(data).hexdigest(), len(data), b.source_offset),
                             (b.hash, b.size, 0))
        self.assertEqual(sorted(os.listdir(self.spool)), sorted({b.hash for b in blobs}))

    def test_file_that_settles_on_the_last_read_leaves_no_spool(self):
        real_digest = chunker.digest_fd
        calls = []

        def touch_twice(fd, *args, **kwargs):
            result = real_digest(fd, *args, **kwargs)
            calls.append(1)
            if len(calls) < reader.REREAD_ATTEMPTS:
                with open(self.file, "ab") as f:
                    f.write(b"y")
            return result

        self.patch(chunker, "digest_fd", touch_twice)
        records, blobs, _ = scan([self.root], spool_dir=self.spool)
        f = [e for e in records if e.path == self.file][0]
        self.assertNotIn(POSSIBLY_INCONSISTENT, f.flags)
        self.assertEqual([b.source_path for b in blobs], [self.file])
        self.assertEqual(os.listdir(self.spool), [])


class ChangingTreeTests(SynchronousTestCase):
    """
    Files and directories that change while the walk runs, through the
    walker's and reader's test hooks: each ends as a per-file error or a
    ``possibly inconsistent`` entry whose hashes match what was read, and a
    link swapped in is never followed (the daemon reads as root).
    """

    def setUp(self):
        self.base = os.fsencode(os.path.abspath(self.mktemp()))
        self.root = os.path.join(self.base, b"root")
        self.d = os.path.join(self.root, b"d")
        os.makedirs(self.d)
        self.file = os.path.join(self.d, b"f")
        self.content = os.urandom(5000)
        with open(self.file, "wb") as f:
            f.write(self.content)
        # A state directory as the daemon's, with a root cap in it.
        self.state = os.path.join(self.base, b"state")
        os.makedirs(os.path.join(self.state, b"private"))
        self.rootcap = b"URI:DIR2:secretsecretsecret:publicpublicpublic"
        with open(os.path.join(self.state, b"private", b"rootcap"), "wb") as f:
            f.write(self.rootcap)

    def hook(self, module, name, path, action):
        """Run ``action`` once, when the hook ``name`` of ``module`` is called for ``path``."""
        done = []

        def hook(seen):
            if seen == path and not done:
                done.append(seen)
                action()

        self.patch(module, name, hook)
        return done

    def swap_for_link(self, directory, target):
        os.rename(directory, directory + b".away")
        os.symlink(target, directory)

    def test_directory_swapped_for_a_link_to_the_state_dir_is_not_followed(self):
        from gridbackupd.scan import walker

        done = self.hook(walker, "before_opening_dir", self.d,
                         lambda: self.swap_for_link(self.d, self.state))
        records, blobs, progress = scan([self.root])
        self.assertEqual(done, [self.d])
        self.assertEqual([r.path for r in records], [self.root, self.d])
        self.assertEqual(progress.errors, [{
            "path": os.fsdecode(self.d),
            "reason": "replaced by another file while scanned"}])
        self.assertEqual(blobs, [])
        for r in records:
            self.assertNotIn(self.rootcap, repr(r).encode())
        # The next scan records the link as a link.
        records, _, progress = scan([self.root])
        self.assertEqual([(r.path, r.kind) for r in records][:2],
                         [(self.root, DIR), (self.d, SYMLINK)])
        self.assertEqual(progress.errors, [])

    def test_directory_replaced_by_another_directory(self):
        from gridbackupd.scan import walker

        def replace():
            os.rename(self.d, self.d + b".old")
            os.mkdir(self.d)

        self.hook(walker, "before_opening_dir", self.d, replace)
        records, _, progress = scan([self.root])
        self.assertEqual([e["reason"] for e in progress.errors],
                         ["replaced by another file while scanned"])

    def test_directory_renamed_during_the_walk(self):
        from gridbackupd.scan import walker

        self.hook(walker, "before_opening_dir", self.d,
                  lambda: os.rename(self.d, os.path.join(self.root, b"e")))
        records, blobs, progress = scan([self.root])
        self.assertEqual([r.path for r in records], [self.root])
        self.assertEqual(progress.errors, [{"path": os.fsdecode(self.d),
                                            "reason": "vanished while scanned"}])
        self.assertEqual(blobs, [])

    def test_file_replaced_by_a_link_before_it_is_opened(self):
        elsewhere = os.path.join(self.base, b"same")
        with open(elsewhere, "wb") as f:
            f.write(self.content)

        def to_link():
            os.unlink(self.file)
            os.symlink(elsewhere, self.file)

        self.hook(reader, "before_open", self.file, to_link)
        records, blobs, progress = scan([self.root])
        self.assertEqual(progress.errors, [{
            "path": os.fsdecode(self.file),
            "reason": "replaced by a symbolic link while scanned"}])
        self.assertEqual(blobs, [])

    def test_file_deleted_after_the_listing(self):
        self.hook(reader, "before_open", self.file, lambda: os.unlink(self.file))
        records, blobs, progress = scan([self.root])
        self.assertEqual([r.path for r in records], [self.root, self.d])
        self.assertEqual([e["reason"] for e in progress.errors], ["vanished while scanned"])

    def test_appended_while_read(self):
        def append():
            with open(self.file, "ab") as f:
                f.write(b"more")

        self.patch(reader, "while_open", lambda path: append())
        records, blobs, progress = scan([self.root])
        f = records[-1]
        self.assertIn(POSSIBLY_INCONSISTENT, f.flags)
        self.assertEqual(progress.errors, [])
        # What the entry says is what one read saw, whole: its hash and its blob's agree.
        self.assertEqual(f.size, len(self.content) + 4 * reader.REREAD_ATTEMPTS)
        with open(self.file, "rb") as fh:
            seen = fh.read(f.size)
        self.assertEqual(hashlib.sha256(seen).hexdigest(), f.sha256)
        self.assertEqual([(b.hash, b.size) for b in blobs], [(hashlib.sha256(seen).hexdigest(), f.size)])

    def test_truncated_while_read(self):
        done = self.hook(reader, "while_open", self.file,
                         lambda: os.truncate(self.file, 1000))
        records, blobs, progress = scan([self.root])
        f = records[-1]
        self.assertEqual(done, [self.file])
        # Read again once it held still: the entry is the truncated file, consistent.
        self.assertEqual((f.size, f.sha256, f.flags),
                         (1000, hashlib.sha256(self.content[:1000]).hexdigest(), (RACY,)))
        self.assertEqual([(b.hash, b.size) for b in blobs],
                         [(hashlib.sha256(self.content[:1000]).hexdigest(), 1000)])
        self.assertEqual(progress.errors, [])

    def test_blobs_carry_the_identity_of_their_file(self):
        records, blobs, _ = scan([self.root])
        st = os.lstat(self.file)
        base = len(self.base)  # the root's parent is opened by its path
        self.assertEqual([(b.source_path, b.source_dev, b.source_ino, b.source_base) for b in blobs],
                         [(self.file, st.st_dev, st.st_ino, base)])
        # So do those of an unchanged file, reused from the previous snapshot.
        os.utime(self.file, ns=(OLD, OLD))
        first, _, _ = scan([self.root])
        _, again, p2 = scan([self.root], previous=iter(first))
        self.assertEqual(p2.bytes_hashed, 0)
        self.assertEqual([(b.source_dev, b.source_ino, b.source_base) for b in again],
                         [(st.st_dev, st.st_ino, base)])

    def test_root_under_a_linked_directory(self):
        """The configured path above the root may hold links: it is opened as configured."""
        link = os.path.join(self.base, b"link")
        os.symlink(self.root, link)
        records, blobs, progress = scan([os.path.join(link, b"d")])
        self.assertEqual(progress.errors, [])
        self.assertEqual([r.path for r in records], [os.path.join(link, b"d"), os.path.join(link, b"d", b"f")])
        self.assertEqual(blobs[0].source_path[:blobs[0].source_base], link)

    def test_a_tree_too_deep_is_an_error_not_a_descriptor_per_level(self):
        from gridbackupd.scan import walker

        self.patch(walker, "MAX_DEPTH", 5)
        deep = os.path.join(self.d, *[b"x"] * 6)
        os.makedirs(deep)
        records, _, progress = scan([self.root])
        too_deep = os.path.join(self.d, *[b"x"] * 4)
        self.assertEqual([e["path"] for e in progress.errors], [os.fsdecode(too_deep)])
        self.assertTrue(progress.errors[0]["reason"].startswith("too deep to list"))
        paths = [r.path for r in records]
        self.assertIn(too_deep, paths)
        self.assertNotIn(os.path.join(too_deep, b"x"), paths)
