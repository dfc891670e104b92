"""Maintenance jobs run by hand against an in-process daemon, for tests."""

import uuid

from gridbackupd.maintenance.reachable import walk


def make_context(daemon, options=None, job_id=None):
    """A job context on the daemon's maintenance runner, under a fresh id unless given one."""
    return daemon.maintenance.context(job_id or f"test-{uuid.uuid4().hex[:8]}", dict(options or {}))


async def reachable_objects(daemon):
    """Every object the daemon's backup set reaches from its root, in walk order."""
    found = []
    await walk(daemon.client, daemon.publisher.layout.root, found.append)
    return found
