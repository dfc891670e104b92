"""
The crash matrix's scenarios, run back to back in one state directory: for
one crash point, the scenario is run in a daemon that dies there, the
daemon is started again with no crash setting and no new request, and what
it must finish by itself is checked (``Matrix.run``).

A scenario is the point's ``scenario`` in ``gridbackupd.crashpoints``:

- ``backup``: a new file, a backup;
- ``start``: a backup killed at once, then a start that dies on the point;
- ``forget``: two backups (a file changed between them), the first forgotten
  by name with a prune;
- ``forget_uploading``: a backup, then, with uploads paused, a backup of a
  new 4 MB file and at once a forget (with a prune) of the first: the
  forget waits for the scan and rewrites the child's log while its blobs
  still wait to be uploaded (uploads resume after the restart);
- ``restore``: a whole-snapshot restore of the latest snapshot;
- ``notify``: a test notification to the test's webhook;
- ``mount_index``: a backup, finished once its snapshot is also in the
  mount index (which the daemon builds after the snapshot completes);
- ``seal``: with buckets of one second (on-grid layout version 2), a
  backup, another in a later bucket (which seals the first's), then a
  forget of the first with a prune (which rewrites the sealed buckets);
- ``convert``: a new set written as layout version 1 with a backup, then a
  start that converts it to version 2.
"""

import contextlib
import json
import os
import shutil
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from gridbackupd import crashpoints
from gridbackupd.grid.client import TahoeClient
from gridbackupd.grid.layout import COMMITS, SETTINGS, SNAPSHOTS
from gridbackupd.state import db as dbmod
from gridbackupd.statedir import StateDir
from gridbackupd.upload.buckets import PERIOD_ENV, VERSION_ENV
from tests.support.crashrun import PARALLEL, CrashDaemon, NotReached, tahoe_processes, wait_gone
from tests.support.process import free_port
from tests.support.reachcheck import missing_from_root
from tests.support.trees import tree_listing

#: How long a restarted daemon has to finish the work by itself.
SETTLE = 240


class RunFailed(AssertionError):
    """One run of the matrix failed; the state directory is not trusted after it."""


