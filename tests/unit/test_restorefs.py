"""A restore never writes outside its target, whatever the snapshot says."""

import os
import stat

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gridbackupd.format import hardlinks
from gridbackupd.model import DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry
from gridbackupd.restore import targetfs
from gridbackupd.restore.targetfs import TargetWriter, UnsafePath, components


class ComponentTests(SynchronousTestCase):
    def test_refused(self):
        for bad in (b"relative", b"/a/../b", b"/a/./b", b"/a//b", b"/a\0b", b"/..", "/str"):
            self.assertRaises(UnsafePath, components, bad)

    def test_raw_bytes(self):
        self.assertEqual(components(b"/a/\xff\xfe/c"), [b"a", b"\xff\xfe", b"c"])
        self.assertEqual(components(b"/"), [])


class WriterTests(SynchronousTestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        self.target = os.path.join(self.base, "target")
        self.outside = os.path.join(self.base, "outside")
        os.makedirs(self.outside)
        self.writer = TargetWriter(self.target)
        self.addCleanup(self.writer.close)

    def write_file(self, path, data):
        entry = Entry(path=path, kind=FILE, mode=0o640, size=len(data), mtime_ns=10**18)
        out = self.writer.open_file(entry)
        out.write(0, data)
        out.commit()

    def test_file_with_metadata(self):
        self.write_file(b"/home/a/\xffname", b"content")
        path = os.path.join(os.fsencode(self.target), b"home/a/\xffname")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"content")
        st = os.stat(path)
        self.assertEqual(st.st_mode & 0o777, 0o640)
        self.assertEqual(st.st_mtime_ns, 10**18)
        self.assertEqual([n for n in os.listdir(os.path.dirname(path))], [b"\xffname"])

    def test_symlink_in_snapshot_cannot_redirect(self):
        # A snapshot holding a symlink to the outside, then a file "under" it.
        self.writer.make_symlink(Entry(path=b"/evil", kind=SYMLINK, target=os.fsencode(self.outside)))
        self.assertRaises(UnsafePath, self.write_file, b"/evil/payload", b"x")
        self.assertEqual(os.listdir(self.outside), [])

    def test_symlink_already_in_target_cannot_redirect(self):
        os.makedirs(self.target, exist_ok=True)
        os.symlink(self.outside, os.path.join(self.target, "etc"))
        self.assertRaises(UnsafePath, self.write_file, b"/etc/passwd", b"x")
        self.assertRaises(UnsafePath, self.writer.make_dir, Entry(path=b"/etc/sub", kind=DIR))
        self.assertEqual(os.listdir(self.outside), [])

    def test_dotdot_refused(self):
        self.assertRaises(UnsafePath, self.write_file, b"/../outside/x", b"x")
        self.assertEqual(os.listdir(self.outside), [])

    def test_existing_file_kept_without_overwrite(self):
        self.write_file(b"/f", b"one")
        entry = Entry(path=b"/f", kind=FILE, size=3)
        self.assertIsNone(self.writer.open_file(entry))
        with open(os.path.join(self.target, "f"), "rb") as f:
            self.assertEqual(f.read(), b"one")

    def test_abort_leaves_nothing(self):
        entry = Entry(path=b"/g", kind=FILE, size=3)
        out = self.writer.open_file(entry)
        out.write(0, b"par")
        out.abort()
        self.assertEqual(os.listdir(self.target), [])

    def test_leftovers_of_a_killed_restore_are_swept(self):
        # A restore killed mid-way left a temporary file; the user's own
        # files with similar names stay.
        os.makedirs(os.path.join(self.target, "home"), exist_ok=True)
        left = os.path.join(self.target, "home", ".gridbackup-restore-0011aabbccdd-notes")
        mine = os.path.join(self.target, "home", "gridbackup-restore-notes")
        for path in (left, mine):
            with open(path, "wb") as f:
                f.write(b"x")
        entry = Entry(path=b"/home/new", kind=FILE, mode=0o600, size=2, mtime_ns=10**18)
        out = self.writer.open_file(entry)
        out.write(0, b"ok")
        out.commit()
        self.assertEqual(sorted(os.listdir(os.path.join(self.target, "home"))),
                         ["gridbackup-restore-notes", "new"])


class SparseTests(SynchronousTestCase):
    def test_holes_stay_holes(self):
        target = os.path.abspath(self.mktemp())
        writer = TargetWriter(target)
        self.addCleanup(writer.close)
        mib = 1024 * 1024
        data = b"a" * 4096 + bytes(4 * mib) + b"b" * 4096 + bytes(2 * mib)
        entry = Entry(path=b"/sparse", kind=FILE, mode=0o644, size=len(data),
                      holes=((4096, 4 * mib), (8192 + 4 * mib, 2 * mib)))
        out = writer.open_file(entry)
        out.write(0, data[:3 * mib])  # a blob boundary inside the first hole
        out.write(3 * mib, data[3 * mib:])
        out.commit()
        path = os.path.join(target, "sparse")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        st = os.stat(path)
        self.assertLess(st.st_blocks * 512, mib)  # the 6 MiB of holes take no space
        # A hole that the content says is not zeros is written as data.
        lying = Entry(path=b"/lying", kind=FILE, size=8192, holes=((0, 8192),))
        out = writer.open_file(lying)
        out.write(0, b"x" * 8192)
        out.commit()
        with open(os.path.join(target, "lying"), "rb") as f:
            self.assertEqual(f.read(), b"x" * 8192)


