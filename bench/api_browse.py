"""
How long the API's log-reading work takes on a large snapshot: one page of
a listing (first and last), finding one file, a page of differences, and
the per-snapshot figures as computed from the logs (for snapshots no scan
counted).  Synthetic logs of N entries (default 200,000),
written with the real LogWriter; the functions are browse.py's, run here
in one thread as a worker thread runs them for the API.

    .venv/bin/python bench/api_browse.py [N]
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from gridbackupd.api import browse  # noqa: E402
from gridbackupd.changes import compute  # noqa: E402
from gridbackupd.format.logpaths import path_key  # noqa: E402
from gridbackupd.format.logwriter import write_log  # noqa: E402
from gridbackupd.model import DIR, FILE, Entry, LogHeader  # noqa: E402


def entries(n, changed_every=0):
    per_dir = 100
    for d in range(n // per_dir):
        top = b"/home/user/dir%05d" % d
        yield top, DIR, 0, None
        for f in range(per_dir - 1):
            i = d * per_dir + f
            size = 1000 + i % 5000
            if changed_every and i % changed_every == 0:
                size += 1
            yield top + b"/file%05d.dat" % f, FILE, size, [("%064x" % i, size)]


def write(path, snapshot, n, changed_every=0):
    header = LogHeader(snapshot=snapshot, kind="full", host="bench", paths=(b"/home/user",))
    records = []
    for p, kind, size, blobs in entries(n, changed_every):
        if kind == DIR:
            records.append(Entry(path=p, kind=DIR, mode=0o40755))
        else:
            records.append(Entry(path=p, kind=FILE, mode=0o100644, size=size, blobs=blobs))
    ancestors = [Entry(path=b"/home", kind=DIR, mode=0o40755), Entry(path=b"/home/user", kind=DIR, mode=0o40755)]
    records = ancestors + records
    records.sort(key=lambda e: path_key(e.path))
    with open(path, "wb") as f:
        write_log(f, header, records)
    return records[-1].path


def timed(label, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    print(f"{label:<48} {time.perf_counter() - start:8.3f} s")
    return result


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a.log"), os.path.join(tmp, "b.log")
        last = write(a, "A", n)
        write(b, "B", n, changed_every=1000)
        la, lb = [("A", a)], [("B", b)]
        print(f"{n} entries per snapshot, logs of {os.path.getsize(a) / 1e6:.1f} MB (zstd)")
        timed("files: first page of /home/user (1000)", browse.list_entries, la, b"/home/user", False, None, 1000)
        timed("files: recursive, first page (1000)", browse.list_entries, la, b"/", True, None, 1000)
        cursor = os.path.dirname(last)
        timed("files: recursive, page after the last dir", browse.list_entries, la, b"/", True, cursor, 1000)
        timed("find_entry: the last file", browse.find_entry, la, last)
        changes, _ = timed("diff: first page (1000)", browse.diff, la, lb, b"/", None, 1000)
        # What the scan counts as it goes; computed from the logs only for
        # snapshots no scan counted (recovered, older), once each.
        counts = timed("figures from the logs: A to B, whole logs", compute.compare, la, lb).counts
        print(f"  {len(changes)} changes on the page; figures {counts}")


if __name__ == "__main__":
    main()
