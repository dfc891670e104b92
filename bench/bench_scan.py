"""
Scanner benchmarks: unchanged rescan speed, hashing and chunking speed,
memory of a 1,000,000-file scan.

    .venv/bin/python bench/bench_scan.py [--files 100000] [--big-files 1000000]
        [--hash-mb 512] [--skip-rss] [--dir /tmp/gridbackup-bench-scan]

It measures ``tolog.scan_to_log`` directly (the walk, the streaming merge
with the previous snapshot's chain, the log writer, the blob queue in
SQLite), not a request through the API: the request path adds one SQLite
update and a thread hop.  The trees are generated once under --dir and
reused by later runs.
"""

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from gridbackupd.model import LogHeader  # noqa: E402
from gridbackupd.scan import chunker  # noqa: E402
from gridbackupd.scan.tolog import LogScan, scan_to_log  # noqa: E402
from gridbackupd.scan.values import ScanOptions, ScanProgress  # noqa: E402
from gridbackupd.state import db as dbmod  # noqa: E402

OLD = 1_600_000_000_000_000_000


def make_tree(root, files, per_dir=1000, size=40, big_every=0, big_size=1000):
    """
    ``files`` small files, ``per_dir`` to a directory, old mtimes (not
    racy); every ``big_every``-th file has ``big_size`` bytes (above
    tiny_max: a blob of its own, queued in SQLite), the others ``size``.
    """
    marker = root + ".complete"
    if os.path.exists(marker):
        return
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    t0 = time.time()
    data = b"x" * size
    big = b"y" * big_size
    made = 0
    d = 0
    while made < files:
        directory = os.path.join(root, f"dir{d:05d}")
        os.mkdir(directory)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            for i in range(min(per_dir, files - made)):
                fd = os.open(f"file{i:05d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644,
                             dir_fd=dfd)
                if big_every and made % big_every == 0:
                    os.write(fd, big + b"%d" % made)  # distinct blobs
                elif size:
                    os.write(fd, data)
                os.utime(fd, ns=(OLD, OLD))
                os.close(fd)
                made += 1
        finally:
            os.close(dfd)
        d += 1
    open(marker, "w").close()
    print(f"  generated {files:,} files in {time.time() - t0:.1f} s", flush=True)


def scan(state, root, snapshot_id, previous, kind):
    db_path = os.path.join(state, "state.sqlite")
    logs = os.path.join(state, "logs")
    os.makedirs(logs, exist_ok=True)
    dbmod.open_database(db_path).close()
    header = LogHeader(snapshot=snapshot_id, kind=kind,
                       parent=previous[-1][0] if kind == "incremental" else None,
                       paths=(os.fsencode(root),), started=time.time())
    log_path = os.path.join(logs, snapshot_id + ".log")
    progress = ScanProgress()
    t0 = time.perf_counter()
    c0 = time.process_time()
    counts = scan_to_log(LogScan(db_path=db_path, snapshot_id=snapshot_id, header=header,
                                 options=ScanOptions(roots=(root,)), log_path=log_path,
                                 previous_logs=previous), progress)
    elapsed = time.perf_counter() - t0
    counts["cpu"] = time.process_time() - c0
    return counts, elapsed, log_path


def bench_rescan(base, files):
    root = os.path.join(base, f"tree-{files}-mixed")
    make_tree(root, files, big_every=2)
    print("  (half the files 40 bytes, inline in the log; half 1 KB, one blob each)")
    state = os.path.join(base, f"state-{files}")
    shutil.rmtree(state, ignore_errors=True)
    counts, first, log1 = scan(state, root, "s1", [], "full")
    print(f"  first scan (reads every file, full log): {counts['files']:,} files in {first:.2f} s"
          f" = {counts['files'] / first:,.0f} files/s ({counts['files'] / counts['cpu']:,.0f} per CPU"
          f" second)")
    # As once the first snapshot is uploaded: its blobs are committed.
    conn = dbmod.open_database(os.path.join(state, "state.sqlite"))
    with dbmod.transaction(conn):
        conn.execute("UPDATE blobs SET state = 'committed'")
    conn.close()
    results = {}
    for label, kind, sid in (("incremental", "incremental", "s2"), ("full log", "full", "s3")):
        counts, elapsed, _ = scan(state, root, sid, [("s1", log1)], kind)
        results[label] = counts["files"] / elapsed
        print(f"  unchanged rescan, {label}: {counts['files']:,} files in {elapsed:.2f} s"
              f" = {counts['files'] / elapsed:,.0f} files/s, {counts['files'] / counts['cpu']:,.0f}"
              f" per CPU second (records written: {counts['records']:,})")
    return results