class MetadataTests(SynchronousTestCase):
    def test_acl_and_xattrs_after_chmod(self):
        import struct

        target = os.path.abspath(self.mktemp())
        writer = TargetWriter(target)
        self.addCleanup(writer.close)
        # A POSIX access ACL as Linux stores it: user::rw-, user:1234:rwx,
        # group::r--, mask::rwx, other::---.
        acl = struct.pack("<I", 2) + b"".join(
            struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in (
                (0x01, 6, 0xFFFFFFFF), (0x02, 7, 1234), (0x04, 4, 0xFFFFFFFF),
                (0x10, 7, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)))
        entry = Entry(path=b"/f", kind=FILE, mode=0o100670, size=1, mtime_ns=10**18,
                      xattrs=((b"system.posix_acl_access", acl), (b"user.k", b"v")))
        out = writer.open_file(entry)
        out.write(0, b"x")
        out.commit()
        path = os.path.join(target, "f")
        if writer.warnings:
            raise SkipTest(f"this file system refuses: {writer.warnings}")
        self.assertEqual(os.getxattr(path, "user.k"), b"v")
        self.assertEqual(os.getxattr(path, "system.posix_acl_access"), acl)
        st = os.stat(path)
        self.assertEqual((st.st_mode & 0o777, st.st_mtime_ns), (0o670, 10**18))

    def test_refused_xattr_is_reported_and_the_file_kept(self):
        target = os.path.abspath(self.mktemp())
        writer = TargetWriter(target)
        self.addCleanup(writer.close)
        entry = Entry(path=b"/f", kind=FILE, size=1, xattrs=((b"bogus.namespace", b"v"),))
        out = writer.open_file(entry)
        out.write(0, b"x")
        out.commit()
        self.assertTrue(os.path.exists(os.path.join(target, "f")))
        [(path, reason)] = writer.warnings
        self.assertEqual(path, b"/f")
        self.assertIn("bogus.namespace", reason)


class SwapAtMetadataTests(SynchronousTestCase):
    """
    A user who can write in the target swaps what the restore just made for
    something else before its metadata goes on (``targetfs._before_metadata``
    is that moment): the restore changes nothing it did not make.
    """

    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.target = os.path.join(base, "target")
        self.victim = os.path.join(base, "victim")
        os.makedirs(base)
        with open(self.victim, "wb") as f:
            f.write(b"#!/bin/sh\n")
        os.chmod(self.victim, 0o600)
        os.utime(self.victim, ns=(5 * 10**17, 5 * 10**17))
        self.before = os.stat(self.victim)
        self.writer = TargetWriter(self.target)
        self.addCleanup(self.writer.close)

    def swap(self, make):
        def hook(dir_fd, name):
            os.unlink(name, dir_fd=dir_fd)
            make(name, dir_fd)
        self.patch(targetfs, "_before_metadata", hook)

    def assertVictimUnchanged(self):
        st = os.stat(self.victim)
        self.assertEqual((oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns),
                         (oct(self.before.st_mode), self.before.st_uid, self.before.st_gid,
                          self.before.st_mtime_ns))

    def test_fifo_swapped_for_a_symlink(self):
        self.swap(lambda name, fd: os.symlink(self.victim, name, dir_fd=fd))
        entry = Entry(path=b"/fifo", kind=FIFO, mode=stat.S_IFIFO | 0o4777, uid=0, gid=0,
                      mtime_ns=10**18)
        with self.assertRaises(UnsafePath) as caught:
            self.writer.make_special(entry)
        self.assertIn("now a symlink", str(caught.exception))
        self.assertVictimUnchanged()

    def test_symlink_swapped_for_a_hard_link_to_another_file(self):
        # lchown by name would chown whatever the name holds by then.
        self.swap(lambda name, fd: os.link(self.victim, name, dst_dir_fd=fd))
        entry = Entry(path=b"/link", kind=SYMLINK, mode=stat.S_IFLNK | 0o777, target=b"x",
                      uid=4321, gid=8765, mtime_ns=10**18)
        with self.assertRaises(UnsafePath) as caught:
            self.writer.make_symlink(entry)
        self.assertIn("now a regular file", str(caught.exception))
        self.assertVictimUnchanged()

    def test_metadata_of_what_was_not_swapped(self):
        fifo = Entry(path=b"/fifo", kind=FIFO, mode=stat.S_IFIFO | 0o640, uid=4321, gid=8765,
                     mtime_ns=10**18)
        link = Entry(path=b"/link", kind=SYMLINK, mode=stat.S_IFLNK | 0o777, target=b"fifo",
                     uid=4321, gid=8765, mtime_ns=2 * 10**18)
        self.assertTrue(self.writer.make_special(fifo))
        self.assertTrue(self.writer.make_symlink(link))
        st = os.lstat(os.path.join(self.target, "fifo"))
        self.assertEqual((stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns),
                         (stat.S_IFIFO, 0o640, 10**18))
        lst = os.lstat(os.path.join(self.target, "link"))
        self.assertEqual(lst.st_mtime_ns, 2 * 10**18)
        if os.geteuid() == 0:
            self.assertEqual((st.st_uid, st.st_gid, lst.st_uid, lst.st_gid), (4321, 8765) * 2)


