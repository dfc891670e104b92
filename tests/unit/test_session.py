"""
Console sign-in codes and sessions (issue 14): a code works once and for
5 minutes, a session for 12 hours, on the monotonic clock.
"""

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.api import session as sessionmod
from gridbackupd.api.console import host_name


class FakeClocks:
    def __init__(self):
        self.mono = 1000.0
        self.wall_time = 1.8e9

    def monotonic(self):
        return self.mono

    def wall(self):
        return self.wall_time


class SessionsTests(SynchronousTestCase):
    def setUp(self):
        self.clocks = FakeClocks()
        self.sessions = sessionmod.Sessions(self.clocks.monotonic, self.clocks.wall)

    def test_code_works_once(self):
        code, expires = self.sessions.new_code()
        self.assertEqual(expires, self.clocks.wall_time + 300)
        first = self.sessions.exchange(code)
        self.assertIsNotNone(first)
        self.assertIs(self.sessions.find(first.key), first)
        self.assertIsNone(self.sessions.exchange(code))

    def test_code_expires_after_five_minutes(self):
        code, _ = self.sessions.new_code()
        self.clocks.mono += 300.5
        self.assertIsNone(self.sessions.exchange(code))

    def test_code_within_five_minutes(self):
        code, _ = self.sessions.new_code()
        self.clocks.mono += 299
        self.assertIsNotNone(self.sessions.exchange(code))

    def test_wrong_code(self):
        self.sessions.new_code()
        self.assertIsNone(self.sessions.exchange("not-a-code"))
        self.assertIsNone(self.sessions.exchange(""))

    def test_session_expires_after_twelve_hours(self):
        found = self.sessions.open()
        self.clocks.mono += 12 * 3600 - 1
        self.assertIsNotNone(self.sessions.find(found.key))
        self.clocks.mono += 2
        self.assertIsNone(self.sessions.find(found.key))

    def test_wall_clock_set_back_does_not_stretch_a_session(self):
        found = self.sessions.open()
        self.clocks.wall_time -= 86400
        self.clocks.mono += 12 * 3600 + 1
        self.assertIsNone(self.sessions.find(found.key))

    def test_logout(self):
        found = self.sessions.open()
        self.sessions.close(found.key)
        self.assertIsNone(self.sessions.find(found.key))

    def test_csrf(self):
        found = self.sessions.open()
        self.assertTrue(sessionmod.csrf_matches(found, found.csrf))
        self.assertFalse(sessionmod.csrf_matches(found, found.csrf + "x"))
        self.assertFalse(sessionmod.csrf_matches(found, None))
        self.assertFalse(sessionmod.csrf_matches(found, ""))

    def test_bounded(self):
        codes = [self.sessions.new_code()[0] for _ in range(sessionmod.MAX_LIVE + 10)]
        self.assertIsNone(self.sessions.exchange(codes[0]))
        self.assertIsNotNone(self.sessions.exchange(codes[-1]))


class HostNameTests(SynchronousTestCase):
    def test_names(self):
        self.assertEqual(host_name("127.0.0.1:7234"), "127.0.0.1")
        self.assertEqual(host_name("LocalHost"), "localhost")
        self.assertEqual(host_name("[::1]:7234"), "::1")
        self.assertEqual(host_name("[::1]"), "::1")
        self.assertEqual(host_name("evil.example:7234"), "evil.example")
        self.assertEqual(host_name(None), "")
