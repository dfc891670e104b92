"""
The names of a backup set's layout on the grid (docs/FORMAT.md "On-grid
layout"), written once: the publisher writes them, recovery, check/repair
and pruning read them, and a rename here is a change of the on-grid format.

::

    ROOT/
    ├── gridbackup.json     SETTINGS
    ├── lock                LOCK
    ├── snapshots/          SNAPSHOTS: one log per snapshot id
    └── commits/            COMMITS
        └── commit-<hex>    COMMIT_PREFIX
            ├── index       INDEX
            └── pack-<hex>  PACK_PREFIX
"""

__all__ = ["COMMITS", "COMMIT_PREFIX", "INDEX", "LOCK", "PACK_PREFIX", "SETTINGS", "SNAPSHOTS"]

SETTINGS = "gridbackup.json"
LOCK = "lock"
SNAPSHOTS = "snapshots"
COMMITS = "commits"
COMMIT_PREFIX = "commit-"
INDEX = "index"
PACK_PREFIX = "pack-"
