"""
Restore benchmarks, in one run on one fresh embedded grid:

1. a whole snapshot restored, against plain GETs of the same packs (whole
   packs, as many at once as the restorer fetches);
2. one small file out of a large snapshot (many entries);
3. a tree of many small files: gridbackupd's restore against
   ``tahoe cp -r`` of the same tree saved by ``tahoe backup``.

Usage: .venv/bin/python bench/bench_restore.py [--small-files N] [--whole-mb M]
                                               [--tiny-files K] [--keep DIR]
Prints one line per figure.  Takes a few minutes (most of it is
``tahoe backup`` and ``tahoe cp``, one Tahoe operation per file).
"""

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults  # noqa: E402

from gridbackupd.config import parse_config  # noqa: E402
from gridbackupd.grid.localgrid import LocalGrid  # noqa: E402
from gridbackupd.grid.nodes import tahoe_command  # noqa: E402
from gridbackupd.restore import engine as restore_module  # noqa: E402
from gridbackupd.service import from_config  # noqa: E402
from gridbackupd.testing.configfile import write_config  # noqa: E402


def make_whole_tree(root, megabytes, seed=1):
    """Home-directory-like: many small and medium files, some large ones, half compressible."""
    rnd = random.Random(seed)
    os.makedirs(root)
    total = 0
    i = 0
    budget = megabytes * 1024 * 1024
    while total < budget:
        if i % 50 == 49:
            size = rnd.randrange(2, 12) * 1024 * 1024
        else:
            size = int(rnd.lognormvariate(9, 1.5)) % 400_000 + 1
        size = min(size, budget - total)
        directory = os.path.join(root, f"d{i % 17:02d}", f"e{i % 5}")
        os.makedirs(directory, exist_ok=True)
        data = rnd.randbytes(size) if i % 2 else (b"line %d of some text\n" % i) * (size // 20 + 1)
        with open(os.path.join(directory, f"f{i:05d}.dat"), "wb") as f:
            f.write(data[:size])
        total += size
        i += 1
    return i, total


def make_small_tree(root, count, seed=2):
    rnd = random.Random(seed)
    os.makedirs(root)
    for i in range(count):
        directory = os.path.join(root, f"dir{i % 20:02d}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"note{i:05d}.txt"), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(200, 8000)))


def make_tiny_tree(root, count):
    """Many entries that cost nothing to upload (inline in the log): a large snapshot."""
    os.makedirs(root)
    for i in range(count):
        directory = os.path.join(root, f"t{i % 100:03d}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{i:06d}"), "wb") as f:
            f.write(b"%d\n" % i)


def digest_tree(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def tahoe(grid, *args):
    return subprocess.run(tahoe_command() + ["-d", grid.client_dir, *args],
                          check=True, capture_output=True, text=True)


async def timed_restore(daemon, paths, target, repeat=1):
    best = None
    status = None
    for n in range(repeat):
        if os.path.exists(target):
            shutil.rmtree(target)
        start = time.perf_counter()
        restore_id = daemon.restorer.request("latest", paths, target)
        state = await daemon.wait_for_restore(restore_id)
        elapsed = time.perf_counter() - start
        status = daemon.restorer.status(restore_id)
        if state != "done":
            raise SystemExit(f"restore failed: {status['errors'][:3]}")
        best = elapsed if best is None else min(best, elapsed)
    return best, status


async def plain_gets(client, caps, parallel):
    sem = DeferredSemaphore(parallel)
    total = 0

    async def get(cap):
        nonlocal total
        data = await client.download(cap)
        total += len(data)

    start = time.perf_counter()
    await gatherResults([sem.run(lambda c=cap: Deferred.fromCoroutine(get(c))) for cap in caps])
    return time.perf_counter() - start, total


async def main(reactor, args):
    base = args.keep or tempfile.mkdtemp(prefix="bench-restore-")
    os.makedirs(base, exist_ok=True)
    grid = LocalGrid(reactor, os.path.join(base, "grid"))
    grid.startService()
    daemon = None
    try:
        node_url = await grid.when_ready()
        whole = os.path.join(base, "data", "whole")
        small = os.path.join(base, "data", "small")
        tiny = os.path.join(base, "data", "tiny")
        nfiles, nbytes = make_whole_tree(whole, args.whole_mb)
        make_small_tree(small, args.small_files)
        make_tiny_tree(tiny, args.tiny_files)
        print(f"corpus: whole {nfiles} files {nbytes / 1e6:.1f} MB; small {args.small_files} files; "
              f"tiny {args.tiny_files} files")

        # Two backup sets on the same grid: the data-heavy tree alone (its
        # packs are then exactly what a whole restore must fetch), and the
        # many-small-files trees.
        daemon = from_config(reactor, parse_config(
            write_config(os.path.join(base, "set1"), node_url, [whole], hostname="bench")))
        daemon.startService()
        assert await daemon.when_ready() == "ready", daemon.error
        start = time.perf_counter()
        snapshot_id = daemon.jobs.request()
        assert await daemon.wait_for_snapshot(snapshot_id) == "complete"
        print(f"gridbackupd backup of the whole tree: {time.perf_counter() - start:.1f} s")

        # 1. Whole snapshot vs plain GETs of the same packs.
        caps = [r[0] for r in daemon.conn.execute("SELECT cap FROM packs WHERE cap IS NOT NULL")]
        pack_bytes = daemon.conn.execute("SELECT sum(size) FROM packs").fetchone()[0]
        get_time, got = await plain_gets(daemon.client, caps, restore_module.PARALLEL_SPANS)
        restore_time, status = await timed_restore(daemon, [], os.path.join(base, "restored-all"), repeat=2)
        get_time2, _ = await plain_gets(daemon.client, caps, restore_module.PARALLEL_SPANS)
        get_best = min(get_time, get_time2)
        assert digest_tree(os.path.join(base, "restored-all", whole.lstrip("/"))) == digest_tree(whole)
        print(f"whole snapshot: {status['files_done']} files, {status['bytes_done'] / 1e6:.1f} MB "
              f"in {restore_time:.2f} s (best of 2); plain GETs of its {len(caps)} packs "
              f"({pack_bytes / 1e6:.1f} MB, {restore_module.PARALLEL_SPANS} at a time): "
              f"{get_best:.2f} s (best of 2); ratio {restore_time / get_best:.2f}x (target <= 1.5x)")
        await daemon.stopService()

        daemon = from_config(reactor, parse_config(write_config(os.path.join(base, "set2"), node_url,
                                                                [small, tiny])))
        daemon.startService()
        assert await daemon.when_ready() == "ready", daemon.error
        start = time.perf_counter()
        snapshot_id = daemon.jobs.request()
        assert await daemon.wait_for_snapshot(snapshot_id) == "complete"
        print(f"gridbackupd backup of the small and tiny trees: {time.perf_counter() - start:.1f} s")
        entries = daemon.conn.execute("SELECT files FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()[0]

        # 2. One small file out of a large snapshot.
        one = os.path.join(small, "dir07", "note00007.txt")
        one_time, status = await timed_restore(daemon, [one], os.path.join(base, "restored-one"), repeat=3)
        assert status["files_done"] == 1
        print(f"one small file out of a snapshot of {entries} files: {one_time * 1000:.0f} ms "
              f"(best of 3; target < 1 s)")

        # 3. Many small files: gridbackupd vs tahoe backup + tahoe cp -r.
        small_time, status = await timed_restore(daemon, [small], os.path.join(base, "restored-small"))
        assert digest_tree(os.path.join(base, "restored-small", small.lstrip("/"))) == digest_tree(small)
        tahoe(grid, "create-alias", "bench")
        start = time.perf_counter()
        await reactor_thread(reactor, tahoe, grid, "backup", small, "bench:small")
        tahoe_backup_time = time.perf_counter() - start
        start = time.perf_counter()
        os.makedirs(os.path.join(base, "tahoe-cp"))
        await reactor_thread(reactor, tahoe, grid, "cp", "-r", "bench:small/Latest",
                             os.path.join(base, "tahoe-cp"))
        cp_time = time.perf_counter() - start
        copied = os.path.join(base, "tahoe-cp", "Latest")
        assert digest_tree(copied) == digest_tree(small), "tahoe cp differs"
        print(f"{args.small_files} small files: gridbackupd restore {small_time:.2f} s; "
              f"tahoe cp -r {cp_time:.1f} s (tahoe backup took {tahoe_backup_time:.1f} s); "
              f"{cp_time / small_time:.0f}x faster (target >= 10x)")
    finally:
        if daemon is not None and daemon.running:
            await daemon.stopService()
        await grid.stopService()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def reactor_thread(reactor, fn, *args):
    from twisted.internet.threads import deferToThread
    return deferToThread(fn, *args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--whole-mb", type=int, default=100)
    parser.add_argument("--tiny-files", type=int, default=20000)
    parser.add_argument("--keep", help="work in this directory and leave it")
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