class Matrix:
    """One state directory, one tree, one way to die; the runs of many points."""

    def __init__(self, testcase, base, mode, node_url, hook=None):
        self.testcase = testcase
        self.base = base
        self.mode = mode
        self.node_url = node_url
        # An HTTPReceiver the daemons notify (tests.support.receivers), or None.
        self.hook = hook
        self.serial = 0
        self._new_state()

    def _new_state(self):
        self.serial += 1
        self.dir = os.path.join(self.base, f"set{self.serial}")
        self.tree = os.path.join(self.dir, "data")
        os.makedirs(self.tree)
        self.files = 0
        self.write_file("first")
        # Enough entries for a scan to take a checkpoint (every 256, with
        # checkpoint_interval = 0); tiny ones, inline in the log.
        os.makedirs(os.path.join(self.tree, "many"))
        for i in range(300):
            with open(os.path.join(self.tree, "many", f"{i:03d}"), "wb") as f:
                f.write(b"%d\n" % i)
        self.daemon = CrashDaemon(self.testcase, self.dir, free_port(), self.node_url,
                                  hook=self.hook.url("/hook") if self.hook is not None else None)
        self.known: set[str] = set()  # the snapshots there must be

    @property
    def embedded(self):
        return self.node_url == "embedded"

    def write_file(self, name, size=24_000):
        """A file of fresh content: a new blob, so a new pack, commit and log."""
        self.files += 1
        with open(os.path.join(self.tree, name), "wb") as f:
            f.write(os.urandom(size))

    # -- one run ---------------------------------------------------------------

    async def run(self, point):
        """
        Crash at ``point``, restart, check; RunFailed says what went wrong.
        Returns what was measured (the packs sent again, for a backup).
        """
        scenario = SCENARIOS[point.scenario]
        try:
            packs_before = self.last_pack() if point.scenario == "backup" else None
            trace_mark = self.daemon.trace_mark()
            before = self.daemon.nodes()
            try:
                status, context = await scenario.crash(self, point.name)
            except NotReached as e:
                raise RunFailed(f"never reached: {e}") from None
            if self.mode == "group":
                self.daemon.kill_group()
            if status != crashpoints.EXIT_STATUS:
                raise RunFailed(f"the daemon ended with {status}, not {crashpoints.EXIT_STATUS}")
            if self.mode == "daemon" and before and not any(
                    pid in self.daemon.nodes().values() for pid in before.values()):
                raise RunFailed("the tahoe nodes did not live on after the daemon alone died")
            self.daemon.close()
            self.daemon.start()
            await self.settle(scenario, context)
            measured = "" if packs_before is None else self.check_resent(packs_before, trace_mark)
            await self.check_left_over()
        except BaseException:
            self.abandon()
            raise
        return measured

    async def passes_of_a_backup(self):
        """
        The crash points a clean backup (its daemon's start included)
        passes, in order: the second of the set, an increment as the later
        ones.
        """
        self.daemon.start()
        await self.daemon.ready()
        started = self.daemon.passes()
        self.known.add(await _backup(self.daemon))
        mark = self.daemon.trace_mark()
        self.write_file(f"clean-{self.files}")
        self.known.add(await _backup(self.daemon))
        self.daemon.close()
        return started + self.daemon.passes(mark)

    async def run_twice(self, first, second):
        """
        A backup that dies at ``first`` ("name:n"), a restart that dies at
        ``second`` if it passes there, a clean restart; checked as ``run``
        checks one crash (the packs sent again: at most twice those in flight).
        """
        scenario = SCENARIOS["backup"]
        try:
            packs_before = self.last_pack()
            trace_mark = self.daemon.trace_mark()
            try:
                status, context = await scenario.crash(self, first)
            except NotReached as e:
                raise RunFailed(f"{first} never reached: {e}") from None
            if status != crashpoints.EXIT_STATUS:
                raise RunFailed(f"the daemon ended with {status} at {first}")
            self.daemon.close()
            self.daemon.start(second)

            async def finished():
                listing = await self.snapshots()
                return len(listing) > len(self.known) and all(s["state"] == "complete" for s in listing)

            try:
                status = await self.daemon.died(finished)
                if status != crashpoints.EXIT_STATUS:
                    raise RunFailed(f"the restarted daemon ended with {status} at {second}")
                outcome = f"died at {second}"
            except NotReached:
                outcome = f"finished without passing {second}"
            self.daemon.close()
            self.daemon.start()
            await self.settle(scenario, context)
            measured = self.check_resent(packs_before, trace_mark, crashes=2)
            await self.check_left_over()
        except BaseException:
            self.abandon()
            raise
        return f"{outcome}; {measured}"

    def abandon(self):
        """After a failed run: kill everything of this set, go on with a fresh one."""
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.kill_group()
        if self.daemon.proc is not None:
            self.daemon.close()
        for pid in tahoe_processes(self.daemon.state):
            os.kill(pid, 9)
            wait_gone(pid)
        self._new_state()

    def finish(self):
        """Stop the last daemon; its grid stops with it."""
        if self.daemon.proc is not None:
            self.daemon.close()

    async def settle(self, scenario, context):
        """The restarted daemon finishes the work by itself within SETTLE seconds."""
        deadline = time.monotonic() + SETTLE
        await self.daemon.eventually(self.daemon.ready, "the restart to be ready", timeout=SETTLE)
        after_restart = getattr(scenario, "after_restart", None)
        if after_restart is not None:
            await after_restart(self, context)

        async def finished():
            listing = await self.snapshots()
            failed = [s["id"] for s in listing if s["state"] == "failed"]
            if failed:
                raise RunFailed(f"snapshots failed: {failed}")
            if not all(s["state"] == "complete" for s in listing):
                return False
            return await scenario.done(self, context, {s["id"] for s in listing})

        while not await self._checked(finished):
            if time.monotonic() > deadline:
                listing = await self.snapshots()
                raise RunFailed(f"not finished {SETTLE} s after the restart: "
                                f"{[(s['id'], s['state']) for s in listing]} {context}\n"
                                f"{await self.waits()}")
            if self.daemon.proc.poll() is not None:
                raise RunFailed(f"the restarted daemon exited with {self.daemon.proc.returncode}")
            await deferLater(reactor, 0.25, lambda: None)
        ids = {s["id"] for s in await self.snapshots()}
        if not self.known <= ids:
            raise RunFailed(f"snapshots lost: {sorted(self.known - ids)}")
        await scenario.restored(self, context)
        await self.check_reachable(ids)

    async def waits(self):
        """What the unfinished work waits for, for a failure's message: the
        database's view, the jobs, the restarted daemon's log."""
        from gridbackupd.state import snapshots as snapshotsmod

        lines = []
        with contextlib.closing(dbmod.read_only_connection(StateDir(self.daemon.state).database)) as conn:
            for row in snapshotsmod.uploading_waits(conn):
                lines.append(f"uploading {row[0]}: {row[1]} blobs pending or uploaded, waits for parent {row[2]}")
            lines.append("blob states: " + repr(conn.execute(
                "SELECT state, count(*) FROM blobs GROUP BY state").fetchall()))
        with contextlib.suppress(Exception):
            code, status = await self.daemon.call("GET", "/v1/status")
            lines.append("grid: " + json.dumps(status.get("grid")) + "; upload: " + json.dumps(status.get("upload")))
        with contextlib.suppress(Exception):
            code, jobs = await self.daemon.call("GET", "/v1/jobs")
            lines.append("jobs: " + repr([(j["id"], j["state"], j.get("error")) for j in jobs["jobs"]]))
        with contextlib.suppress(OSError):
            with open(os.path.join(self.daemon.base, "twistd.log"), "rb") as f:
                text = f.read().decode("utf-8", "replace")
            since = text.rsplit("--- crash matrix: start", 1)[-1]
            lines.append("the log since the restart, its end:\n" + "\n".join(since.splitlines()[-60:]))
        return "\n".join(lines)

    def last_pack(self):
        """The newest pack row's id (0 for none): the packs of a run come after it."""
        if not os.path.exists(StateDir(self.daemon.state).database):
            return 0
        with contextlib.closing(dbmod.read_only_connection(StateDir(self.daemon.state).database)) as conn:
            return conn.execute("SELECT coalesce(max(id), 0) FROM packs").fetchone()[0]

    def check_resent(self, packs_before, trace_mark, crashes=1):
        """
        The packs sent to the grid across the crash and the restart, less the
        packs the backup's blobs are in, are at most the packs in flight
        (at each crash).
        """
        sent = self.daemon.passes(trace_mark).count("uploader.pack_uploaded")
        with contextlib.closing(dbmod.read_only_connection(StateDir(self.daemon.state).database)) as conn:
            needed = conn.execute("SELECT count(DISTINCT pack_id) FROM blobs WHERE pack_id > ?",
                                  (packs_before,)).fetchone()[0]
        if needed < 1:
            raise RunFailed("the backup's new file is in no new pack")
        if sent - needed > PARALLEL * crashes:
            raise RunFailed(f"{sent} packs sent for {needed} needed: more again than the "
                            f"{PARALLEL} in flight at each of {crashes} crashes (of at most pack_size each)")
        return f"{sent - needed} of {sent} packs sent again"

    async def _checked(self, check):
        try:
            return await check()
        except RunFailed:
            raise
        except Exception:
            return False

    async def snapshots(self):
        code, body = await self.daemon.call("GET", "/v1/snapshots?limit=1000")
        if code != 200:
            raise AssertionError(f"GET /v1/snapshots: {code} {body}")
        return body["snapshots"]

    async def check_reachable(self, ids):
        with open(os.path.join(self.daemon.state, "private", "rootcap")) as f:
            rootcap = f.read().strip()
        client = TahoeClient(self.current_node_url())
        try:
            problems = await missing_from_root(client, rootcap, sorted(ids),
                                               os.path.join(self.dir, f"logs-{time.monotonic_ns()}"))
        finally:
            await client.close()
        if problems:
            raise RunFailed("not reachable from the root cap: " + "; ".join(problems))

    def current_node_url(self):
        if not self.embedded:
            return self.node_url
        with open(os.path.join(self.daemon.state, "grid", "client", "node.url")) as f:
            return f.read().strip()

    async def check_left_over(self):
        """Only the restarted daemon's nodes run; none once it stopped."""
        if self.embedded:
            nodes = set(self.daemon.nodes().values())
            extra = set(tahoe_processes(self.daemon.state)) - nodes
            if extra:
                raise RunFailed(f"tahoe processes left over beside the daemon's nodes: {sorted(extra)}")
        self.daemon.close()
        deadline = time.monotonic() + 10
        while tahoe_processes(self.daemon.state):
            if time.monotonic() > deadline:
                raise RunFailed(f"tahoe processes left over after a stop: {tahoe_processes(self.daemon.state)}")
            await deferLater(reactor, 0.1, lambda: None)

    async def restore_into(self, name):
        """Ask for a restore of the latest snapshot; its id and the target."""
        target = os.path.join(self.dir, name)
        code, body = await self.daemon.call("POST", "/v1/restores", {"snapshot": "latest", "target": target})
        if code != 202:
            raise AssertionError(f"POST /v1/restores: {code} {body}")
        return body["id"], target

    async def restore_state(self, restore_id):
        code, body = await self.daemon.call("GET", f"/v1/restores/{restore_id}")
        return body if code == 200 else None

    def compare(self, target):
        restored = os.path.join(target, self.tree.lstrip("/"))
        if not os.path.isdir(restored):
            raise RunFailed(f"nothing restored under {target}")
        if tree_listing(restored) != tree_listing(self.tree):
            raise RunFailed(f"the restore differs from the tree: {sorted(os.listdir(restored))}")
        shutil.rmtree(target)


