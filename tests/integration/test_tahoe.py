"""
Tests of the Tahoe client (gridbackupd.grid: client, answers, retry).

``TahoeContractMixin`` holds the checks of what crosses the wire, written
once and run twice: against the in-memory fake (``FakeTahoeContractTests``)
and against a real grid (``RealTahoeContractTests``), so that the fake
cannot drift from Tahoe.  The fake-only tests below them drive retries,
backoff and failure injection with a ``task.Clock``.
"""

import io
import os

from twisted.internet.defer import Deferred, succeed
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer

from gridbackupd.errors import (
    TahoeBadRequest,
    TahoeBadResponse,
    TahoeError,
    TahoeNotFound,
    TahoeServerError,
    TahoeSharesMissing,
    TahoeUnavailable,
    TahoeUnhappy,
)
from gridbackupd.grid.answers import DirChild, error_from_response, summarize_body
from gridbackupd.grid.client import TahoeClient
from gridbackupd.grid.retry import RetryPolicy
from gridbackupd.testing.fake_tahoe import FakeTahoe, fake_client
from tests.support.sharedgrid import shared_node_url

# Well-formed caps of objects that exist nowhere.
MISSING_CHK = "URI:CHK:" + "a" * 26 + ":" + "b" * 51 + "a:2:3:300000"
MISSING_DIR = "URI:DIR2:" + "a" * 26 + ":" + "b" * 51 + "a"

NAMES = [
    "plain",
    "with space",
    "slash/inside",
    "ünïcødé ☃",
    "percent%41",
    "question?mark",
    "hash#tag",
    "semi;colon&amp=",
    "plus+sign",
]


def assert_no_full_cap(testcase, text, caps):
    for cap in caps:
        testcase.assertNotIn(cap, text)


