"""A restore never writes outside its target, whatever the snapshot says."""

import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.model import DIR, FILE, SYMLINK, Entry
from gridbackupd.restorefs import TargetWriter, UnsafePath, components


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