async def _post(daemon, path, body=None):
    code, answer = await daemon.call("POST", path, body)
    if code != 202:
        raise AssertionError(f"POST {path}: {code} {answer}")
    return answer


async def _call_ok(daemon, method, path):
    code, answer = await daemon.call(method, path)
    if code != 200:
        raise AssertionError(f"{method} {path}: {code} {answer}")
    return answer


async def _ready_or_dead(daemon):
    """Wait for the daemon to be ready; False if it died first."""
    try:
        await daemon.ready()
        return True
    except AssertionError:
        if daemon.proc.poll() is not None:
            return False
        raise


async def _backup(daemon):
    """A backup to completion, in a daemon that must not die on it."""
    snapshot_id = (await _post(daemon, "/v1/backups"))["id"]
    await daemon.complete(snapshot_id)
    return snapshot_id


async def _check_latest(matrix, name):
    """The latest snapshot restores byte for byte (it is the tree as it is now)."""
    restore_id, target = await matrix.restore_into(f"check-{name}")

    async def done():
        state = await matrix.restore_state(restore_id)
        return state and state["state"] in ("done", "failed") and state

    state = await matrix.daemon.eventually(done, "the check's restore", timeout=SETTLE)
    if state["state"] != "done":
        raise RunFailed(f"the restore of the latest snapshot failed: {state['errors']}")
    matrix.compare(target)


