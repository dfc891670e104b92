"""
Watching benchmarks, through a real daemon process (twistd) on its own
embedded grid: the watch set-up time of a big tree (and that status shows
its progress meanwhile), the daemon's memory and its CPU while nothing
changes, one file changed to a complete snapshot, and a burst of saves.

    .venv/bin/python bench/bench_watch.py [--files 1000000] [--dirs 100000]
        [--settle 2] [--idle 60] [--burst 10000] [--burst-seconds 60]
        [--dir /tmp/gridbackup-bench-watch]

The tree (empty files, cheap to make) is generated once under --dir and
reused.  Watching 100,000 directories needs as many inotify watches: if
``fs.inotify.max_user_watches`` is lower, this script raises it (as root,
with sysctl) and says so.  The figures are printed at the end, one line each.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_tree(root, files, dirs):
    marker = root + f".complete-{files}-{dirs}"
    if os.path.exists(marker):
        return
    if os.path.exists(root):
        shutil.rmtree(root)
    t0 = time.time()
    per_dir = max(1, files // dirs)
    # Two levels, so no directory holds 100,000 entries.
    made = 0
    for d in range(dirs):
        directory = os.path.join(root, f"g{d // 1000:03d}", f"d{d:06d}")
        os.makedirs(directory)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            for i in range(min(per_dir, files - made)):
                os.close(os.open(f"f{i:03d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd))
                made += 1
        finally:
            os.close(dfd)
    open(marker, "w").close()
    print(f"generated {made:,} empty files in {dirs:,} directories in {time.time() - t0:.0f} s", flush=True)


def ensure_watches(needed):
    path = "/proc/sys/fs/inotify/max_user_watches"
    with open(path) as f:
        current = int(f.read())
    if current >= needed:
        print(f"fs.inotify.max_user_watches = {current:,} (enough for {needed:,})", flush=True)
        return
    subprocess.run(["sysctl", "-w", f"fs.inotify.max_user_watches={needed}"], check=True,
                   capture_output=True)
    print(f"raised fs.inotify.max_user_watches from {current:,} to {needed:,}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, base, tree, settle):
        self.base = base
        self.port = free_port()
        os.makedirs(base, exist_ok=True)
        with open(os.path.join(base, "gridbackup.ini"), "w") as f:
            f.write(f"[gridbackup]\nstate_dir = %(here)s/state\nhostname = bench\n"
                    f"[tahoe]\nnode_url = embedded\n"
                    f"[backup]\npaths =\n    {tree}\nscan_interval = 0\nwatch = yes\n"
                    f"settle = {settle}s\nsettle_max = 60s\n"
                    f"[retention]\ninterval = 0\n"
                    f"[api]\nlisten = tcp:{self.port}:interface=127.0.0.1\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.log_path = os.path.join(base, "twistd.log")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([twistd, "--nodaemon", "--pidfile=", "gridbackup", "--config",
                                      os.path.join(base, "gridbackup.ini")],
                                     cwd=base, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._token = None

    def token(self):
        if self._token is None:
            with open(os.path.join(self.base, "state", "private", "api_token")) as f:
                self._token = f.read().strip()
        return self._token

    def get(self, path):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers={"Authorization": f"Bearer {self.token()}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def status(self):
        try:
            return self.get("/v1/status")
        except (OSError, ValueError):
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited ({self.proc.returncode}); see {self.log_path}")
            return None

    def snapshots(self):
        found, cursor = [], ""
        while True:
            page = self.get("/v1/snapshots?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
            found.extend(page["snapshots"])
            cursor = page["next_cursor"]
            if not cursor:
                return found

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def memory(self):
        values = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line.split(":")[0]] = int(line.split()[1]) * 1024
        return values

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_for(what, check, timeout, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def protected_now(daemon, timeout=1800):
    def check():
        status = daemon.status()
        if not status:
            return None
        watch = status["watch"]
        healthy = (watch["state"] == "watching" and watch["dirty"] == 0 and watch["scans_pending"] == 0
                   and status["protected_as_of"] is not None and status["protected_as_of"] > time.time() - 10)
        return status if healthy else None

    return wait_for("protection as of now", check, timeout, every=0.25)


def scanned_line(log_path, snapshot_id):
    with open(log_path, "rb") as f:
        for line in f:
            if b"scanned " + snapshot_id.encode() in line:
                return line.decode("utf-8", "replace").split("] ", 1)[1].strip()
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--dirs", type=int, default=100_000)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--burst-seconds", type=float, default=60.0)
    parser.add_argument("--dir", default="/tmp/gridbackup-bench-watch")
    args = parser.parse_args()

    with open("/proc/loadavg") as f:
        print(f"machine: {os.cpu_count()} cores, load average {f.read().split()[0]} at the start", flush=True)
    tree = os.path.join(args.dir, "tree")
    make_tree(tree, args.files, args.dirs)
    directories = args.dirs + args.dirs // 1000 + 2
    ensure_watches(directories + 10_000)
    run = os.path.join(args.dir, "run")
    if os.path.exists(run):
        shutil.rmtree(run)
    figures = {}
    t_start = time.monotonic()
    daemon = Daemon(run, tree, args.settle)
    try:
        # Set-up: status shows the directories watched so far while starting.
        progress = []

        def set_up():
            status = daemon.status()
            if not status:
                return None
            watch = status["watch"]
            if watch["state"] == "starting":
                progress.append(watch["directories"])
                return None
            return watch if watch["state"] in ("watching", "degraded") else None

        watch = wait_for("the watches", set_up, 600, every=0.5)
        figures["watch set-up (status watch.setup_seconds)"] = f"{watch['setup_seconds']:.1f} s for " \
            f"{watch['directories']:,} directories (target < 30 s); state {watch['state']}"
        seen = [p for p in progress if p]
        figures["set-up progress seen in status while starting"] = \
            f"{len(seen)} polls, {seen[0]:,} .. {seen[-1]:,} directories" if seen else "none (too fast to see)"
        protected_now(daemon)
        figures["start to first full snapshot complete"] = f"{time.monotonic() - t_start:.0f} s " \
            f"({args.files:,} files)"

        # Idle: nothing changes, once the work a finished snapshot leaves
        # (its mount index: a first full snapshot of 1,000,000 files is
        # read whole) is done.
        time.sleep(5)
        quiet_from = time.monotonic()
        while time.monotonic() - quiet_from < 300:
            cpu0, t0 = daemon.cpu_seconds(), time.monotonic()
            time.sleep(3)
            if (daemon.cpu_seconds() - cpu0) / (time.monotonic() - t0) < 0.02:
                break
        figures["after the first snapshot, busy (its mount index) for"] = f"{time.monotonic() - quiet_from:.0f} s"
        cpu0, t0 = daemon.cpu_seconds(), time.monotonic()
        time.sleep(args.idle)
        cpu1, t1 = daemon.cpu_seconds(), time.monotonic()
        memory = daemon.memory()
        figures["daemon CPU while idle"] = f"{100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of a core over " \
            f"{t1 - t0:.0f} s (target < 1%)"
        figures["daemon RSS while watching"] = f"{memory['VmRSS'] / 1e6:.0f} MB now, peak " \
            f"{memory['VmHWM'] / 1e6:.0f} MB (the start's full scan included; target < 300 MB)"

        # One file changed.
        before = {s["id"] for s in daemon.snapshots()}
        target = os.path.join(tree, "g050", f"d{min(50_000, args.dirs - 1):06d}", "f003")
        if not os.path.exists(target):
            target = os.path.join(tree, "g000", "d000000", "f000")
        t0 = time.monotonic()
        with open(target, "wb") as f:
            f.write(b"changed %f" % time.time())

        def new_complete():
            fresh = [s for s in daemon.snapshots() if s["id"] not in before]
            return fresh if fresh and all(s["complete"] for s in fresh) else None

        fresh = wait_for("the changed file's snapshot", new_complete, 1800, every=0.1)
        took = time.monotonic() - t0
        detail = daemon.get(f"/v1/snapshots/{fresh[-1]['id']}")
        scan_kind = detail.get("scan", "(no scan field: main's scan walks everything)")
        figures["one file changed -> complete snapshot"] = (
            f"{took:.1f} s with settle {args.settle:g} s (target settle + 2 s = {args.settle + 2:g} s); "
            f"{len(fresh)} snapshot(s); scan: {scan_kind}; {scanned_line(daemon.log_path, fresh[-1]['id'])}")

        # A burst of saves over a minute.
        protected_now(daemon)
        before = {s["id"] for s in daemon.snapshots()}
        rng = random.Random(13)
        t0 = time.monotonic()
        for i in range(args.burst):
            d = rng.randrange(args.dirs)
            name = f"f{rng.randrange(max(1, args.files // args.dirs)):03d}"
            path = os.path.join(tree, f"g{d // 1000:03d}", f"d{d:06d}", name)
            with open(path, "wb") as f:
                f.write(b"save %d" % i)
            delay = t0 + (i + 1) * args.burst_seconds / args.burst - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        burst_took = time.monotonic() - t0
        protected_now(daemon)
        made = [s for s in daemon.snapshots() if s["id"] not in before]
        figures["burst of saves"] = (f"{args.burst:,} saves over {burst_took:.0f} s -> {len(made)} snapshots, "
                                     f"all protected {time.monotonic() - t0 - burst_took:.0f} s after the last save")
    finally:
        daemon.stop()
    with open("/proc/loadavg") as f:
        print(f"load average {f.read().split()[0]} at the end", flush=True)
    for key, value in figures.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
