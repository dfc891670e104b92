"""
The full (unwatched) rescan through the daemon, as a person asks for it:
100,000 small files plus 1 GB in 10 files, unchanged since the last
backup, from ``POST /v1/backups`` to the snapshot read back as complete,
with its figures, through ``GET /v1/snapshots/{id}`` (target: at least
50,000 files/s).

    .venv/bin/python bench/bench_rescan.py [--files 100000] [--big 10] [--big-mb 100]
        [--runs 5] [--dir /tmp/gridbackup-bench-rescan] [--profile FILE] [--reuse]

The daemon is ``twistd gridbackup`` in its own process on its own embedded
grid (3 storage nodes, 2-of-3), driven over its TCP API with the bearer
token; the tree (half the small files 40 B and inline in the log, half
1 KB with a blob each, as bench_scan.py makes them) is generated once and
reused (``--reuse`` also keeps the daemon's state and grid, so that the
1 GB is not uploaded again).  The first backup uploads everything; each
timed run is an unchanged rescan (the daemon does not watch: ``watch =
no``), started once the daemon is idle (the last snapshot's mount index
built), polled every 100 ms (each answer costs
the daemon some CPU: polls every 10 ms took a seventh of it).  Each run
also prints the scan's own time (the snapshot's ``finished - started``)
and the CPU time the daemon used (all its threads: a figure that moves
less than wall time when other work shares the machine).  ``--profile
FILE`` records the daemon with py-spy during one more rescan (speedscope
JSON, or an SVG flame graph if FILE ends in .svg).
"""

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_scan import make_tree  # noqa: E402

CONFIG = """\
[gridbackup]
state_dir = {state}
[tahoe]
node_url = embedded
[backup]
paths =
    {tree}
scan_interval = 0
# The unwatched rescan the issue measures (a watching daemon also walks the
# tree once at its start).
watch = no
[api]
listen = tcp:{port}:interface=127.0.0.1
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_big(directory, count, megabytes):
    """``count`` files of random bytes (incompressible: every chunk a blob of its own)."""
    marker = directory + ".complete"
    if os.path.exists(marker):
        return
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    rnd = random.Random(11)
    for i in range(count):
        with open(os.path.join(directory, f"big{i:02d}.bin"), "wb") as f:
            for _ in range(megabytes):
                f.write(rnd.randbytes(1 << 20))
        os.utime(os.path.join(directory, f"big{i:02d}.bin"), ns=(1_600_000_000 * 10**9,) * 2)
    open(marker, "w").close()


class Api:
    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.headers = {"Authorization": f"Bearer {token}", "Host": "127.0.0.1"}

    def call(self, method, path):
        self.conn.request(method, path, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read() or b"null")


def start_daemon(base, tree):
    state = os.path.join(base, "state")
    port = free_port()
    config = os.path.join(base, "gridbackup.ini")
    with open(config, "w") as f:
        f.write(CONFIG.format(state=state, tree=tree, port=port))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log = open(os.path.join(base, "twistd.log"), "ab")
    proc = subprocess.Popen([twistd, "--nodaemon", "--pidfile=", "gridbackup", "--config", config],
                            cwd=base, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    token_path = os.path.join(state, "private", "api_token")
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"twistd exited with {proc.returncode}; see {base}/twistd.log")
        if time.monotonic() > deadline:
            raise SystemExit("the daemon was not ready in 300 s")
        try:
            with open(token_path) as f:
                api = Api(port, f.read().strip())
            code, status = api.call("GET", "/v1/status")
            if code == 200 and status["state"] == "ready":
                return proc, api
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.5)


def cpu_seconds(pid):
    """CPU time (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid, quiet=0.05, timeout=120):
    """
    Until the daemon uses less than ``quiet`` CPU seconds in a second: the
    work a backup leaves behind (its snapshot's mount index) is done, so
    that a timed run does not share the daemon with the last one's.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < quiet:
            return
    raise SystemExit(f"the daemon was still busy {timeout} s after the backup")


def backup(api, poll=0.1):
    """(seconds from the request to the complete snapshot read back, the snapshot document)."""
    start = time.perf_counter()
    code, doc = api.call("POST", "/v1/backups")
    assert code == 202, doc
    path = f"/v1/snapshots/{doc['id']}"
    while True:
        code, snap = api.call("GET", path)
        if code == 200 and snap["state"] in ("complete", "incomplete", "failed"):
            elapsed = time.perf_counter() - start
            assert snap["state"] == "complete", snap
            assert snap["figures"] is not None, snap
            return elapsed, snap
        time.sleep(poll)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/gridbackup-bench-rescan")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=10)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", help="record the daemon with py-spy during one more rescan")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the daemon's state from the last run (its first backup is then a rescan)")
    args = parser.parse_args()
    tree = os.path.join(args.dir, "tree")
    os.makedirs(tree, exist_ok=True)
    make_tree(os.path.join(tree, "small"), args.files, big_every=2)
    make_big(os.path.join(tree, "big"), args.big, args.big_mb)
    base = os.path.join(args.dir, "run")
    fresh = not os.path.exists(os.path.join(base, "state", "state.sqlite")) or not args.reuse
    if fresh:
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
    proc, api = start_daemon(base, tree)
    try:
        elapsed, snap = backup(api, poll=0.5)
        total = snap["files"]
        print(f"{'first backup' if fresh else 'backup after the restart'}: {total:,} files, "
              f"{snap['bytes'] / 1e9:.2f} GB in {elapsed:.1f} s")
        rates, per_cpu = [], []
        for _ in range(args.runs):
            wait_idle(proc.pid)
            load = os.getloadavg()[0]
            cpu = cpu_seconds(proc.pid)
            elapsed, snap = backup(api)
            cpu = cpu_seconds(proc.pid) - cpu
            scan = snap["finished"] - snap["started"]
            rates.append(total / elapsed)
            per_cpu.append(total / cpu)
            print(f"unchanged rescan: {elapsed:.2f} s request to complete snapshot "
                  f"({total / elapsed:,.0f} files/s); scan {scan:.2f} s; daemon CPU {cpu:.2f} s "
                  f"({total / cpu:,.0f} files per CPU second); figures "
                  f"{snap['figures']['entries_changed']} entries changed; load average {load:.1f}")
        print(f"median {statistics.median(rates):,.0f} files/s, {statistics.median(per_cpu):,.0f} files "
              f"per daemon CPU second over {len(rates)} runs (target >= 50,000 files/s)")
        if args.profile:
            wait_idle(proc.pid)
            spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            fmt = "flamegraph" if args.profile.endswith(".svg") else "speedscope"
            recorder = subprocess.Popen([spy, "record", "--pid", str(proc.pid), "--threads", "--rate", "250",
                                         "--format", fmt, "--output", args.profile],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            elapsed, _ = backup(api)
            recorder.send_signal(2)
            recorder.wait()
            print(f"profiled rescan: {elapsed:.2f} s; profile in {args.profile}")
    finally:
        proc.terminate()
        proc.wait(120)


if __name__ == "__main__":
    main()