class Backup:
    @staticmethod
    async def crash(matrix, point, also=None):
        matrix.write_file(f"backup-{matrix.files}")
        matrix.daemon.start(point)
        context = {}
        if await _ready_or_dead(matrix.daemon):
            try:
                context["id"] = (await _post(matrix.daemon, "/v1/backups"))["id"]
            except Exception:
                if matrix.daemon.proc.poll() is None:
                    raise

        async def finished():
            code, body = await matrix.daemon.call("GET", f"/v1/snapshots/{context['id']}")
            return code == 200 and body["complete"] and (also is None or await also(context["id"]))

        return await matrix.daemon.died(finished), context

    @staticmethod
    async def done(matrix, context, ids):
        new = ids - matrix.known
        if len(new) != 1:
            raise RunFailed(f"one new snapshot expected, found {sorted(new)}")
        context["new"] = new.pop()
        return True

    @staticmethod
    async def restored(matrix, context):
        matrix.known.add(context["new"])
        await _check_latest(matrix, context["new"])


class Start(Backup):
    @staticmethod
    async def crash(matrix, point):
        matrix.write_file(f"start-{matrix.files}")
        matrix.daemon.start()
        await matrix.daemon.ready()
        await _post(matrix.daemon, "/v1/backups")
        await deferLater(reactor, 0.2, lambda: None)
        if matrix.mode == "group":
            matrix.daemon.kill_group()
        else:
            matrix.daemon.kill9()
        matrix.daemon.close()
        matrix.daemon.start(point)

        async def finished():
            status = await matrix.daemon.call("GET", "/v1/status")
            return status[0] == 200 and status[1]["state"] == "ready" and all(
                s["state"] == "complete" for s in await matrix.snapshots())

        return await matrix.daemon.died(finished), {}