class TahoeContractMixin:
    """
    Checks that hold for the fake and for a real Tahoe 1.20 node alike.

    ``get_client()`` gives a Deferred TahoeClient without retries (a retry
    would hide a difference) and with ``min_servers = 3``.
    """

    def get_client(self) -> Deferred:
        raise NotImplementedError

    def temp_file(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    # -- files -------------------------------------------------------------

    async def test_upload_bytes_round_trip(self):
        client = await self.get_client()
        for data in [b"", b"tiny", os.urandom(55), os.urandom(56), os.urandom(70_000)]:
            cap = await client.upload_bytes(data)
            self.assertTrue(cap.startswith("URI:"), cap[:12])
            self.assertEqual(cap, cap.strip())
            self.assertEqual(await client.download(cap), data)
        # Up to 55 bytes the data lives in the cap itself.
        self.assertTrue((await client.upload_bytes(b"tiny")).startswith("URI:LIT:"))
        self.assertTrue((await client.upload_bytes(b"x" * 56)).startswith("URI:CHK:"))

    async def test_upload_file_round_trip(self):
        client = await self.get_client()
        data = os.urandom(300_000)
        cap = await client.upload_file(self.temp_file(data))
        self.assertTrue(cap.startswith("URI:CHK:"))
        self.assertTrue(cap.endswith(":300000"))
        self.assertEqual(await client.download(cap), data)
        out = io.BytesIO(b"prefix")
        out.seek(0, io.SEEK_END)
        self.assertEqual(await client.download_to(cap, out), len(data))
        self.assertEqual(out.getvalue(), b"prefix" + data)

    async def test_identical_bytes_give_identical_caps(self):
        client = await self.get_client()
        data = os.urandom(20_000)
        first = await client.upload_bytes(data)
        self.assertEqual(await client.upload_bytes(data), first)
        self.assertEqual(await client.upload_file(self.temp_file(data)), first)
        self.assertNotEqual(await client.upload_bytes(data + b"!"), first)

    async def test_ranged_download(self):
        client = await self.get_client()
        data = os.urandom(300_000)
        cap = await client.upload_bytes(data)
        size = len(data)
        for offset, length in [
            (0, 1000),  # start
            (150_000, 4096),  # middle
            (size - 777, 777),  # end
            (size - 1, 1),
            (0, size),
            (123_456, None),  # to the end
        ]:
            expected = data[offset:] if length is None else data[offset:offset + length]
            got = await client.download(cap, offset, length)
            self.assertEqual(len(got), len(expected), (offset, length))
            self.assertEqual(got, expected, (offset, length))
        self.assertEqual(await client.download(cap, None, 10), data[:10])
        self.assertEqual(await client.download(cap, 10, 0), b"")

    async def test_range_past_the_end(self):
        client = await self.get_client()
        data = os.urandom(100_000)
        cap = await client.upload_bytes(data)
        # Tahoe cuts a range that runs past the end short: we refuse that.
        with self.assertRaises(TahoeBadResponse):
            await client.download(cap, len(data) - 10, 20)
        # A range that starts past the end: 416.
        with self.assertRaises(TahoeBadRequest) as caught:
            await client.download(cap, len(data), 10)
        self.assertEqual(caught.exception.status, 416)

    async def test_check(self):
        client = await self.get_client()
        cap = await client.upload_bytes(os.urandom(5000))
        result = await client.check(cap)
        self.assertTrue(result["results"]["healthy"])
        self.assertGreaterEqual(result["results"]["count-shares-good"],
                                result["results"]["count-shares-needed"])

    # -- directories -------------------------------------------------------

    async def test_mutable_directory(self):
        client = await self.get_client()
        root = await client.mkdir()
        self.assertTrue(root.startswith("URI:DIR2:"))
        self.assertEqual(await client.list_dir(root), {})

        data = os.urandom(10_000)
        filecap = await client.upload_bytes(data)
        litcap = await client.upload_bytes(b"lit")
        sub = await client.mkdir()
        children = {name: filecap for name in NAMES}
        children["lit"] = litcap
        children["sub"] = sub
        await client.set_children(root, children)

        listing = await client.list_dir(root)
        self.assertEqual(set(listing), set(children))
        for name in NAMES:
            child = listing[name]
            self.assertEqual((child.name, child.kind, child.size, child.mutable),
                             (name, "filenode", 10_000, False))
            self.assertEqual(child.ro_uri, filecap)
            self.assertIsNone(child.rw_uri)
            self.assertEqual(await client.child_cap(root, name), filecap)
        self.assertEqual(listing["lit"].size, 3)
        subchild = listing["sub"]
        self.assertEqual((subchild.kind, subchild.size, subchild.mutable), ("dirnode", None, True))
        self.assertEqual(subchild.rw_uri, sub)
        self.assertEqual(subchild.cap, sub)
        self.assertTrue(subchild.ro_uri.startswith("URI:DIR2-RO:"))
        self.assertEqual(await client.child_cap(root, "sub"), sub)

        # Through a read cap: the same children, no write caps.
        await client.set_children(sub, {"x": litcap})
        readonly = await client.list_dir(subchild.ro_uri)
        self.assertEqual(readonly["x"].ro_uri, litcap)
        with self.assertRaises(TahoeBadRequest):
            await client.set_children(subchild.ro_uri, {"y": litcap})
        with self.assertRaises(TahoeBadRequest):
            await client.unlink(subchild.ro_uri, "x")

        await client.unlink(root, "slash/inside")
        await client.unlink(root, "sub")
        self.assertIsNone(await client.child_cap(root, "slash/inside"))
        self.assertEqual(set(await client.list_dir(root)),
                         set(children) - {"slash/inside", "sub"})

    async def test_set_children_overwrite(self):
        client = await self.get_client()
        root = await client.mkdir()
        one = await client.upload_bytes(b"one")
        two = await client.upload_bytes(b"two")
        await client.set_children(root, {"a": one})
        await client.set_children(root, {"a": two})
        self.assertEqual(await client.child_cap(root, "a"), two)
        with self.assertRaises(TahoeBadRequest) as caught:
            await client.set_children(root, {"a": one}, overwrite=False)
        self.assertEqual(caught.exception.status, 409)
        await client.set_children(root, {"b": one}, overwrite=False)
        self.assertEqual(await client.child_cap(root, "a"), two)
        self.assertEqual(await client.child_cap(root, "b"), one)

    async def test_mkdir_immutable(self):
        client = await self.get_client()
        filecap = await client.upload_bytes(os.urandom(4000))
        litcap = await client.upload_bytes(b"small")
        inner = await client.mkdir_immutable({"f": filecap})
        self.assertTrue(inner.startswith("URI:DIR2-CHK:"))
        outer = await client.mkdir_immutable({"pack 1": filecap, "index": litcap, "inner": inner})
        self.assertTrue(outer.startswith("URI:DIR2-CHK:"))
        # Same children, same cap: a retried commit converges.
        self.assertEqual(await client.mkdir_immutable({"f": filecap}), inner)

        listing = await client.list_dir(outer)
        self.assertEqual(set(listing), {"pack 1", "index", "inner"})
        self.assertEqual((listing["pack 1"].kind, listing["pack 1"].size,
                          listing["pack 1"].mutable), ("filenode", 4000, False))
        self.assertEqual(listing["pack 1"].ro_uri, filecap)
        self.assertEqual(listing["index"].size, 5)
        self.assertEqual((listing["inner"].kind, listing["inner"].mutable), ("dirnode", False))
        self.assertEqual(listing["inner"].ro_uri, inner)
        self.assertIsNone(listing["inner"].rw_uri)
        self.assertEqual(await client.child_cap(outer, "inner"), inner)
        self.assertEqual(set(await client.list_dir(inner)), {"f"})

        self.assertTrue((await client.mkdir_immutable({})).startswith("URI:DIR2-LIT:"))
        with self.assertRaises(TahoeBadRequest) as caught:
            await client.mkdir_immutable({"mutable": await client.mkdir()})
        self.assertEqual(caught.exception.status, 400)

    async def test_missing_child(self):
        client = await self.get_client()
        root = await client.mkdir()
        self.assertIsNone(await client.child_cap(root, "nope"))
        with self.assertRaises(TahoeNotFound) as caught:
            await client.unlink(root, "nope")
        self.assertEqual(caught.exception.status, 404)

    async def test_bad_caps(self):
        client = await self.get_client()
        filecap = await client.upload_bytes(os.urandom(1000))
        with self.assertRaises(TahoeBadRequest) as caught:
            await client.download("not-a-cap")
        self.assertEqual(caught.exception.status, 400)
        with self.assertRaises(TahoeBadRequest):
            await client.list_dir("not-a-cap")
        with self.assertRaises(TahoeBadRequest):
            await client.list_dir(filecap)
        with self.assertRaises(TahoeNotFound):
            await client.child_cap("not-a-cap", "child")
        with self.assertRaises(TahoeBadRequest):
            await client.child_cap(filecap, "child")
        with self.assertRaises(TahoeSharesMissing) as caught:
            await client.download(MISSING_CHK)
        self.assertEqual(caught.exception.status, 410)
        self.assertNotIn(MISSING_CHK, str(caught.exception))
        with self.assertRaises(TahoeSharesMissing):
            await client.list_dir(MISSING_DIR)
        with self.assertRaises(TahoeSharesMissing):
            await client.child_cap(MISSING_DIR, "child")

    # -- the grid ----------------------------------------------------------

    async def test_connected_servers(self):
        client = await self.get_client()
        self.assertGreaterEqual(await client.connected_servers(), 3)
        await client.wait_for_servers(3, timeout=10)


class FakeTahoeContractTests(TahoeContractMixin, TestCase):
    """The contract, against the in-memory fake."""

    def get_client(self):
        client, self.fake = fake_client(retry=RetryPolicy(attempts=1), min_servers=3)
        return succeed(client)


class RealTahoeContractTests(TahoeContractMixin, TestCase):
    """The contract, against a real grid (3 storage servers, 2-of-3, happy 3)."""

    timeout = 120

    def get_client(self):
        async def make():
            url = await shared_node_url()
            client = TahoeClient(url, retry=RetryPolicy(attempts=1), min_servers=3)
            self.addCleanup(lambda: Deferred.fromCoroutine(client.close()))
            await client.wait_for_servers(3, timeout=60)
            return client

        return Deferred.fromCoroutine(make())

    async def test_check_and_repair_shapes(self):
        # Real only: the fake does not repair.  What checkrepair.py reads.
        client = await self.get_client()
        cap = await client.upload_bytes(os.urandom(5000))
        result = await client.check(cap, repair=True)
        self.assertIs(result["repair-attempted"], False)
        for key in ("pre-repair-results", "post-repair-results"):
            self.assertIs(result[key]["results"]["healthy"], True)
            self.assertIs(result[key]["results"]["recoverable"], True)
        self.assertEqual(result["storage-index"], result["pre-repair-results"]["storage-index"])
        self.assertTrue(result["storage-index"])
        # Objects without shares: a plain check says so with a 200; a repair
        # of an immutable one is a 410, of a mutable one a 200.
        for cap in (MISSING_CHK, MISSING_DIR):
            result = await client.check(cap)
            self.assertEqual((result["results"]["healthy"], result["results"]["recoverable"]),
                             (False, False))
        with self.assertRaises(TahoeSharesMissing):
            await client.check(MISSING_CHK, repair=True)
        result = await client.check(MISSING_DIR, repair=True)
        self.assertEqual((result["repair-attempted"], result["repair-successful"]), (True, False))
        self.assertIs(result["post-repair-results"]["results"]["recoverable"], False)
        # A literal cap: the plain shape, repair or not (Tahoe 1.20).
        tiny = await client.upload_bytes(b"tiny")
        for repair in (False, True):
            self.assertEqual(await client.check(tiny, repair=repair),
                             {"storage-index": "", "results": {"healthy": True}})


# ---------------------------------------------------------------------------
# Fake-only: retries, backoff, failure injection


def run(clock, coroutine, limit=1000):
    """Start ``coroutine``; advance ``clock`` call by call until it is done."""
    d = Deferred.fromCoroutine(coroutine)
    for _ in range(limit):
        if d.called:
            break
        calls = clock.getDelayedCalls()
        if not calls:
            break
        clock.advance(max(0, min(c.getTime() for c in calls) - clock.seconds()))
    return d


def request_times(fake, method):
    return [r.time for r in fake.requests if r.method == method]


class LogCapture:
    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self):
        out = []
        for event in self.events:
            out.append(formatEvent(event))
            out.extend(repr(v) for v in event.values())
        return out


