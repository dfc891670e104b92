"""The crash-point registry, its trigger, and where the code passes each point."""

import collections
import os

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import crashpoints
from tests.support import REPO
from tests.support.sourcecalls import calls_of, literal_name


class Exited(Exception):
    pass


def fake_exit(status):
    raise Exited(status)


class TriggerTests(SynchronousTestCase):
    def tearDown(self):
        crashpoints.configure({})

    def test_inert_without_the_testing_switch(self):
        crashpoints.configure({crashpoints.CRASH_AT: "publisher.commit_linked"}, exit=fake_exit)
        crashpoints.reached("publisher.commit_linked")

    def test_exits_at_the_nth_pass(self):
        env = {crashpoints.TESTING: "1", crashpoints.CRASH_AT: "publisher.commit_linked:2"}
        crashpoints.configure(env, exit=fake_exit)
        crashpoints.reached("publisher.commit_linked")
        crashpoints.reached("publisher.log_linked")
        exc = self.assertRaises(Exited, crashpoints.reached, "publisher.commit_linked")
        self.assertEqual(exc.args, (137,))

    def test_first_pass_by_default(self):
        env = {crashpoints.TESTING: "1", crashpoints.CRASH_AT: "scan.log_finished"}
        crashpoints.configure(env, exit=fake_exit)
        self.assertRaises(Exited, crashpoints.reached, "scan.log_finished")

    def test_trace_names_every_point_passed_before_an_exit(self):
        trace = self.mktemp()
        env = {crashpoints.TESTING: "1", crashpoints.TRACE: trace, crashpoints.CRASH_AT: "scan.log_finished:2"}
        crashpoints.configure(env, exit=fake_exit)
        crashpoints.reached("scan.log_finished")
        crashpoints.reached("packer.pack_built")
        self.assertRaises(Exited, crashpoints.reached, "scan.log_finished")
        with open(trace) as f:
            self.assertEqual(f.read().split(), ["scan.log_finished", "packer.pack_built", "scan.log_finished"])
        # Without the testing switch, nothing is written.
        crashpoints.configure({crashpoints.TRACE: trace + ".off"})
        crashpoints.reached("scan.log_finished")
        self.assertFalse(os.path.exists(trace + ".off"))

    def test_unknown_names_are_errors(self):
        env = {crashpoints.TESTING: "1", crashpoints.CRASH_AT: "no.such_point"}
        self.assertRaises(ValueError, crashpoints.configure, env)
        self.assertRaises(ValueError, crashpoints.configure,
                          {crashpoints.TESTING: "1", crashpoints.CRASH_AT: "scan.log_finished:0"})
        crashpoints.configure({})
        self.assertRaises(KeyError, crashpoints.reached, "no.such_point")

    def test_registry_names_its_scenarios(self):
        self.assertGreater(len(crashpoints.POINTS), 20)
        scenarios = {p.scenario for p in crashpoints.POINTS.values()}
        self.assertEqual(scenarios, {"backup", "mount_index", "start", "forget", "forget_uploading", "notify",
                                     "restore", "seal", "convert"})
        for name, point in crashpoints.POINTS.items():
            self.assertEqual(name, point.name)
            self.assertRegex(name, r"^[a-z]+\.[a-z_]+$")


# The scenarios whose points engineer ``crashmatrix`` places (restore, forget
# and prune); drop a scenario from here once its points are in the code.
_NOT_YET_PLACED = {"forget", "restore"}

def _reached_calls():
    """``(name or None, where)`` of every ``crashpoints.reached(...)`` call under src/gridbackupd."""
    for node, where in calls_of("crashpoints", "reached"):
        yield literal_name(node.args[0] if len(node.args) == 1 and not node.keywords else None), where


class PlacementTests(SynchronousTestCase):
    """The registry is true: every point is passed at exactly one place in the code."""

    def test_every_point_is_reached_in_exactly_one_place(self):
        places = collections.defaultdict(list)
        for name, where in _reached_calls():
            self.assertIsNotNone(name, f"{where}: reached() takes one literal name, so that this test sees it")
            self.assertIn(name, crashpoints.POINTS, f"{where}: {name!r} is not a registered crash point")
            places[name].append(where)
        for name, point in crashpoints.POINTS.items():
            if point.scenario in _NOT_YET_PLACED and not places[name]:
                continue
            self.assertEqual(len(places[name]), 1,
                             f"crash point {name!r} is reached at {places[name] or 'no place'}")
        placed = {p.scenario for p in crashpoints.POINTS.values() if places[p.name]}
        self.assertTrue({"backup", "start"} <= placed)


class DocumentedTests(SynchronousTestCase):
    def test_every_point_has_its_invariant_in_the_design_notes(self):
        with open(os.path.join(REPO, "docs", "DESIGN-NOTES.md"), encoding="utf-8") as f:
            notes = f.read()
        self.assertEqual([name for name in crashpoints.POINTS if f"`{name}`" not in notes], [])