class Forget:
    @staticmethod
    async def crash(matrix, point):
        matrix.daemon.start(point)
        await matrix.daemon.ready()
        matrix.write_file(f"kept-{matrix.files}")
        matrix.write_file("changing", size=48_000)
        first = await _backup(matrix.daemon)
        matrix.write_file("changing", size=48_000)
        second = await _backup(matrix.daemon)
        matrix.known.update((first, second))
        answer = await _post(matrix.daemon, "/v1/forget", {"snapshots": [first], "prune": True})
        context = {"forget": first, "kept": second, "job": answer["job"]["id"]}
        matrix.known.discard(first)

        async def finished():
            code, job = await matrix.daemon.call("GET", f"/v1/jobs/{context['job']}")
            return code == 200 and job["state"] in ("done", "failed")

        return await matrix.daemon.died(finished), context

    @staticmethod
    async def done(matrix, context, ids):
        if context["forget"] in ids:
            return False
        code, job = await matrix.daemon.call("GET", f"/v1/jobs/{context['job']}")
        if job["state"] == "failed":
            raise RunFailed(f"the forget job failed: {job['error']}")
        # Its prune too: no job left to run.
        code, jobs = await matrix.daemon.call("GET", "/v1/jobs")
        return all(j["state"] in ("done", "failed") for j in jobs["jobs"])

    @staticmethod
    async def restored(matrix, context):
        await _check_latest(matrix, context["kept"])


class ForgetUploading(Forget):
    @staticmethod
    async def crash(matrix, point):
        matrix.daemon.start(point)
        await matrix.daemon.ready()
        matrix.write_file(f"parent-{matrix.files}")
        first = await _backup(matrix.daemon)
        # A child still uploading when the forget, queued behind its scan,
        # rewrites its log (its parent is forgotten): uploads are paused, so
        # that its blobs wait and no pack is in flight when the daemon dies.
        # (Seen twice in CI with a pack in flight: on the shared grid, whose
        # nodes outlive the daemon, the restart's upload of the same pack
        # kept failing with UploadUnhappinessError, "placed on only 2
        # servers", and could not finish in time.  Why is not known: a PUT
        # cut off mid-body or after it and sent again goes through at once
        # on a fresh grid.)
        await _call_ok(matrix.daemon, "POST", "/v1/uploads/pause")
        matrix.write_file(f"child-{matrix.files}", size=4_000_000)
        child = (await _post(matrix.daemon, "/v1/backups"))["id"]
        answer = await _post(matrix.daemon, "/v1/forget", {"snapshots": [first], "prune": True})
        context = {"forget": first, "kept": child, "job": answer["job"]["id"]}
        matrix.known.add(child)

        async def finished():
            code, job = await matrix.daemon.call("GET", f"/v1/jobs/{context['job']}")
            return code == 200 and job["state"] in ("done", "failed")

        return await matrix.daemon.died(finished), context

    @staticmethod
    async def after_restart(matrix, context):
        """The pause is kept across the restart: the child's blobs go now."""
        await _call_ok(matrix.daemon, "POST", "/v1/uploads/resume")