class RetryTests(SynchronousTestCase):

    def test_delays(self):
        policy = RetryPolicy(attempts=10, base=1, factor=3, cap=20, jitter=False)
        self.assertEqual([policy.delay(n) for n in range(1, 6)], [1, 3, 9, 20, 20])
        self.assertEqual(policy.delay(5000), 20)
        jittered = RetryPolicy(base=2, jitter=True)
        self.assertEqual(jittered.delay(1, random=lambda: 0.0), 1.0)
        self.assertAlmostEqual(jittered.delay(1, random=lambda: 0.999999), 1.999999)
        for _ in range(100):
            self.assertTrue(1.0 <= jittered.delay(1) <= 2.0)

    def test_policy_validation(self):
        self.assertRaises(ValueError, RetryPolicy, attempts=0)
        self.assertRaises(ValueError, RetryPolicy, base=-1)
        self.assertRaises(ValueError, RetryPolicy, factor=0.5)

    def test_unhappy_then_success(self):
        client, fake = fake_client()
        logs = LogCapture(self)
        fake.fail_next_unhappy(times=3, method="PUT")
        data = os.urandom(1000)
        d = run(fake.clock, client.upload_bytes(data))
        cap = self.successResultOf(d)
        self.assertEqual(fake.files[cap], data)
        self.assertEqual(request_times(fake, "PUT"), [0, 0.5, 1.5, 3.5])
        warnings = [formatEvent(e) for e in logs.events if "retrying" in formatEvent(e)]
        self.assertEqual(len(warnings), 3)
        self.assertIn("UploadUnhappinessError: shares could be placed on only", warnings[0])
        self.assertIn("retrying in 0.50s", warnings[0])

    def test_gives_up_with_last_error(self):
        client, fake = fake_client()
        fake.fail_next_unhappy(times=5, method="PUT")
        fake.fail_next(503, body="Traceback:\nallmydata.Whatever: the last one\n", method="PUT")
        fake.fail_next_unhappy(method="PUT")  # never reached
        d = run(fake.clock, client.upload_bytes(os.urandom(1000)))
        error = self.failureResultOf(d, TahoeServerError).value
        self.assertEqual(error.status, 503)
        self.assertIn("the last one", str(error))
        self.assertEqual(request_times(fake, "PUT"), [0, 0.5, 1.5, 3.5, 7.5, 15.5])
        self.assertEqual(fake.clock.getDelayedCalls(), [])

    def test_not_found_is_not_retried(self):
        client, fake = fake_client()
        cap = fake.add_file(os.urandom(1000))
        fake.fail_next(404)
        d = run(fake.clock, client.download(cap))
        self.assertEqual(self.failureResultOf(d, TahoeNotFound).value.status, 404)
        self.assertEqual(len(fake.requests), 1)
        self.assertEqual(fake.clock.seconds(), 0)

    def test_bad_request_is_not_retried(self):
        client, fake = fake_client()
        d = run(fake.clock, client.download("not-a-cap"))
        self.failureResultOf(d, TahoeBadRequest)
        self.assertEqual(len(fake.requests), 1)

    def test_missing_shares_are_retried(self):
        client, fake = fake_client()
        data = os.urandom(1000)
        cap = fake.add_file(data)
        fake.fail_next(410, times=2)
        self.assertEqual(self.successResultOf(run(fake.clock, client.download(cap))), data)
        self.assertEqual(request_times(fake, "GET"), [0, 0.5, 1.5])

    def test_a_repair_without_shares_is_not_retried(self):
        client, fake = fake_client()
        cap = fake.add_file(os.urandom(1000))
        fake.fail_next(410, method="POST")
        d = run(fake.clock, client.check(cap, repair=True))
        self.assertEqual(self.failureResultOf(d, TahoeSharesMissing).value.status, 410)
        self.assertEqual(request_times(fake, "POST"), [0])
        # A plain check is retried, as a download is.
        fake.fail_next(410, method="POST")
        self.assertTrue(self.successResultOf(run(fake.clock, client.check(cap)))["results"])
        self.assertEqual(len(request_times(fake, "POST")), 3)

    def test_node_down_is_retried(self):
        client, fake = fake_client()
        fake.refuse_next(times=2)
        cap = self.successResultOf(run(fake.clock, client.upload_bytes(b"x" * 100)))
        self.assertIn(cap, fake.files)
        self.assertEqual(request_times(fake, "PUT"), [0, 0.5, 1.5])

    def test_node_down_gives_up(self):
        client, fake = fake_client()
        fake.refuse_next(times=6)
        error = self.failureResultOf(run(fake.clock, client.connected_servers()),
                                     TahoeUnavailable).value
        self.assertIsNone(error.status)
        self.assertFalse(error.sent)
        self.assertIn("ConnectionRefusedError", str(error))
        self.assertEqual(len(fake.requests), 6)

    def test_mutable_writes_refused_with_too_few_servers(self):
        fake = FakeTahoe(connected=2, disconnected=1)
        client, _ = fake_client(fake, min_servers=3)
        for coroutine in [client.mkdir(), client.set_children(MISSING_DIR, {"a": MISSING_CHK}),
                          client.unlink(MISSING_DIR, "a")]:
            error = self.failureResultOf(run(fake.clock, coroutine), TahoeUnavailable).value
            self.assertIn("only 2 storage server(s) connected, 3 needed", str(error))
            self.assertFalse(error.sent)
        self.assertEqual({r.method for r in fake.requests}, {"GET"})
        self.assertEqual({r.path for r in fake.requests}, {"/?t=json"})

    def test_mutable_write_waits_for_servers(self):
        fake = FakeTahoe(connected=2)
        client, _ = fake_client(fake, min_servers=3)
        d = Deferred.fromCoroutine(client.mkdir())
        self.assertNoResult(d)
        fake.connected = 3
        fake.clock.advance(0.5)
        self.assertTrue(self.successResultOf(d).startswith("URI:DIR2:"))

    def test_upload_is_not_refused_with_too_few_servers(self):
        # Immutable uploads: Tahoe enforces happiness itself.
        fake = FakeTahoe(connected=2)
        client, _ = fake_client(fake, min_servers=3, retry=RetryPolicy(attempts=1))
        self.successResultOf(run(fake.clock, client.upload_bytes(b"lit")))
        error = self.failureResultOf(run(fake.clock, client.upload_bytes(b"x" * 1000)),
                                     TahoeUnhappy).value
        self.assertEqual(error.status, 500)
        self.assertIn("on only 2 server(s)", str(error))
        self.assertLess(len(str(error)), 300)

    def test_mkdir_is_not_retried_after_a_lost_answer(self):
        client, fake = fake_client()
        fake.drop_next(method="POST")
        error = self.failureResultOf(run(fake.clock, client.mkdir()), TahoeUnavailable).value
        self.assertTrue(error.sent)
        self.assertEqual(len(request_times(fake, "POST")), 1)
        self.assertEqual(len(fake.mutable_dirs), 1)  # it did land

    def test_mkdir_is_retried_when_refused_before_sending(self):
        client, fake = fake_client()
        fake.refuse_next(method="POST")
        self.successResultOf(run(fake.clock, client.mkdir()))
        self.assertEqual(request_times(fake, "POST"), [0, 0.5])
        self.assertEqual(len(fake.mutable_dirs), 1)

    def test_set_children_without_overwrite_is_not_retried_after_a_lost_answer(self):
        client, fake = fake_client()
        root = self.successResultOf(run(fake.clock, client.mkdir()))
        fake.drop_next(method="POST")
        d = run(fake.clock, client.set_children(root, {"a": "URI:LIT:mfrgg"}, overwrite=False))
        self.failureResultOf(d, TahoeUnavailable)
        self.assertEqual(len(request_times(fake, "POST")), 2)
        # With overwrite, the same write is simply sent again.
        fake.drop_next(method="POST")
        d = run(fake.clock, client.set_children(root, {"a": "URI:LIT:mfrgg"}))
        self.successResultOf(d)
        self.assertEqual(len(request_times(fake, "POST")), 4)

    def test_set_children_sends_replace_false(self):
        client, fake = fake_client()
        root = self.successResultOf(run(fake.clock, client.mkdir()))
        self.successResultOf(run(fake.clock, client.set_children(root, {"a": "URI:LIT:"},
                                                                   overwrite=False)))
        self.assertIn("replace=false", fake.requests[-1].path)

    def test_unlink_after_a_lost_answer(self):
        client, fake = fake_client()
        root = self.successResultOf(run(fake.clock, client.mkdir()))
        self.successResultOf(run(fake.clock, client.set_children(root, {"a": "URI:LIT:"})))
        fake.drop_next(method="DELETE")
        self.successResultOf(run(fake.clock, client.unlink(root, "a")))
        self.assertEqual(len(request_times(fake, "DELETE")), 2)

    def test_download_to_retries_cleanly(self):
        client, fake = fake_client()
        data = os.urandom(5000)
        cap = fake.add_file(data)
        fake.fail_next(500)
        out = io.BytesIO()
        self.assertEqual(self.successResultOf(run(fake.clock, client.download_to(cap, out))),
                         len(data))
        self.assertEqual(out.getvalue(), data)

    def test_download_checks_the_length(self):
        client, fake = fake_client()
        cap = fake.add_file(os.urandom(5000))
        fake.fail_next(200, body=b"short")
        self.failureResultOf(run(fake.clock, client.download(cap)), TahoeBadResponse)
        fake.fail_next(200, body=b"short")
        self.failureResultOf(run(fake.clock, client.download_to(cap, io.BytesIO())),
                             TahoeBadResponse)
        fake.fail_next(206, body=b"short")  # a 206 without Content-Range
        self.failureResultOf(run(fake.clock, client.download(cap, 0, 5)), TahoeBadResponse)

    def test_wait_for_servers(self):
        fake = FakeTahoe(connected=1)
        client, _ = fake_client(fake)
        fake.refuse_next()
        d = Deferred.fromCoroutine(client.wait_for_servers(3, timeout=10))
        fake.clock.advance(1)
        fake.clock.advance(1)
        self.assertNoResult(d)
        fake.connected = 3
        fake.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(request_times(fake, "GET"), [0, 1, 2, 3])

    def test_wait_for_servers_times_out(self):
        fake = FakeTahoe(connected=1)
        client, _ = fake_client(fake)
        d = run(fake.clock, client.wait_for_servers(3, timeout=5))
        error = self.failureResultOf(d, TahoeUnavailable).value
        self.assertIn("1 of 3 storage servers connected after 5s", str(error))
        self.assertEqual(fake.clock.seconds(), 5)

    def test_connected_servers_counts_connected_only(self):
        fake = FakeTahoe(connected=2, disconnected=2)
        client, _ = fake_client(fake)
        self.assertEqual(self.successResultOf(run(fake.clock, client.connected_servers())), 2)
        # Foolscap servers say "Connected to ... via ...".
        fake.fail_next(200, body=(
            '{"servers": [{"connection_status": "Connected to tcp:h:1 via tcp"},'
            ' {"connection_status": "connected"}, {"connection_status": "Trying to connect"},'
            ' {"connection_status": "failure: refused"}]}'))
        self.assertEqual(self.successResultOf(run(fake.clock, client.connected_servers())), 2)

    def test_upload_file_streams(self):
        client, fake = fake_client()
        data = os.urandom(5 * 1024 * 1024)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        cap = self.successResultOf(run(fake.clock, client.upload_file(path)))
        self.assertEqual(fake.files[cap], data)
        (put,) = [r for r in fake.requests if r.method == "PUT"]
        producer = put.body_producer
        self.assertIsInstance(producer, FileBodyProducer)
        self.assertEqual(producer.length, len(data))
        self.assertLessEqual(producer._readSize, 64 * 1024)

    def test_upload_file_of_a_missing_file(self):
        client, fake = fake_client()
        d = run(fake.clock, client.upload_file(self.mktemp()))
        self.failureResultOf(d, FileNotFoundError)
        self.assertEqual(fake.requests, [])

    def test_messages_never_contain_a_full_cap(self):
        client, fake = fake_client()
        logs = LogCapture(self)
        clock = fake.clock
        root = self.successResultOf(run(clock, client.mkdir()))
        filecap = self.successResultOf(run(clock, client.upload_bytes(os.urandom(1000))))
        litcap = self.successResultOf(run(clock, client.upload_bytes(b"secret data")))
        caps = [root, filecap, litcap, MISSING_CHK, MISSING_DIR]
        errors = []

        def expect_error(coroutine):
            errors.append(self.failureResultOf(run(clock, coroutine), TahoeError).value)

        expect_error(client.unlink(root, "nope"))
        expect_error(client.download(MISSING_CHK))
        expect_error(client.list_dir(MISSING_DIR))
        expect_error(client.download(filecap, 990, 20))
        expect_error(client.list_dir(filecap))
        fake.fail_next(500, times=6, body=(
            "Traceback (most recent call last):\n"
            f"ValueError: ('bad JSON', b'{{\"x\": [\"filenode\", {{\"ro_uri\": \"{filecap}\"}}]}}')\n"))
        expect_error(client.set_children(root, {"x": filecap}))
        fake.fail_next(500, times=6, body=f"<html><div class=\"error\">{litcap}</div></html>")
        expect_error(client.download(litcap))
        fake.refuse_next(times=6)
        expect_error(client.child_cap(root, "x"))
        fake.connected = 0
        expect_error(client.mkdir())

        self.assertEqual(len(errors), 9)
        for error in errors:
            assert_no_full_cap(self, str(error), caps)
            assert_no_full_cap(self, repr(error), caps)
        self.assertIn("URI:CHK:", str(errors[-5]))  # abbreviated, but there
        fake.connected = 3
        texts = logs.texts()
        self.assertTrue(any("retrying" in text for text in texts))
        for text in texts:
            assert_no_full_cap(self, text, caps)
        listing = self.successResultOf(run(clock, client.list_dir(root)))
        child = DirChild("n", "filenode", filecap, root, 3, False)
        assert_no_full_cap(self, repr(listing) + repr(child), caps)


