"""
Watched scan benchmark: one file changed in a large tree, the watched scan
(only the changed directory listed, every other entry taken from the
parent's log) against a full walk of the same tree.

    .venv/bin/python bench/bench_watched.py [--files 1000000] [--per-dir 10]
        [--dir /tmp/gridbackup-bench-watched]

It times ``tolog.scan_to_log`` directly, as bench_scan.py does (no daemon,
no grid): the parent is a full scan of the tree, then one file is
rewritten and the tree scanned twice against that parent, once watched
(the changed file's directory dirty, an incremental log) and once as a
full walk (incremental log too), and the two snapshots compared by their
counts.  The tree (empty files, ``--per-dir`` to a directory, old mtimes)
is generated once under --dir and reused by later runs.
"""

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from gridbackupd.model import LogHeader  # noqa: E402
from gridbackupd.scan.tolog import LogScan, scan_to_log  # noqa: E402
from gridbackupd.scan.values import ScanOptions, ScanProgress  # noqa: E402
from gridbackupd.state import db as dbmod  # noqa: E402

OLD = 1_600_000_000_000_000_000


def make_tree(root, files, per_dir):
    """``files`` empty files, ``per_dir`` to a directory, in directories of 100 directories."""
    marker = root + ".complete"
    if os.path.exists(marker):
        return
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    t0 = time.time()
    made = d = 0
    while made < files:
        top = os.path.join(root, f"top{d // 100:04d}")
        if d % 100 == 0:
            os.mkdir(top)
        directory = os.path.join(top, f"dir{d % 100:02d}")
        os.mkdir(directory)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            for i in range(min(per_dir, files - made)):
                fd = os.open(f"file{i:03d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
                os.utime(fd, ns=(OLD, OLD))
                os.close(fd)
                made += 1
        finally:
            os.close(dfd)
        d += 1
    open(marker, "w").close()
    print(f"  generated {files:,} files in {d:,} directories in {time.time() - t0:.1f} s", flush=True)


def scan(state, root, snapshot_id, previous, kind, changed=None, previous_totals=None):
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
    counts = scan_to_log(LogScan(db_path=db_path, snapshot_id=snapshot_id, header=header,
                                 options=ScanOptions(roots=(root,)), log_path=log_path,
                                 previous_logs=previous, changed=changed, copy_blobs=False,
                                 previous_totals=previous_totals), progress)
    counts["seconds"] = time.perf_counter() - t0
    counts["entries"] = progress.entries
    return counts, log_path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--per-dir", type=int, default=10)
    parser.add_argument("--dir", default="/tmp/gridbackup-bench-watched")
    args = parser.parse_args()
    root = os.path.join(args.dir, f"tree-{args.files}-{args.per_dir}")
    make_tree(root, args.files, args.per_dir)
    state = os.path.join(args.dir, "state")
    shutil.rmtree(state, ignore_errors=True)
    parent, parent_log = scan(state, root, "s1", [], "full")
    print(f"  parent (full walk, full log): {parent['entries']:,} entries in {parent['seconds']:.2f} s")
    changed_dir = os.path.join(root, "top0500" if args.files >= 600_000 else "top0000", "dir50")
    if not os.path.isdir(changed_dir):
        changed_dir = os.path.join(root, "top0000", "dir00")
    with open(os.path.join(changed_dir, "file003"), "wb") as f:
        f.write(b"one file changed\n")
    previous = [("s1", parent_log)]
    # The parent's totals known (as the daemon stores them): the watched
    # scan counts by difference and passes the unchanged sub-trees over.
    watched, _ = scan(state, root, "s2", previous, "incremental",
                      changed=frozenset([os.fsencode(changed_dir)]), previous_totals=parent["totals"])
    assert watched["totals"][0] == watched["entries"]
    full, _ = scan(state, root, "s3", previous, "incremental")
    assert watched["scan"] == "watched" and full["scan"] == "full"
    assert (watched["files"], watched["records"], watched["totals"]) == (
        full["files"], full["records"], full["totals"]), (watched, full)
    for label, c in (("watched scan", watched), ("full walk", full)):
        print(f"  {label}, one file changed, incremental log: {c['seconds']:.2f} s, visited "
              f"{c['visited']:,} of {c['entries']:,} entries, {c['records']} records written")
    print(f"  watched / full: {watched['seconds'] / full['seconds']:.2f} of the time, "
          f"{watched['visited'] / full['visited']:.6f} of the entries visited")


if __name__ == "__main__":
    main()
