"""
``gridbackup mount`` benchmarks (real FUSE):

1. Listing: a snapshot of 1,000,000 files made cheaply (its log written
   directly with ``format.logwriter``: 990 directories of 1,000 files and
   one of 10,000, blobs that are never uploaded; listing needs none), then
   indexed as the daemon does (``mount.indexer.index_snapshot``) and
   mounted: the time until the mount is ready, ``ls -l`` of the 10,000-entry
   directory the first and the second time, and the mount's peak RSS.
2. Reading: a 200 MB file backed up to a fresh embedded grid, then ``cat``
   through the mount (empty cache) against plain ranged GETs of the same
   pack ranges (8 MiB each, 4 at a time: what the mount's read-ahead asks),
   and the mount's peak RSS after it.

Usage: .venv/bin/python bench/bench_mount.py [--files N] [--mb M] [--keep DIR] [--skip-read]
Prints one line per figure.  Needs /dev/fuse and fusermount3.
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from gridbackupd.config import parse_config  # noqa: E402
from gridbackupd.format.logwriter import LogWriter  # noqa: E402
from gridbackupd.grid.localgrid import LocalGrid  # noqa: E402
from gridbackupd.model import DIR, FILE, Entry, LogHeader  # noqa: E402
from gridbackupd.mount.indexer import index_snapshot  # noqa: E402
from gridbackupd.service import from_config  # noqa: E402
from gridbackupd.state import mountindex  # noqa: E402
from gridbackupd.testing.configfile import write_config  # noqa: E402

HUGE = 10_000
SNAPSHOT = "20260101T000000.000000Z-00000000"


def big_log(path, files):
    """A full log of ``files`` files under /bench: directories of 1,000 and /bench/huge of 10,000."""
    fake = hashlib.sha256(b"never uploaded").hexdigest()
    t = 1_700_000_000_123_456_789
    header = LogHeader(snapshot=SNAPSHOT, kind="full", host="bench", paths=(b"/bench",),
                       started=1_700_000_000.0, finished=1_700_000_001.0)

    def d(p):
        return Entry(path=p, kind=DIR, mode=0o40755, mtime_ns=t)

    def f(p, i):
        return Entry(path=p, kind=FILE, mode=0o100644, size=100 + i % 1000, mtime_ns=t + i,
                     blobs=((fake, 100 + i % 1000),), sha256=fake)

    with open(path, "wb") as out, LogWriter(out, header) as log:
        log.add(d(b"/bench"))
        n = 0
        for k in range((files - HUGE) // 1000):
            directory = b"/bench/d%04d" % k
            log.add(d(directory))
            for i in range(1000):
                log.add(f(directory + b"/f%04d" % i, n))
                n += 1
        log.add(d(b"/bench/huge"))
        for i in range(HUGE):
            log.add(f(b"/bench/huge/file-%05d" % i, n))
            n += 1
    return n


def start_mount(config_path, mountpoint):
    proc = subprocess.Popen([sys.executable, "-m", "gridbackupd.mount", "--config", config_path, mountpoint],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.perf_counter()
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            raise SystemExit(f"the mount failed: {proc.stderr.read().decode()}")
        if time.perf_counter() - start > 60:
            raise SystemExit("the mount is not ready after 60 s")
        time.sleep(0.01)
    return proc, time.perf_counter() - start


def stop_mount(proc, mountpoint):
    subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(argv):
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def cpu_seconds(pid):
    """CPU time (user + system) of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_ls(argv, pid):
    """Wall time of a command, and the CPU it and the mount process spent (a figure a busy machine keeps)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    mount_before = cpu_seconds(pid)
    wall = timed(argv)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu + cpu_seconds(pid) - mount_before


def listing_bench(base, files):
    config_path = write_config(os.path.join(base, "set-ls"), "http://127.0.0.1:9/", ["/bench"], hostname="bench")
    statedir = parse_config(config_path).statedir
    os.makedirs(statedir.logs)
    log_path = statedir.log_path(SNAPSHOT)
    start = time.perf_counter()
    n = big_log(log_path, files)
    print(f"log of {n + 992} entries written in {time.perf_counter() - start:.1f} s "
          f"({os.path.getsize(log_path) / 1e6:.1f} MB)")
    conn = mountindex.open_index(statedir.mount_index)
    start = time.perf_counter()
    index_snapshot(conn, statedir.database, SNAPSHOT, [(SNAPSHOT, log_path)], "bench", 1_700_000_000.0, True)
    conn.close()
    print(f"indexed in {time.perf_counter() - start:.1f} s (the daemon's background work); "
          f"index {os.path.getsize(statedir.mount_index) / 1e6:.1f} MB")
    mountpoint = os.path.join(base, "mnt-ls")
    os.makedirs(mountpoint)
    proc, ready = start_mount(config_path, mountpoint)
    try:
        huge = os.path.join(mountpoint, "snapshots", SNAPSHOT, "bench", "huge")
        first, first_cpu = timed_ls(["ls", "-l", huge], proc.pid)
        second, second_cpu = timed_ls(["ls", "-l", huge], proc.pid)
        count = len(os.listdir(huge))
        print(f"mount ready in {ready:.2f} s (target < 10 s)")
        print(f"ls -l of a {count}-entry directory of a {n}-file snapshot: first {first:.3f} s "
              f"(CPU of ls and the mount {first_cpu:.3f} s; target < 1 s), second {second:.3f} s "
              f"(CPU {second_cpu:.3f} s; target < 0.1 s); load average {os.getloadavg()[0]:.1f}")
        other = timed(["ls", "-l", os.path.join(mountpoint, "snapshots", SNAPSHOT, "bench", "d0500")])
        print(f"ls -l of another directory (1,000 entries), first time: {other:.3f} s")
        print(f"mount peak RSS after listing: {peak_rss_mib(proc.pid):.0f} MiB (target < 300 MiB)")
    finally:
        stop_mount(proc, mountpoint)


def plain_ranged_gets(node_url, ranges, parallel=4):
    """Fetch ``(cap, start, length)`` ranges with keep-alive connections, ``parallel`` at a time."""
    url = urllib.parse.urlsplit(node_url)
    conns = {}

    def get(item):
        cap, start, length = item
        import threading
        conn = conns.get(threading.get_ident())
        if conn is None:
            conn = conns[threading.get_ident()] = http.client.HTTPConnection(url.hostname, url.port)
        conn.request("GET", "/uri/" + urllib.parse.quote(cap, safe=""),
                     headers={"Range": f"bytes={start}-{start + length - 1}"})
        body = conn.getresponse().read()
        assert len(body) == length
        return len(body)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        total = sum(pool.map(get, ranges))
    return time.perf_counter() - start, total


def pack_ranges(conn, blobs, run=8 * 1024 * 1024):
    """The ranges of the packs that hold ``blobs`` (in file order), cut at ``run`` bytes, as the mount asks."""
    ranges = []
    for h, _ in blobs:
        cap, offset, length = conn.execute(
            "SELECT p.cap, b.offset, b.length FROM blobs b JOIN packs p ON p.id = b.pack_id WHERE b.hash = ?",
            (h,)).fetchone()
        if ranges and ranges[-1][0] == cap and ranges[-1][1] + ranges[-1][2] == offset \
                and ranges[-1][2] + length <= run:
            ranges[-1] = (cap, ranges[-1][1], ranges[-1][2] + length)
        else:
            ranges.append((cap, offset, length))
    return ranges


async def read_bench(reactor, base, megabytes):
    grid = LocalGrid(reactor, os.path.join(base, "grid"))
    grid.startService()
    daemon = None
    try:
        node_url = await grid.when_ready()
        data_dir = os.path.join(base, "data")
        os.makedirs(data_dir)
        big = os.path.join(data_dir, "big.bin")
        with open(big, "wb") as f:
            for _ in range(megabytes):
                f.write(os.urandom(1024 * 1024))
        config_path = write_config(os.path.join(base, "set-cat"), node_url, [data_dir], hostname="bench")
        daemon = from_config(reactor, parse_config(config_path))
        daemon.startService()
        assert await daemon.when_ready() == "ready", daemon.error
        start = time.perf_counter()
        snapshot_id = daemon.jobs.request()
        assert await daemon.wait_for_snapshot(snapshot_id) == "complete"
        await daemon.mount_indexer.idle()
        print(f"backup of a {megabytes} MB file: {time.perf_counter() - start:.1f} s")
        from gridbackupd.format.chain import snapshot_entries
        from gridbackupd.state.snapshots import log_resolver
        [entry] = [e for e in snapshot_entries(snapshot_id, log_resolver(daemon.conn)) if e.path == os.fsencode(big)]
        ranges = pack_ranges(daemon.conn, entry.blobs)
        mountpoint = os.path.join(base, "mnt-cat")
        os.makedirs(mountpoint)
        from twisted.internet.threads import deferToThread

        gets = []
        cats = []
        rss = 0.0
        for attempt in range(2):
            t, total = await deferToThread(plain_ranged_gets, node_url, ranges)
            gets.append(t)
            shutil.rmtree(daemon.statedir.mount_cache, ignore_errors=True)
            proc, _ = await deferToThread(start_mount, config_path, mountpoint)
            try:
                path = os.path.join(mountpoint, "snapshots", snapshot_id, big.lstrip("/"))
                cats.append(await deferToThread(timed, ["cat", path]))
                rss = max(rss, peak_rss_mib(proc.pid))
                digest = await deferToThread(lambda: hashlib.sha256(open(path, "rb").read()).hexdigest())
                assert digest == entry.sha256
            finally:
                await deferToThread(stop_mount, proc, mountpoint)
        get_best, cat_best = min(gets), min(cats)
        mb = entry.size / 1e6
        print(f"plain ranged GETs of its {len(ranges)} pack ranges ({total / 1e6:.1f} MB, 4 at a time): "
              f"{get_best:.2f} s, {mb / get_best:.1f} MB/s (best of 2)")
        print(f"cat through the mount (empty cache): {cat_best:.2f} s, {mb / cat_best:.1f} MB/s (best of 2); "
              f"{get_best / cat_best * 100:.0f}% of the plain GETs' speed (target >= 70%)")
        print(f"mount peak RSS while reading: {rss:.0f} MiB (target < 300 MiB)")
    finally:
        if daemon is not None and daemon.running:
            await daemon.stopService()
        await grid.stopService()


async def main(reactor, args):
    base = args.keep or tempfile.mkdtemp(prefix="bench-mount-")
    os.makedirs(base, exist_ok=True)
    try:
        listing_bench(base, args.files)
        if not args.skip_read:
            await read_bench(reactor, base, args.mb)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--skip-read", action="store_true")
    parser.add_argument("--keep", help="work in this directory and leave it")
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