# ---------------------------------------------------------------------------
# Error answers of a real Tahoe 1.20 node (caps replaced by made-up ones)

CAP = "URI:CHK:5kqldj47aw5s2kgkc2ub6v7ddy:iijncmdjo5l6xpt6akpyzx3it4kxc3cgyaphfbs43d3onxxbm5xa:2:3:300000"

UNHAPPY_PLAIN = b"""Traceback (most recent call last):
  File "/site-packages/twisted/internet/defer.py", line 1831, in _inlineCallbacks
    result = context.run(
  File "/site-packages/allmydata/immutable/upload.py", line 705, in get_shareholders
    self._failed(msg)  # raises UploadUnhappinessError
  File "/site-packages/allmydata/immutable/upload.py", line 895, in _failed
    raise UploadUnhappinessError(msg)
allmydata.interfaces.UploadUnhappinessError: server selection failed for <Tahoe2ServerSelector for upload b'hopb3'>: shares could be placed on only 2 server(s) such that any 2 of them have enough shares to recover the file, but we were asked to place shares on at least 3 such servers. (placed all 3 shares, want to place shares on at least 3 servers such that any 2 of them have enough shares to recover the file, sent 2 queries to 2 servers, 2 queries placed some shares, 0 placed none (of which 0 placed none due to the server being full and 0 placed none due to an error)), merged=sh1: oyyc26dp, sh0: oyyc2zbs, sh2: oyyc2zbs
"""