class SetIdTests(SynchronousTestCase):
    """Set-uid and set-gid bits stay only where the owner is restored too."""

    def restore(self, as_root):
        target = os.path.abspath(self.mktemp())
        writer = TargetWriter(target)
        self.addCleanup(writer.close)
        writer.as_root = as_root
        for name, mode in ((b"suid", 0o4755), (b"sgid", 0o2750), (b"plain", 0o755)):
            entry = Entry(path=b"/" + name, kind=FILE, mode=stat.S_IFREG | mode, size=1)
            out = writer.open_file(entry)
            out.write(0, b"x")
            out.commit()
        writer.make_special(Entry(path=b"/fifo", kind=FIFO, mode=stat.S_IFIFO | 0o6640))
        writer.make_dir(Entry(path=b"/shared", kind=DIR, mode=stat.S_IFDIR | 0o2775))
        writer.finish_dir(Entry(path=b"/shared", kind=DIR, mode=stat.S_IFDIR | 0o2775))
        modes = {name: stat.S_IMODE(os.lstat(os.path.join(target, name)).st_mode)
                 for name in ("suid", "sgid", "plain", "fifo", "shared")}
        return modes, writer.setid_dropped

    def test_dropped_and_counted_when_owners_are_not_restored(self):
        modes, dropped = self.restore(as_root=False)
        self.assertEqual(modes, {"suid": 0o755, "sgid": 0o750, "plain": 0o755, "fifo": 0o640,
                                 "shared": 0o2775})
        self.assertEqual(dropped, 3)

    def test_kept_when_owners_are(self):
        if os.geteuid() != 0:
            raise SkipTest("restoring owners needs root")
        modes, dropped = self.restore(as_root=True)
        self.assertEqual(modes, {"suid": 0o4755, "sgid": 0o2750, "plain": 0o755, "fifo": 0o6640,
                                 "shared": 0o2775})
        self.assertEqual(dropped, 0)


class FollowHardLinkTests(SynchronousTestCase):
    """``hardlinks.follow`` ends every chain within a bound."""

    def links(self, pairs):
        entries = {p: Entry(path=p, kind=HARDLINK, target=t) for p, t in pairs}
        entries[b"/f"] = Entry(path=b"/f", kind=FILE)
        calls = []

        def lookup(path):
            calls.append(path)
            return entries.get(path)
        return entries, lookup, calls

    def test_chain_to_a_file(self):
        entries, lookup, calls = self.links([(b"/a", b"/b"), (b"/b", b"/f")])
        self.assertEqual(hardlinks.follow(entries[b"/a"], lookup).path, b"/f")
        self.assertEqual(calls, [b"/b", b"/f"])
        self.assertIs(hardlinks.follow(entries[b"/f"], lookup), entries[b"/f"])

    def test_cycle_refused_at_once(self):
        entries, lookup, calls = self.links([(b"/a", b"/b"), (b"/b", b"/c"), (b"/c", b"/a")])
        self.assertRaisesRegex(hardlinks.LinkError, "cycle", hardlinks.follow, entries[b"/b"], lookup)
        self.assertEqual(calls, [b"/c", b"/a"])

    def test_long_chain_refused_within_the_bound(self):
        n = 10_000
        entries, lookup, calls = self.links(
            [(b"/h%d" % i, b"/h%d" % (i + 1)) for i in range(n)] + [(b"/h%d" % n, b"/f")])
        self.assertRaisesRegex(hardlinks.LinkError, "more than 8", hardlinks.follow,
                               entries[b"/h0"], lookup)
        self.assertEqual(len(calls), hardlinks.MAX_HOPS)
        self.assertEqual(hardlinks.follow(entries[b"/h%d" % (n - 7)], lookup).path, b"/f")

    def test_missing_target(self):
        entries, lookup, _ = self.links([(b"/a", b"/gone")])
        self.assertRaisesRegex(hardlinks.LinkError, "not in the snapshot", hardlinks.follow,
                               entries[b"/a"], lookup)
