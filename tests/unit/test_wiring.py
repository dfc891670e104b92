"""
How the daemon's parts are wired: the queued-job runner base, the service
tree that stops its children in order, the state directory's paths.
"""

import os
import stat

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.runner import QueuedRunner
from gridbackupd.service import OrderedServices, Periodic
from gridbackupd.statedir import StateDir


class ListRunner(QueuedRunner):
    """Rows in a list; a row is run by waiting on its own Deferred."""

    final_states = ("done",)

    def __init__(self):
        super().__init__()
        self.queue = []
        self.states = {}
        self.gates = {}
        self.ran = []
        self.recovered = 0
        self.interrupted = 0

    def add(self, key):
        self.queue.append(key)
        self.states[key] = "queued"
        self.gates[key] = Deferred()
        self.kick()

    def recover_interrupted(self):
        self.recovered += 1

    def next_queued(self):
        return self.queue[0] if self.queue else None

    async def run_one(self, key):
        self.ran.append(key)
        self.states[key] = "running"
        stopped = await self.gates[key]
        if stopped:
            return False
        self.queue.remove(key)
        self.states[key] = "done"
        self.waiters.fire(key, "done")

    def interrupt(self):
        self.interrupted += 1

    def state_of(self, key):
        return self.states.get(key)


class QueuedRunnerTests(SynchronousTestCase):
    def test_rows_run_one_at_a_time_in_order(self):
        runner = ListRunner()
        runner.startService()
        self.assertEqual(runner.recovered, 1)
        runner.add("a")
        runner.add("b")
        self.assertEqual(runner.ran, ["a"])
        waiting = runner.wait("b")
        runner.gates["a"].callback(False)
        self.assertEqual(runner.ran, ["a", "b"])
        self.assertNoResult(waiting)
        runner.gates["b"].callback(False)
        self.assertEqual(self.successResultOf(waiting), "done")
        # A row that has ended answers at once.
        self.assertEqual(self.successResultOf(runner.wait("a")), "done")

    def test_stop_waits_for_the_running_row_and_starts_no_other(self):
        runner = ListRunner()
        runner.startService()
        runner.add("a")
        runner.add("b")
        stopped = runner.stopService()
        self.assertEqual(runner.interrupted, 1)
        self.assertNoResult(stopped)
        runner.gates["a"].callback(True)  # the row put its work down
        self.successResultOf(stopped)
        self.assertEqual(runner.ran, ["a"])
        runner.kick()
        self.assertEqual(runner.ran, ["a"])

    def test_stop_when_idle(self):
        runner = ListRunner()
        runner.startService()
        self.successResultOf(runner.stopService())


class Recorded(Service):
    def __init__(self, name, log, gate=None, fail=False):
        self.setName(name)
        self.log = log
        self.gate = gate
        self.fail = fail

    def stopService(self):
        super().stopService()
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError("cannot stop")
        return self.gate


class OrderedServicesTests(SynchronousTestCase):
    def test_children_stop_last_started_first_one_at_a_time(self):
        log = []
        gate = Deferred()
        parent = OrderedServices()
        Recorded("grid", log).setServiceParent(parent)
        Recorded("jobs", log, fail=True).setServiceParent(parent)
        Recorded("uploader", log, gate=gate).setServiceParent(parent)
        parent.startService()
        stopped = parent.stopService()
        # The uploader has not stopped yet: nothing before it stops.
        self.assertEqual(log, ["uploader"])
        gate.callback(None)
        # A child that fails to stop does not keep the others running.
        self.assertEqual(log, ["uploader", "jobs", "grid"])
        self.successResultOf(stopped)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PeriodicTests(SynchronousTestCase):
    def test_calls_until_stopped(self):
        clock = Clock()
        calls = []
        service = Periodic(clock, 10, lambda: calls.append(clock.seconds()) or succeed(None), now=False)
        service.startService()
        clock.pump([10, 10])
        self.assertEqual(calls, [10, 20])
        service.stopService()
        clock.advance(10)
        self.assertEqual(calls, [10, 20])


class StateDirTests(SynchronousTestCase):
    def test_paths_and_private_files(self):
        root = os.path.abspath(self.mktemp())
        statedir = StateDir(root)
        self.assertEqual(statedir.database, os.path.join(root, "state.sqlite"))
        self.assertEqual(statedir.log_path("s1"), os.path.join(root, "logs", "s1.log"))
        self.assertEqual(statedir.rootcap, os.path.join(root, "private", "rootcap"))
        statedir.make()
        token = statedir.ensure_api_token()
        self.assertEqual(statedir.ensure_api_token(), token)
        self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(statedir.private).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(statedir.api_token).st_mode), 0o600)
        self.assertIsNone(statedir.read_rootcap())
        statedir.write_rootcap("URI:DIR2:a:b")
        self.assertEqual(statedir.read_rootcap(), "URI:DIR2:a:b")
        self.assertEqual(stat.S_IMODE(os.stat(statedir.rootcap).st_mode), 0o600)