NOT_WRITEABLE_HTML = b"""<!DOCTYPE html>
<html><head><title>Exception</title></head><body><div>
  <style type="text/css">
    div.error {
      color: red;
    }
  </style>
  <div class="error">
    <span>allmydata.mutable.common.NotWriteableError</span>: <span></span>
  </div>
  <div class="stackTrace">
  </div>
  <div class="error">
    <span>allmydata.mutable.common.NotWriteableError</span>: <span></span>
  </div>
</div></body></html>"""

NO_SUCH_CHILD_HTML = b"""
<html>
  <head><title>404 - Error</title></head>
  <body>
    <h1>Error</h1>
    <p>No such child: nope</p>
  </body>
</html>
"""

NO_SHARES_TEXT = b"""NoSharesError: no shares could be found. Zero shares usually indicates a corrupt URI, or that no servers were connected, but it might also indicate severe corruption. You should perform a filecheck on this object to learn more.

The full error message is:
no shares (need 2). Last failure: None"""

UNRECOVERABLE_JSON = (b'{"error": "UnrecoverableFileError: the directory (or mutable file) '
                      b'could not be retrieved, because there were insufficient good shares."}')

BAD_JSON_PLAIN = ("""Traceback (most recent call last):
  File "/site-packages/allmydata/web/directory.py", line 629, in _POST_set_children
    children = json.loads(body)
json.decoder.JSONDecodeError: ('Expecting value: line 1 column 9 (char 8)', b'{"a": ["filenode", {"ro_uri": "%s"}], ')
""" % CAP).encode()


