"""The crash-point registry and its trigger."""

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd import crashpoints


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
        self.assertEqual(scenarios, {"backup", "start", "forget", "restore"})
        for name, point in crashpoints.POINTS.items():
            self.assertEqual(name, point.name)
            self.assertRegex(name, r"^[a-z]+\.[a-z_]+$")
