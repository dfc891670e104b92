"""
The commands around a scan: a background child cannot hold the scan, and a
command that runs too long is killed with its whole process group.
"""

import os
import signal

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.scan.hooks import run_command
from tests.support.crashrun import wait_gone
from tests.support.process import alive


class RunCommandTests(SynchronousTestCase):
    def pid_file(self):
        return os.path.abspath(self.mktemp())

    def read_pid(self, path):
        with open(path) as f:
            pid = int(f.read())
        self.addCleanup(self.kill, pid)
        return pid

    def kill(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def test_a_background_child_with_open_output_does_not_hold_it(self):
        # The child keeps the command's stdout and stderr open for ten
        # minutes; reading them through pipes waited for it.
        pids = self.pid_file()
        done = run_command(f"sleep 600 & echo $! > {pids}; echo dumped; echo warned >&2", {})
        self.assertEqual((done.ok, done.output), (True, ("dumped", "warned")))
        self.assertTrue(alive(self.read_pid(pids)))

    def test_a_command_past_its_time_is_killed_with_its_group(self):
        pids = self.pid_file()
        done = run_command(f"sleep 600 & echo $! > {pids}; echo begun; wait", {}, timeout=0.5)
        self.assertFalse(done.ok)
        self.assertEqual(done.why, "did not finish within 0.5 s (its process group was killed)")
        self.assertEqual(done.output, ("begun",))
        child = self.read_pid(pids)
        wait_gone(child)
        self.assertFalse(alive(child))

    def test_a_failure_names_its_status_and_last_error_line(self):
        done = run_command("echo one >&2; echo two >&2; exit 3", {"X": "1"})
        self.assertEqual(done.why, "failed (exit status 3): two")
        done = run_command("kill -TERM $$", {})
        self.assertEqual(done.why, "failed (killed by signal 15)")

    def test_the_environment_reaches_the_command(self):
        done = run_command('test "$GRIDBACKUP_SNAPSHOT" = s1 || exit 9', {"GRIDBACKUP_SNAPSHOT": "s1"})
        self.assertTrue(done.ok, done.why)

    def test_no_limit_at_zero(self):
        self.assertTrue(run_command("true", {}, timeout=0).ok)
