"""The fault-point registry, its trigger, where the code names each point, and a pack write that fails."""

import collections
import errno
import hashlib
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import faultpoints
from gridbackupd.errors import DiskFull, one_line
from gridbackupd.state.queue import QueuedBlob
from gridbackupd.upload.packer import build_pack
from tests.support.sourcecalls import calls_of, literal_name


def arm(testcase, spec):
    faultpoints.configure({faultpoints.TESTING: "1", faultpoints.FAULT_AT: spec})
    testcase.addCleanup(faultpoints.configure, {})


class TriggerTests(SynchronousTestCase):
    def tearDown(self):
        faultpoints.configure({})

    def test_inert_without_the_testing_switch(self):
        faultpoints.configure({faultpoints.FAULT_AT: "scan.log_write:ENOSPC"})
        out = io.BytesIO()
        self.assertIs(faultpoints.writes("scan.log_write", out), out)

    def test_only_the_armed_point_is_wrapped(self):
        arm(self, "scan.log_write:ENOSPC")
        out = io.BytesIO()
        self.assertIs(faultpoints.writes("packer.pack_write", out), out)
        self.assertIsNot(faultpoints.writes("scan.log_write", out), out)

    def test_the_nth_write_fails_once(self):
        arm(self, "packer.pack_write:EDQUOT:3")
        out = io.BytesIO()
        wrapped = faultpoints.writes("packer.pack_write", out)
        wrapped.write(b"one")
        wrapped.write(b"two")
        with self.assertRaises(OSError) as caught:
            wrapped.write(b"three")
        self.assertEqual(caught.exception.errno, errno.EDQUOT)
        wrapped.write(b"four")
        # Everything but write is the file's own.
        self.assertEqual(wrapped.getvalue(), b"onetwofour")
        self.assertEqual(wrapped.tell(), 10)

    def test_the_first_write_by_default(self):
        arm(self, "scan.log_write:ENOSPC")
        wrapped = faultpoints.writes("scan.log_write", io.BytesIO())
        with self.assertRaises(OSError) as caught:
            wrapped.write(b"x")
        self.assertEqual(caught.exception.errno, errno.ENOSPC)
        wrapped.write(b"y")

    def test_bad_settings_are_errors(self):
        for spec in ("no.such_point:ENOSPC", "scan.log_write", "scan.log_write:NOSPC",
                     "scan.log_write:errorcode", "scan.log_write:ENOSPC:0"):
            self.assertRaises(ValueError, faultpoints.configure,
                              {faultpoints.TESTING: "1", faultpoints.FAULT_AT: spec})
        faultpoints.configure({})
        self.assertRaises(KeyError, faultpoints.writes, "no.such_point", io.BytesIO())


def _writes_calls():
    """``(name or None, where)`` of every ``faultpoints.writes(...)`` call under src/gridbackupd."""
    for node, where in calls_of("faultpoints", "writes"):
        yield literal_name(node.args[0] if node.args else None), where


class PlacementTests(SynchronousTestCase):
    def test_every_point_is_named_in_exactly_one_place(self):
        places = collections.defaultdict(list)
        for name, where in _writes_calls():
            self.assertIsNotNone(name, f"{where}: writes() takes a literal name, so that this test sees it")
            self.assertIn(name, faultpoints.POINTS, f"{where}: {name!r} is not a registered fault point")
            places[name].append(where)
        for name in faultpoints.POINTS:
            self.assertEqual(len(places[name]), 1, f"fault point {name!r} is named at {places[name] or 'no place'}")


class PackWriteTests(SynchronousTestCase):
    """A pack that cannot be written: one line that says so, and no half-written file left."""

    def test_a_full_disk_while_writing_a_pack(self):
        source = self.mktemp()
        packs = os.path.abspath(self.mktemp())
        data = os.urandom(5000)
        with open(source, "wb") as f:
            f.write(data)
        blob = QueuedBlob(hashlib.sha256(data).hexdigest(), len(data), os.fsencode(source), 0)
        arm(self, "packer.pack_write:ENOSPC")
        with self.assertRaises(DiskFull) as caught:
            build_pack([blob], packs)
        self.assertEqual(one_line(caught.exception), f"no space left on device while writing a pack in {packs}")
        self.assertEqual(os.listdir(packs), [])
        # The next try has space again.
        built = build_pack([blob], packs)
        self.assertEqual(os.listdir(packs), [built.name])
