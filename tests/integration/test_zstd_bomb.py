"""
A zstd bomb in a pack on the real grid: a writer of the backup set replaces
the packs that hold two files' blobs with packs (built by the project's own
writer) in which those blobs are frames of a few KiB expanding to 200 MB,
while the index still says their true sizes.  A new machine recovers the
set from the root cap and reads it through ``/content`` and
``POST /v1/restores``: the two files are clear errors, the others come
back, and the daemon (its own process) stays within 64 MiB of its idle
peak memory.
"""

import hashlib
import os
import shutil
from urllib.parse import quote

import zstandard
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gridbackupd.config import parse_config
from gridbackupd.format.index import commit_name, encode_index_segment, parse_index_segment
from gridbackupd.format.pack import parse_trailer
from gridbackupd.grid.client import TahoeClient
from gridbackupd.grid.layout import COMMIT_DAYS, INDEX, PACK_PREFIX
from gridbackupd.service import from_config
from gridbackupd.testing.configfile import write_config
from gridbackupd.upload.packer import write_stored_pack
from tests.support.process import Daemon, free_port
from tests.support.sharedgrid import shared_node_url

MiB = 1024 * 1024
EXPANDS_TO = 200 * MiB
# How far above its idle peak the daemon's peak resident memory may rise.
RSS_BUDGET = 64 * MiB