def bench_hash(base, megabytes):
    path = os.path.join(base, f"random-{megabytes}MB")
    if not os.path.exists(path) or os.path.getsize(path) != megabytes << 20:
        with open(path, "wb") as f:
            for _ in range(megabytes):
                f.write(os.urandom(1 << 20))
    with open(path, "rb") as f:  # into the page cache
        while f.read(16 << 20):
            pass
    best = best_cpu = best_all = 0.0
    for _ in range(3):
        fd = os.open(path, os.O_RDONLY)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        p0 = time.process_time()
        digest = chunker.digest_fd(fd, 128, 1 << 20)
        cpu = time.thread_time() - c0
        cpu_all = time.process_time() - p0
        elapsed = time.perf_counter() - t0
        os.close(fd)
        best = max(best, megabytes / elapsed)
        best_cpu = max(best_cpu, megabytes / cpu)
        best_all = max(best_all, megabytes / cpu_all)
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        h = hashlib.sha256()
        while True:
            data = f.read(16 << 20)
            if not data:
                break
            h.update(data)
    sha_only = megabytes / (time.perf_counter() - t0)
    assert h.hexdigest() == digest.sha256
    print(f"  hashing + chunking from page cache: {best:,.0f} MB/s wall (best of 3; {len(digest.chunks)}"
          f" chunks); {best_all:,.0f} MB per CPU second of all threads (one core's worth);"
          f" {best_cpu:,.0f} MB per CPU second of the calling thread (the whole-file hash runs"
          f" beside it); SHA-256 alone {sha_only:,.0f} MB/s")
    return best


CHILD = r"""
import os, resource, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import bench_scan
state, root, sid, kind, prev = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
previous = [(prev[0], prev[1])] if prev else []
counts, elapsed, log = bench_scan.scan(state, root, sid, previous, kind)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{counts['files']} {elapsed:.2f} {rss:.1f} {log}")
"""


def bench_rss(base, files):
    root = os.path.join(base, f"tree-{files}")
    make_tree(root, files, size=0)
    state = os.path.join(base, f"state-{files}")
    shutil.rmtree(state, ignore_errors=True)
    me = os.path.abspath(__file__)
    results = []
    prev = []
    for sid, kind in (("s1", "full"), ("s2", "incremental")):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, me, state, root, sid, kind, *prev],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        n, elapsed, rss, log = int(out[0]), float(out[1]), float(out[2]), out[3]
        print(f"  {kind} scan of {n:,} files: {elapsed:.1f} s ({n / elapsed:,.0f} files/s),"
              f" peak RSS {rss:.0f} MB")
        results.append(rss)
        prev = [sid, log]
    return max(results)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/gridbackup-bench-scan")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--big-files", type=int, default=1_000_000)
    parser.add_argument("--hash-mb", type=int, default=512)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    print(f"unchanged rescan of {args.files:,} files (target >= 50,000 files/s):")
    bench_rescan(args.dir, args.files)
    print(f"hashing and chunking a {args.hash_mb} MB file (target >= 600 MB/s):")
    bench_hash(args.dir, args.hash_mb)
    if not args.skip_rss:
        print(f"memory scanning {args.big_files:,} files (target < 300 MB RSS):")
        bench_rss(args.dir, args.big_files)
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
