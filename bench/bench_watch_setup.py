"""
The watcher alone at full scale: set up the watches over a tree (the one
bench_watch.py generates) in a fresh process with the daemon's code, then
sit idle on the reactor; prints the set-up time (wall and CPU), the idle
CPU and the RSS.  It separates the watch's own cost from the rest of the
daemon (whose full scans of 1,000,000 files take minutes on a busy machine).

    .venv/bin/python bench/bench_watch_setup.py [--tree /tmp/gridbackup-bench-watch/tree] [--idle 60]
"""

import argparse
import os
import resource
import time

from twisted.internet import reactor, task

from gridbackupd.config import BackupConfig
from gridbackupd.watch import inotify
from gridbackupd.watch.tree import Progress, excluder_for, watch_tree


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default="/tmp/gridbackup-bench-watch/tree")
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    events = []
    backend = inotify.InotifyBackend(reactor, lambda *e: events.append(e), lambda: events.append("overflow"))
    excluder = excluder_for(BackupConfig(paths=(args.tree,)), "/nonexistent-state-dir")
    with open("/proc/loadavg") as f:
        print(f"load average {f.read().split()[0]} at the start")
    wall, cpu = time.monotonic(), time.process_time()
    watch_tree(backend, os.fsencode(args.tree), excluder, Progress())
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    print(f"set-up: {backend.count():,} directories watched in {wall:.1f} s wall, {cpu:.1f} s CPU")

    def idle():
        usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()

        def done():
            usage1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            used = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
            print(f"idle: {100 * used / (t1 - t0):.3f}% of a core over {t1 - t0:.0f} s; "
                  f"{len(events)} events; peak RSS {usage1.ru_maxrss / 1024:.0f} MB")
            backend.close()
            reactor.stop()

        task.deferLater(reactor, args.idle, done)

    reactor.callWhenRunning(idle)
    reactor.run()


if __name__ == "__main__":
    main()