def bomb_frame(declare_size):
    """One zstd frame of a few KiB whose content is EXPANDS_TO zero bytes."""
    params = zstandard.ZstdCompressionParameters.from_level(3, write_content_size=declare_size)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj(
        size=EXPANDS_TO if declare_size else -1)
    zeros = bytes(MiB)
    return b"".join(compressor.compress(zeros) for _ in range(EXPANDS_TO // MiB)) + compressor.flush()


def peak_rss(pid):
    """VmHWM of a process: the most resident memory it has had, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


async def plant_bombs(client, rootcap, bombs, workdir):
    """
    As a writer of the backup set would: every commit with a blob of
    ``bombs`` (hash -> stored frame) is replaced by one whose index lists
    the same blobs with the same sizes, the bombs' packs rebuilt with
    ``write_stored_pack`` around the hostile frames.  Returns how many
    blobs were replaced.
    """
    index_dir = (await client.list_dir(rootcap))[COMMIT_DAYS].cap
    replaced = 0
    # Today's bucket (layout version 2): a mutable directory, as the daemon left it.
    buckets = [c.rw_uri for c in (await client.list_dir(index_dir)).values()]
    assert buckets and all(buckets), "the daemon's commits are all in an open bucket"
    commits = [(bucket, name, child) for bucket in buckets
               for name, child in sorted((await client.list_dir(bucket)).items())]
    for commits_dir, name, child in commits:
        listing = await client.list_dir(child.cap)
        packs = {n: c.cap for n, c in listing.items() if n.startswith(PACK_PREFIX)}
        segment = parse_index_segment(await client.download(listing[INDEX].cap), set(packs))
        hit = {b.pack for b in segment.blobs if b.hash in bombs}
        if not hit:
            continue
        rows = [(b.hash, b.pack, b.offset, b.length, b.size, b.compression)
                for b in segment.blobs if b.pack not in hit]
        for pack_name in sorted(hit):
            data = await client.download(packs.pop(pack_name))
            stored = []
            for b in parse_trailer(data, len(data)):
                if b.hash in bombs:
                    stored.append((b.hash, bombs[b.hash], "zstd", b.size))
                    replaced += 1
                else:
                    stored.append((b.hash, data[b.offset:b.offset + b.length], b.compression, b.size))
            built = write_stored_pack(stored, workdir)
            packs[built.name] = await client.upload_file(built.path)
            rows.extend((b.hash, built.name, b.offset, b.length, b.size, b.compression) for b in built.blobs)
        index = encode_index_segment(rows, [(b.hash, b.data) for b in segment.inline])
        cap = await client.mkdir_immutable({INDEX: await client.upload_bytes(index), **packs})
        await client.set_children(commits_dir, {commit_name(index): cap})
        await client.unlink(commits_dir, name)
    return replaced


class ZstdBombTests(TestCase):
    timeout = 600

    async def test_bomb_in_a_pack_is_an_error_for_its_file_only(self):
        import gridbackupd

        # The twistd child runs this checkout's gridbackupd.
        here = os.path.dirname(os.path.dirname(os.path.abspath(gridbackupd.__file__)))
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = here + (os.pathsep + old if old else "")
        self.addCleanup(lambda: os.environ.__setitem__("PYTHONPATH", old) if old is not None
                        else os.environ.pop("PYTHONPATH", None))

        node_url = await shared_node_url()
        base = os.path.abspath(self.mktemp())
        tree = os.path.join(base, "data")
        os.makedirs(os.path.join(tree, "sub"))
        files = {
            "good-random": os.urandom(300_000),
            "sub/good-text": b"a line that compresses\n" * 9000,
            "bomb-declared": b"the first file a writer of the set turns into a bomb\n" * 1000,
            "bomb-undeclared": b"the second one, whose frame does not say its size\n" * 1200,
        }
        for rel, data in files.items():
            with open(os.path.join(tree, rel), "wb") as f:
                f.write(data)
        bombs = {
            hashlib.sha256(files["bomb-declared"]).hexdigest(): bomb_frame(declare_size=True),
            hashlib.sha256(files["bomb-undeclared"]).hexdigest(): bomb_frame(declare_size=False),
        }
        self.assertEqual(zstandard.frame_content_size(bombs[hashlib.sha256(files["bomb-declared"]).hexdigest()]),
                         EXPANDS_TO)
        self.assertTrue(all(len(frame) < 64 * 1024 for frame in bombs.values()))

        # The backup set, written by a daemon as usual.
        first = from_config(reactor, parse_config(write_config(os.path.join(base, "first"), node_url, [tree])))
        first.startService()
        self.addCleanup(lambda: first.running and first.stopService())
        self.assertEqual(await first.when_ready(), "ready", first.error)
        snapshot_id = first.jobs.request()
        self.assertEqual(await first.wait_for_snapshot(snapshot_id), "complete")
        await first.stopService()
        with open(os.path.join(base, "first", "state", "private", "rootcap")) as f:
            rootcap = f.read().strip()

        client = TahoeClient(node_url)
        self.addCleanup(client.close)
        self.assertEqual(await plant_bombs(client, rootcap, bombs, os.path.join(base, "packs")), 2)

        # A new machine with the root cap, the daemon in its own process.
        other = os.path.join(base, "other")
        os.makedirs(os.path.join(other, "state", "private"), mode=0o700)
        shutil.copy(os.path.join(base, "first", "state", "private", "rootcap"),
                    os.path.join(other, "state", "private", "rootcap"))
        port = free_port()
        write_config(other, node_url, [tree], listen=f"tcp:{port}:interface=127.0.0.1")
        daemon = Daemon(self, other, port)
        daemon.start()
        self.addCleanup(daemon.stop)
        await daemon.ready()
        code, body = await daemon.call("GET", f"/v1/snapshots/{snapshot_id}")
        self.assertEqual(code, 200, body)
        self.assertTrue(body["complete"], body)
        idle = peak_rss(daemon.proc.pid)

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=pool))

        async def content(rel):
            path = quote(os.path.join(tree, rel), safe="")
            response = await http.get(f"http://127.0.0.1:{port}/v1/snapshots/{snapshot_id}/content?path={path}",
                                      headers={"Authorization": [f"Bearer {daemon.token}"]})
            return response.code, await response.content()

        for rel in ("bomb-declared", "bomb-undeclared"):
            code, answer = await content(rel)
            self.assertEqual(code, 502, answer[:200])
            self.assertIn(b"blob content larger than recorded", answer)
            self.assertIn(rel.encode(), answer)
        for rel in ("good-random", "sub/good-text"):
            code, answer = await content(rel)
            self.assertEqual(code, 200, answer[:200])
            self.assertEqual(answer, files[rel])

        target = os.path.join(base, "restored")
        code, body = await daemon.call("POST", "/v1/restores", {"snapshot": snapshot_id, "target": target})
        self.assertEqual(code, 202, body)

        async def finished():
            code, status = await daemon.call("GET", f"/v1/restores/{body['id']}")
            return status["state"] in ("done", "failed", "cancelled") and status

        status = await daemon.eventually(finished, "the restore")
        self.assertEqual(status["state"], "failed", status)
        errors = {e["path"]: e["reason"] for e in status["errors"]}
        self.assertEqual(sorted(errors), sorted(os.path.join(tree, rel) for rel in ("bomb-declared", "bomb-undeclared")))
        for reason in errors.values():
            self.assertIn("blob content larger than recorded", reason)
        restored = os.path.join(target, tree.lstrip("/"))
        for rel in ("good-random", "sub/good-text"):
            with open(os.path.join(restored, rel), "rb") as f:
                self.assertEqual(f.read(), files[rel])
        for rel in ("bomb-declared", "bomb-undeclared"):
            self.assertFalse(os.path.exists(os.path.join(restored, rel)))

        rise = peak_rss(daemon.proc.pid) - idle
        self.assertLess(rise, RSS_BUDGET, f"the daemon's peak memory rose {rise / MiB:.0f} MiB")
