"""
Publishing one snapshot into a set that already has many: on-grid layout
version 2 (day buckets) against version 1 (one directory of every
snapshot), on the embedded grid.

Target (issue 13): with 100,000 existing snapshots a publish takes as long
as into an empty set, within 2x.

The existing snapshots and commits are simulated directory sizes, not
backups: version 2 gets sealed day buckets of 1,440 children each (a
snapshot a minute), made with one ``mkdir-immutable`` each and linked in
the indexes; version 1 gets ``snapshots/`` and ``commits/`` with N children,
linked with ``set_children`` in batches.  Every child is the same tiny
(literal) cap, so the directories have their real number of entries at no
upload cost.  A publish is what the publisher does on the grid for one
snapshot: upload the index segment and make the commit directory, link the
commit, upload the log, link the log (``Publisher`` itself, through its
``Layout``), under the writer lock.  Each size is timed over several
publishes (median).

Usage: .venv/bin/python bench/bench_layout.py [--sizes 0,1000,10000,100000]
        [--v1-sizes 0,1000,10000,100000] [--repeat 5]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from gridbackupd.format.index import settings_document  # noqa: E402
from gridbackupd.grid.client import TahoeClient  # noqa: E402
from gridbackupd.grid.localgrid import LocalGrid  # noqa: E402
from gridbackupd.scan.chunker import ChunkParams  # noqa: E402
from gridbackupd.state import db as dbmod  # noqa: E402
from gridbackupd.upload.buckets import bucket_name  # noqa: E402
from gridbackupd.upload.publisher import Publisher  # noqa: E402

PER_DAY = 1440
BATCH = 5000
DAY1 = 1_796_083_200  # 2026-12-01 00:00 UTC


def ids(prefix, start, n):
    return [f"{prefix}{i:09d}" for i in range(start, start + n)]


async def fill_v2(client, layout, n, filler):
    """n snapshots and n commits, in sealed buckets of PER_DAY, days before today."""
    for index, prefix in ((layout.snapshots, "20250101T000000.000000Z-"), (layout.commits, "commit-")):
        buckets = {}
        for day, start in enumerate(range(0, n, PER_DAY)):
            names = ids(prefix, start, min(PER_DAY, n - start))
            name = bucket_name(DAY1 - (n // PER_DAY + 1 - day) * 86400)
            buckets[name] = await client.mkdir_immutable(dict.fromkeys(names, filler))
        for start in range(0, len(buckets), 500):
            part = dict(list(buckets.items())[start:start + 500])
            await client.set_children(index, part)


async def fill_v1(client, layout, n, filler):
    for index, prefix in ((layout.snapshots, "20250101T000000.000000Z-"), (layout.commits, "commit-")):
        for start in range(0, n, BATCH):
            await client.set_children(index, dict.fromkeys(ids(prefix, start, min(BATCH, n - start)), filler))


async def one_publish(publisher, client, serial):
    """The grid writes of one snapshot's publish: a commit, then its log."""
    began = time.perf_counter()
    async with publisher.writing():
        segment = await client.upload_bytes(b"index of publish %d " % serial + os.urandom(2100))
        commit = await client.mkdir_immutable({"index": segment})
        await publisher.layout.link_commits(client, {f"commit-{serial:032x}": commit})
        log = await client.upload_bytes(b"log of publish %d " % serial + os.urandom(2100))
        await publisher.layout.link_log(client, f"20261201T120000.{serial:06d}Z-bench", log)
    return time.perf_counter() - began


async def measure(client, base, version, n, repeat):
    conn = dbmod.open_database(os.path.join(base, f"v{version}-{n}.sqlite"))
    try:
        publisher = Publisher(conn, client, settings_document(ChunkParams(), 128, 1 << 20),
                              layout_version=version, now=lambda: DAY1 + 43200)
        root = await client.mkdir()
        await publisher.ensure_layout(root)
        filler = await client.upload_bytes(b"x")  # a literal cap: no shares
        began = time.perf_counter()
        await (fill_v2 if version == 2 else fill_v1)(client, publisher.layout, n, filler)
        fill = time.perf_counter() - began
        await one_publish(publisher, client, 0)  # opens today's bucket (v2): once a day
        times = [await one_publish(publisher, client, i + 1) for i in range(repeat)]
    finally:
        conn.close()
    return statistics.median(times), max(times), fill


async def main(reactor, args):
    base = tempfile.mkdtemp(prefix="bench-layout-")
    grid = LocalGrid(reactor, os.path.join(base, "grid"))
    grid.startService()
    try:
        node_url = await grid.when_ready()
        client = TahoeClient(node_url, clock=reactor)
        results = {}
        for version, sizes in ((2, args.sizes), (1, args.v1_sizes)):
            for n in sizes:
                median, worst, fill = await measure(client, base, version, n, args.repeat)
                results[(version, n)] = median
                print(f"layout v{version}: publish into a set of {n:>7} snapshots: median {median:.3f} s, "
                      f"max {worst:.3f} s (simulating them took {fill:.1f} s)", flush=True)
        for version in (2, 1):
            empty = results.get((version, 0))
            for (v, n), median in sorted(results.items()):
                if v == version and n and empty:
                    print(f"layout v{version}: {n} snapshots / empty = {median / empty:.2f}x", flush=True)
        await client.close()
    finally:
        await grid.stopService()
        shutil.rmtree(base, ignore_errors=True)


def _sizes(text):
    return [int(x) for x in text.split(",") if x]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=_sizes, default=[0, 1000, 10000, 100000])
    parser.add_argument("--v1-sizes", type=_sizes, default=[0, 1000, 10000, 100000])
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
