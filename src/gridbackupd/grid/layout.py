"""
The names of a backup set's layout on the grid (docs/FORMAT.md "On-grid
layout"), written once: the publisher writes them, recovery, check/repair
and pruning read them, and a rename here is a change of the on-grid format;
and how a reader finds the children of a version 2 index (``read_index``).

::

    ROOT/                       version 1               version 2
    ├── gridbackup.json     SETTINGS
    ├── lock                LOCK
    ├── snapshots/          SNAPSHOTS: one log per snapshot id (v1)
    ├── commits/            COMMITS (v1)
    │   └── commit-<hex>    COMMIT_PREFIX
    │       ├── index       INDEX
    │       └── pack-<hex>  PACK_PREFIX
    ├── snapshot-days/      SNAPSHOT_DAYS (v2): one bucket a day of logs
    │   └── 2026-12-01/<snapshot id>
    └── commit-days/        COMMIT_DAYS (v2): one bucket a day of commits
        └── 2026-12-01/commit-<hex>/...
"""

import re

__all__ = [
    "COMMITS", "COMMIT_DAYS", "COMMIT_PREFIX", "INDEX", "LOCK", "PACK_PREFIX", "SETTINGS",
    "SNAPSHOTS", "SNAPSHOT_DAYS", "commit_path", "layout_dir", "log_path", "read_index",
]

SETTINGS = "gridbackup.json"
LOCK = "lock"
SNAPSHOTS = "snapshots"
COMMITS = "commits"
COMMIT_PREFIX = "commit-"
INDEX = "index"
PACK_PREFIX = "pack-"
SNAPSHOT_DAYS = "snapshot-days"
COMMIT_DAYS = "commit-days"

# Paths under the root (as maintenance.reachable names objects) in either version.
_LOG = re.compile(rf"(?:{SNAPSHOTS}|{SNAPSHOT_DAYS}/[^/]+)/([^/]+)\Z")
_COMMIT_PATH = re.compile(rf"(?:{COMMITS}|{COMMIT_DAYS}/[^/]+)/({COMMIT_PREFIX}[0-9a-f]+)(?:/(.+))?\Z")
_LAYOUT_DIR = re.compile(
    rf"(?:{SNAPSHOTS}|{COMMITS}|{SNAPSHOT_DAYS}|{COMMIT_DAYS}|(?:{SNAPSHOT_DAYS}|{COMMIT_DAYS})/[^/]+)\Z")


def log_path(path):
    """The snapshot id of the log at ``path`` under the root (either version), or None."""
    match = _LOG.match(path)
    return None if match is None else match.group(1)


def commit_path(path):
    """``(commit name, child or None)`` for a commit or a child of one at ``path``, or None."""
    match = _COMMIT_PATH.match(path)
    return None if match is None else (match.group(1), match.group(2))


def layout_dir(path):
    """Whether ``path`` (under the root) is one of the layout's directories: an index or a bucket."""
    return _LAYOUT_DIR.match(path) is not None


async def read_index(client, index_cap):
    """
    The children (name -> DirChild) of every bucket of a version 2 index;
    a name linked in two buckets (a conversion run twice) is taken from the
    newer bucket (the greater name).
    """
    merged = {}
    for _, child in sorted((await client.list_dir(index_cap)).items()):
        merged.update(await client.list_dir(child.cap))
    return merged
