"""
The mount process: ``gridbackup mount MOUNTPOINT`` execs this.

It runs in the foreground until the file system is unmounted (``fusermount3
-u``) or interrupted (Ctrl-C, SIGINT or SIGTERM: libfuse unmounts and this
returns).  It needs no daemon to list (the index is a file) and reads
content straight from the Tahoe node; it does need the daemon's embedded
grid running to read content, and waits for it a while (``gridread``).
Exit codes as the ``gridbackup`` command's: 0, 1 failed, 2 usage.
"""

import argparse
import logging
import os
import sys
import time

from gridbackupd.config import parse_config
from gridbackupd.errors import ConfigError
from gridbackupd.state import mountindex

OK, FAILED, USAGE = 0, 1, 2
# Names and attributes never change in a snapshot: the kernel may keep them.
KERNEL_CACHE_SECONDS = 3600
# What libfuse 3's fuse_main returns when a signal ended its loop.
STOPPED_BY_SIGNAL = 8


class _Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def node_url_reader(config):
    """A callable giving the Tahoe node's URL: the configured one, or the embedded client's ``node.url``."""
    tahoe = config.tahoe
    if tahoe.node_url is not None and not tahoe.embedded:
        return lambda: tahoe.node_url
    path = os.path.join(config.statedir.grid, "client", "node.url")

    def read():
        with open(path) as f:
            return f.read().strip()

    return read


def _log(message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    sys.stderr.write(f"{stamp} gridbackup mount: {message}\n")
    sys.stderr.flush()


def _prepare(config, mountpoint):
    if not os.path.isdir(mountpoint):
        raise _Refused(USAGE, f"{mountpoint} is not a directory")
    if not os.path.exists("/dev/fuse"):
        raise _Refused(FAILED, "/dev/fuse does not exist: this machine (or container) has no FUSE")
    try:
        import mfusepy  # noqa: F401  (loads libfuse)
    except (ImportError, OSError) as e:
        raise _Refused(FAILED, f"libfuse 3 cannot be loaded ({e}): install fuse3 (apt-get install fuse3)")
    statedir = config.statedir
    try:
        index = mountindex.open_index(statedir.mount_index, readonly=True)
    except mountindex.IndexMissing:
        raise _Refused(FAILED, f"no mount index in {statedir.root}: start the daemon; "
                               "it indexes each snapshot as it completes (and after gridbackup recover)")
    return index


def run(config, mountpoint):
    """Mount and serve until unmounted; returns an exit code."""
    import mfusepy

    from gridbackupd.mount.blobcache import BlobCache
    from gridbackupd.mount.content import ContentReader
    from gridbackupd.mount.fs import SnapshotFS
    from gridbackupd.mount.gridread import GridReader

    index = _prepare(config, mountpoint)
    statedir = config.statedir
    grid = GridReader(node_url_reader(config), statedir.database)
    reader = ContentReader(grid, BlobCache(statedir.mount_cache, config.mount.cache_size), _log)
    fs = SnapshotFS(index, reader, config.hostname, _log)
    count = len(mountindex.snapshots(index))
    _log(f"{count} snapshots mounted read-only at {mountpoint}; "
         f"Ctrl-C (or fusermount3 -u {mountpoint}) unmounts")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        mfusepy.FUSE(fs, mountpoint, foreground=True, ro=True, default_permissions=True, nodev=True,
                     nosuid=True, fsname="gridbackup", subtype="gridbackup",
                     entry_timeout=KERNEL_CACHE_SECONDS, attr_timeout=KERNEL_CACHE_SECONDS,
                     kernel_cache=True, max_threads=16)
    except RuntimeError as e:
        # fuse_main says 8 when its loop ended by a signal (Ctrl-C, SIGTERM): unmounted, as asked.
        if str(e) != str(STOPPED_BY_SIGNAL) or os.path.ismount(mountpoint):
            raise _Refused(FAILED, f"cannot mount at {mountpoint}: libfuse's fuse_main failed ({e})")
    finally:
        reader.close()
        index.close()
    _log(f"unmounted {mountpoint}")
    return OK


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gridbackup mount",
                                     description="Mount every snapshot, read-only, at MOUNTPOINT.")
    parser.add_argument("--config", required=True)
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    try:
        config = parse_config(args.config)
        return run(config, os.path.abspath(args.mountpoint))
    except ConfigError as e:
        sys.stderr.write(f"gridbackup: {e}\n")
        return USAGE
    except _Refused as e:
        sys.stderr.write(f"gridbackup: {e.message}\n")
        return e.code
    except KeyboardInterrupt:
        return FAILED