class ErrorTranslationTests(SynchronousTestCase):

    def test_summaries(self):
        self.assertEqual(
            summarize_body(UNHAPPY_PLAIN),
            "UploadUnhappinessError: shares could be placed on only 2 server(s) such that "
            "any 2 of them have enough shares to recover the file, but we were asked to "
            "place shares on at least 3 such servers.")
        self.assertEqual(summarize_body(NOT_WRITEABLE_HTML), "NotWriteableError:")
        self.assertEqual(summarize_body(NO_SUCH_CHILD_HTML), "No such child: nope")
        self.assertTrue(summarize_body(NO_SHARES_TEXT).startswith(
            "NoSharesError: no shares could be found."))
        self.assertTrue(summarize_body(UNRECOVERABLE_JSON).startswith(
            "UnrecoverableFileError: the directory"))
        self.assertEqual(summarize_body(b""), "")
        self.assertLessEqual(len(summarize_body(b"x" * 10_000)), 200)
        bad_json = summarize_body(BAD_JSON_PLAIN)
        self.assertTrue(bad_json.startswith("JSONDecodeError:"), bad_json)
        self.assertNotIn(CAP, bad_json)
        self.assertIn("URI:CHK:5kqldj…", bad_json)

    def test_classes(self):
        cases = [
            (500, UNHAPPY_PLAIN, TahoeUnhappy),
            (500, NOT_WRITEABLE_HTML, TahoeBadRequest),
            (500, BAD_JSON_PLAIN, TahoeServerError),
            (503, b"", TahoeServerError),
            (410, NO_SHARES_TEXT, TahoeSharesMissing),
            (404, NO_SUCH_CHILD_HTML, TahoeNotFound),
            (400, b"GET unknown URI type", TahoeBadRequest),
            (405, b"", TahoeBadRequest),
            (409, b"There was already a child", TahoeBadRequest),
            (416, b"", TahoeBadRequest),
            (302, b"", TahoeBadResponse),
        ]
        for status, body, cls in cases:
            error = error_from_response(status, body, "download", CAP)
            self.assertIs(type(error), cls, (status, body[:40]))
            self.assertEqual((error.operation, error.status), ("download", status))
            self.assertTrue(str(error).startswith("download URI:CHK:5kqldj…: HTTP %d" % status))
            self.assertNotIn(CAP, str(error))
        transient = {cls for _, _, cls in cases if cls.transient}
        self.assertEqual(transient, {TahoeUnhappy, TahoeServerError, TahoeSharesMissing})
        self.assertTrue(TahoeUnavailable.transient)
        self.assertFalse(TahoeNotFound.transient)
