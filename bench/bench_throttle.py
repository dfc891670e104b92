"""
The upload limit on a real grid: a daemon backs up incompressible data
through a counting TCP proxy in front of the embedded grid's client node,
so that every byte of request sent to the node is timed where it arrives.
For each rate (set once by ``max_rate``, once by a ``schedule`` rule) it
prints the mean rate over the upload and the most and least bytes in any
10-second window of it, against the set rate (target: within 10%).  The
scan runs first, with uploads paused, so that the figures are the
limit's and not the scan's pace.  The proxy counts every request (headers, the publisher's small writes, which
the limit does not pace) as the kernel delivers it, so a window may show
a little more than the daemon wrote in it.

Usage: .venv/bin/python bench/bench_throttle.py [--rates 256KiB,1MiB,4MiB] [--seconds 40] [--keep DIR]
Takes about (seconds + 30) per rate, plus the grid's start.
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.protocols import portforward  # noqa: E402

from gridbackupd.config import parse_config  # noqa: E402
from gridbackupd.grid.localgrid import LocalGrid  # noqa: E402
from gridbackupd.service import from_config  # noqa: E402
from gridbackupd.testing.configfile import write_config  # noqa: E402
from gridbackupd.upload.schedule import parse_rate  # noqa: E402

MiB = 1024 * 1024
WINDOW = 10.0


class CountingServer(portforward.ProxyServer):
    """The proxy's side facing the daemon: notes (time, bytes) of what the daemon sends."""

    def dataReceived(self, data):
        self.factory.log.append((time.monotonic(), len(data)))
        super().dataReceived(data)


class CountingFactory(portforward.ProxyFactory):
    protocol = CountingServer

    def __init__(self, host, port):
        super().__init__(host, port)
        self.log = []


def windows(log, start, end, step=0.1):
    """Bytes in each window [t, t + WINDOW) for t from start to end - WINDOW."""
    totals = []
    t = start
    i = j = 0
    running = 0
    while t + WINDOW <= end + 1e-9:
        while j < len(log) and log[j][0] < t + WINDOW:
            running += log[j][1]
            j += 1
        while i < j and log[i][0] < t:
            running -= log[i][1]
            i += 1
        totals.append(running)
        t += step
    return totals


async def measure(reactor, base, node_url, proxy, rate_text, how, seconds):
    rate = parse_rate(rate_text)
    data_dir = os.path.join(base, f"data-{how}-{rate_text}")
    os.makedirs(data_dir)
    size = int(rate * seconds)
    rnd = random.Random(rate)
    left, i = size, 0
    while left:  # files of 1 to 4 MB: several packs, chunks and whole files
        n = min(left, rnd.randrange(MiB, 4 * MiB))
        with open(os.path.join(data_dir, f"f{i:03d}"), "wb") as f:
            f.write(rnd.randbytes(n))
        left -= n
        i += 1
    limit = (f"max_rate = {rate_text}\n" if how == "max_rate"
             else f"schedule =\n    * 00:00-24:00 {rate_text}\n")
    config = parse_config(write_config(
        os.path.join(base, f"run-{how}-{rate_text}"), node_url, [data_dir],
        extra=f"[upload]\nparallel = 4\n{limit}", hostname="bench"))
    daemon = from_config(reactor, config)
    daemon.startService()
    try:
        state = await daemon.when_ready()
        assert state == "ready", daemon.error
        assert daemon.uploader.status()["schedule"]["rate"] == rate
        # Scan first, uploads held: the figures are the limit's, not the scan's pace.
        daemon.uploader.pause()
        scanned = Deferred()
        original = daemon.jobs.on_scanned

        def on_scanned(sid):
            original(sid)
            if not scanned.called:
                scanned.callback(sid)

        daemon.jobs.on_scanned = on_scanned
        sid = daemon.jobs.request()
        await scanned
        proxy.log.clear()
        daemon.uploader.resume()
        assert await daemon.wait_for_snapshot(sid) == "complete"
        packs = daemon.conn.execute("SELECT count(*), max(size) FROM packs").fetchone()
        sent = daemon.uploader.uploaded_bytes
    finally:
        await daemon.stopService()
    log = sorted(proxy.log)
    # The upload phase: from the first to the last byte of a large request.
    big = [t for t, n in log if n >= 16 * 1024]
    start, end = big[0], big[-1]
    body = sum(n for t, n in log if start <= t <= end)
    mean = body / (end - start)
    totals = windows(log, start, end)
    most, least = max(totals) / WINDOW, min(totals) / WINDOW
    print(f"{how} = {rate_text} ({rate / MiB:.2f} MiB/s): {sent / MiB:.1f} MiB of packs "
          f"({packs[0]} packs, largest {packs[1] / MiB:.2f} MiB) in {end - start:.1f} s; "
          f"mean {mean / MiB:.3f} MiB/s = {mean / rate:.1%} of the rate; "
          f"10 s windows: most {most / MiB:.3f} MiB/s ({most / rate:.1%}), "
          f"least {least / MiB:.3f} MiB/s ({least / rate:.1%}); "
          f"{'within' if abs(mean / rate - 1) <= 0.10 and most <= rate * 1.10 else 'NOT within'} 10%")


async def main(reactor, args):
    base = args.keep or tempfile.mkdtemp(prefix="bench-throttle-")
    os.makedirs(base, exist_ok=True)
    grid = LocalGrid(reactor, os.path.join(base, "grid"))
    grid.startService()
    try:
        node_url = await grid.when_ready()
        host, port = node_url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        proxy = CountingFactory(host, int(port))
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        proxy_url = f"http://127.0.0.1:{listening.getHost().port}/"
        print(f"machine: {os.cpu_count()} cores; grid: 3 storage nodes, 2-of-3, loopback; "
              f"requests counted by a proxy in front of the client node")
        try:
            for rate_text in args.rates:
                for how in ("max_rate", "schedule"):
                    await measure(reactor, base, proxy_url, proxy, rate_text, how, args.seconds)
        finally:
            await listening.stopListening()
    finally:
        await grid.stopService()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="256KiB,1MiB,4MiB", type=lambda s: s.split(","))
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--keep", help="work in this directory and leave it")
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