class Restore:
    @staticmethod
    async def crash(matrix, point):
        matrix.daemon.start(point)
        await matrix.daemon.ready()
        if not matrix.known:
            matrix.known.add(await _backup(matrix.daemon))
        restore_id, target = await matrix.restore_into(f"restore-{matrix.files}-{matrix.serial}")
        matrix.files += 1
        context = {"restore": restore_id, "target": target}

        async def finished():
            state = await matrix.restore_state(restore_id)
            return state and state["state"] in ("done", "failed")

        return await matrix.daemon.died(finished), context

    @staticmethod
    async def done(matrix, context, ids):
        state = await matrix.restore_state(context["restore"])
        if state["state"] in ("failed", "cancelled"):
            raise RunFailed(f"the interrupted restore ended {state['state']}: {state['errors']}")
        return state["state"] == "done"

    @staticmethod
    async def restored(matrix, context):
        matrix.compare(context["target"])


class Notify:
    """
    A test notification to the webhook (``POST /v1/notifications/test``):
    the daemon dies once it is recorded, or once the webhook took it; the
    restart sends it (again) by itself, and records it sent.
    """

    @staticmethod
    async def crash(matrix, point):
        if matrix.hook is None:
            raise RunFailed("the notify scenario needs a Matrix with a webhook")
        matrix.daemon.start(point)
        await matrix.daemon.ready()
        heard = len(matrix.hook.received.items)
        # The runs of one way to die share a state directory: a test
        # notification of an earlier run is not this one's.
        context = {"heard": heard, "after": max((n["id"] for n in await Notify.tests(matrix, 0)), default=0)}
        asked = Deferred.fromCoroutine(matrix.daemon.call("POST", "/v1/notifications/test"))
        asked.addErrback(lambda _: None)  # the daemon dies under the request

        async def finished():
            tests = await Notify.tests(matrix, context["after"])
            return tests and all(d["state"] != "pending" for d in tests[0]["deliveries"].values())

        return await matrix.daemon.died(finished), context

    @staticmethod
    async def tests(matrix, after):
        """The daemon's test notifications newer than id ``after``, newest first."""
        code, doc = await matrix.daemon.call("GET", "/v1/notifications")
        if code != 200:
            raise RunFailed(f"GET /v1/notifications: {code} {doc}")
        return [n for n in doc["notifications"] if n["event"] == "test" and n["id"] > after]

    @staticmethod
    async def done(matrix, context, ids):
        tests = await Notify.tests(matrix, context["after"])
        if not tests:
            raise RunFailed("the test notification was not recorded")
        states = {d["state"] for d in tests[0]["deliveries"].values()}
        if "failed" in states:
            raise RunFailed(f"the test notification failed: {tests[0]['deliveries']}")
        if states == {"sent"}:
            context["time"] = tests[0]["time"]
            return True
        return False

    @staticmethod
    async def restored(matrix, context):
        bodies = [json.loads(r["body"]) for r in matrix.hook.received.items[context["heard"]:]]
        if not any(b["event"] == "test" and b["time"] == context["time"] for b in bodies):
            raise RunFailed(f"the webhook never got the test notification: {bodies}")


def _mount_indexed(matrix, snapshot_id):
    """Whether the daemon's mount index holds the snapshot."""
    from gridbackupd.state import mountindex

    try:
        conn = mountindex.open_index(os.path.join(matrix.daemon.state, "mount", "index.sqlite"), readonly=True)
    except mountindex.IndexMissing:
        return False
    try:
        return snapshot_id in {row[0] for row in mountindex.snapshots(conn)}
    finally:
        conn.close()


