"""
``gridbackup mount``: every snapshot as a read-only FUSE file system.

The daemon builds a per-directory index of each finished snapshot
(``indexer``); the mount process lists from it (``fs``) and reads content
straight from the grid (``gridread``, ``content``, ``blobcache``).
"""
