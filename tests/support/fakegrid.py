"""
Uploads against the in-memory fake Tahoe: files to blobs, snapshots waiting
for upload, and what the grid holds afterwards, read from the root.
"""

import hashlib
import os

from twisted.internet.defer import Deferred

from gridbackupd.format.index import parse_index_segment
from gridbackupd.scan.values import NewBlob
from gridbackupd.state import db as dbmod
from gridbackupd.state import queue


def run(coro):
    return Deferred.fromCoroutine(coro)


def write_files(rnd, directory, sizes, prefix):
    """Files of random content, one per size, as the blobs a scan would queue."""
    blobs = []
    for i, size in enumerate(sizes):
        data = rnd.randbytes(size)
        path = os.path.join(directory, f"{prefix}{i:04d}").encode()
        with open(path, "wb") as f:
            f.write(data)
        blobs.append(NewBlob(hashlib.sha256(data).hexdigest(), size, path, 0, 0))
    return blobs


def add_uploading_snapshot(conn, base, sid, blobs):
    """A snapshot whose scan is done: its (stand-in) log on disk, its blobs queued."""
    log = os.path.join(base, sid + ".log")
    with open(log, "wb") as f:
        f.write(b"log of " + sid.encode())
    with dbmod.transaction(conn):
        conn.execute(
            "INSERT INTO snapshots (id, state, host, requested, log_path) "
            "VALUES (?, 'uploading', 'h', 0, ?)", (sid, log))
        queue.add_blobs(conn, sid, blobs)


def grid_index(case, client, layout):
    """Every blob reachable through the linked commits: hash -> (pack cap or None, entry)."""
    found = {}
    linked = case.successResultOf(run(layout.linked_commits(client)))
    for child in linked.values():
        listing = case.successResultOf(run(client.list_dir(child.cap)))
        segment = case.successResultOf(run(client.download(listing["index"].cap)))
        parsed = parse_index_segment(segment, {n for n in listing if n.startswith("pack-")})
        for b in parsed.blobs:
            found[b.hash] = (listing[b.pack].cap, b)
        for b in parsed.inline:
            found[b.hash] = (None, b)
    return found
