"""
A file's history in a large backup set: one path across 1,000 snapshots
of 100,000 files, answered from the change index (target: under 1 s).

    .venv/bin/python bench/bench_history.py [--snapshots 1000] [--files 100000]
        [--changed 1000] [--dir /tmp/gridbackup-bench-history]

The set is made cheaply, rows inserted directly with the state layer's
own functions (no tree is scanned): a fresh state database, the first
snapshot adding every file, each later one changing ``--changed`` files
picked at random (one in five of them a file that was deleted or is
added again), complete and of one host, as a scan would store them
(``state.changes.finish``).  Then ``state.changes.history`` (what
``GET /v1/history`` runs) is timed for paths that changed often, rarely
and never, each on a cold connection (just opened) and warm.
"""

import argparse
import os
import random
import shutil
import sqlite3
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from gridbackupd.state import (
    changes,  # noqa: E402
    snapshots,  # noqa: E402
)
from gridbackupd.state import db as dbmod  # noqa: E402


def path_of(i):
    return b"/home/user/dir%05d/file%05d.dat" % (i // 100, i % 100)


def build(db_path, n_snapshots, n_files, n_changed):
    conn = dbmod.open_database(db_path)
    rnd = random.Random(5)
    alive = [True] * n_files
    counts = dict.fromkeys(changes.KEYS, 0)
    t0 = time.perf_counter()
    rows_total = 0
    start = 1_767_225_600.0
    for s in range(n_snapshots):
        snapshot_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(start + s * 3600)) + f".000000Z-{s:08x}"
        snapshots.create_queued(conn, snapshot_id, "bench", ["/home/user"], [], start + s * 3600)
        conn.execute("UPDATE snapshots SET state = 'complete', complete = 1, log_path = 'x', "
                     "started = requested WHERE id = ?", (snapshot_id,))
        if s == 0:
            rows = [(path_of(i), "added", "file", 1000 + i % 5000, 10**18 + i) for i in range(n_files)]
        else:
            rows = []
            for i in sorted(rnd.sample(range(n_files), n_changed)):
                if rnd.random() < 0.2:
                    change = "added" if not alive[i] else "deleted"
                    alive[i] = not alive[i]
                else:
                    change = "changed" if alive[i] else "added"
                    alive[i] = True
                rows.append((path_of(i), change, "file", 1000 + s, 10**18 + s * 10**9))
        changes.finish(conn, snapshot_id, None, counts, rows)
        rows_total += len(rows)
    print(f"  built {n_snapshots:,} snapshots, {rows_total:,} change rows in {time.perf_counter() - t0:.1f} s "
          f"({os.path.getsize(db_path) / 1e6:.0f} MB database)")
    # The paths that changed most and least often, and one never backed up.
    freq = dict(conn.execute("SELECT path, count(*) FROM snapshot_changes GROUP BY path"))
    conn.close()
    often = max(freq, key=freq.get)
    rarely = min(freq, key=freq.get)
    return [("changed most often", often, freq[often]), ("changed least often", rarely, freq[rarely]),
            ("never backed up", b"/home/user/nothing", 0)]


def timed(db_path, path):
    conn = sqlite3.connect(db_path)
    t0 = time.perf_counter()
    cold = changes.history(conn, path, "bench")
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10):
        warm = changes.history(conn, path, "bench")
    warm_s = (time.perf_counter() - t0) / 10
    conn.close()
    assert cold == warm
    return len(cold), cold_s, warm_s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/gridbackup-bench-history")
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=1000)
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    db_path = os.path.join(args.dir, "state.sqlite")
    print(f"history of one path in {args.snapshots:,} snapshots of {args.files:,} files, "
          f"{args.changed:,} changed per snapshot (target < 1 s):")
    for label, path, _ in build(db_path, args.snapshots, args.files, args.changed):
        versions, cold, warm = timed(db_path, path)
        print(f"  {label}: {versions} versions, {cold * 1000:.1f} ms on a new connection, "
              f"{warm * 1000:.2f} ms warm")


if __name__ == "__main__":
    main()