class MountIndex(Backup):
    @staticmethod
    async def crash(matrix, point, also=None):
        async def indexed_and_alive(snapshot_id):
            # The index is built in a worker thread: its commit is seen a
            # moment before the crash point right after it ends the process.
            if not _mount_indexed(matrix, snapshot_id):
                return False
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if matrix.daemon.proc.poll() is not None:
                    return False
                await deferLater(reactor, 0.1, lambda: None)
            return True

        return await Backup.crash(matrix, point, also=indexed_and_alive)

    @staticmethod
    async def restored(matrix, context):
        await Backup.restored(matrix, context)

        async def indexed():
            return _mount_indexed(matrix, context["new"])

        await matrix.daemon.eventually(indexed, "the snapshot in the mount index", timeout=SETTLE)


class Seal:
    @staticmethod
    async def crash(matrix, point):
        matrix.daemon.extra_env = {PERIOD_ENV: "1"}
        matrix.daemon.start(point)
        context: dict = {}
        try:
            await matrix.daemon.ready()
            matrix.write_file(f"sealed-{matrix.files}")
            context["first"] = await _backup(matrix.daemon)
            # The next backup's bucket is a later one: a real daemon's wall clock.
            await deferLater(reactor, 1.1, lambda: None)
            matrix.write_file(f"sealed-{matrix.files}")
            context["second"] = await _backup(matrix.daemon)
            answer = await _post(matrix.daemon, "/v1/forget", {"snapshots": [context["first"]], "prune": True})
            context["job"] = answer["job"]["id"]
        except Exception:
            if matrix.daemon.proc.poll() is None:
                raise

        async def finished():
            if "job" not in context:
                return False
            code, job = await matrix.daemon.call("GET", f"/v1/jobs/{context['job']}")
            return code == 200 and job["state"] in ("done", "failed")

        return await matrix.daemon.died(finished), context

    @staticmethod
    async def done(matrix, context, ids):
        if "job" in context:
            if not await Forget.done(matrix, {"forget": context["first"], **context}, ids):
                return False
            ids = ids - {context["first"]}
        matrix.known = set(ids)
        return True

    @staticmethod
    async def restored(matrix, context):
        matrix.daemon.extra_env = {}
        await _check_latest(matrix, f"seal-{matrix.files}")


class Convert:
    @staticmethod
    async def crash(matrix, point):
        matrix._new_state()
        matrix.daemon.extra_env = {VERSION_ENV: "1"}
        matrix.daemon.start()
        # A new set: its embedded grid is made first, slow on a loaded machine.
        await matrix.daemon.eventually(matrix.daemon.ready, "a new set's daemon to be ready", timeout=3 * SETTLE)
        matrix.known.add(await _backup(matrix.daemon))
        matrix.daemon.close()
        matrix.daemon.extra_env = {}
        matrix.write_file(f"converted-{matrix.files}")
        matrix.daemon.start(point)

        async def finished():
            status = await matrix.daemon.call("GET", "/v1/status")
            return status[0] == 200 and status[1]["state"] == "ready"

        return await matrix.daemon.died(finished), {}

    @staticmethod
    async def done(matrix, context, ids):
        if ids != matrix.known:
            raise RunFailed(f"snapshots {sorted(ids)} after the conversion, not {sorted(matrix.known)}")
        with open(os.path.join(matrix.daemon.state, "private", "rootcap")) as f:
            rootcap = f.read().strip()
        client = TahoeClient(matrix.current_node_url())
        try:
            root = await client.list_dir(rootcap)
            settings = json.loads(await client.download(root[SETTINGS].cap))
        finally:
            await client.close()
        return settings["version"] == 2 and SNAPSHOTS not in root and COMMITS not in root

    @staticmethod
    async def restored(matrix, context):
        await _backup(matrix.daemon)
        await _check_latest(matrix, f"convert-{matrix.files}")


SCENARIOS = {"backup": Backup, "mount_index": MountIndex, "start": Start, "forget": Forget,
             "forget_uploading": ForgetUploading, "restore": Restore, "seal": Seal, "convert": Convert,
             "notify": Notify}
