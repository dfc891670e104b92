"""
Maintenance jobs (lease renewal, check and repair, restore drills, forget
and prune): what one run of a job sees, and how it survives a restart.

A job is ``async def job(ctx: JobContext) -> dict`` (its result, JSON).  It
reports progress by updating ``ctx.progress`` (a JSON-able dict shown in
``GET /v1/status`` and ``/metrics``), marks the items it has finished with
``ctx.mark_done`` so that a run interrupted by a restart skips them when it
is resumed, and calls ``ctx.check_stopping()`` between items so that a
daemon stop does not wait for a long walk.  The scheduler
(``maintenance.scheduler``) moves a run through the ``jobs`` table
(``state.jobs``); a job only touches its own items.
"""

import sqlite3
from typing import TYPE_CHECKING

import attr
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from gridbackupd.errors import GridBackupError
from gridbackupd.state import jobs as jobstate

if TYPE_CHECKING:
    from gridbackupd.grid.client import TahoeClient
    from gridbackupd.restore.requests import Restorer
    from gridbackupd.statedir import StateDir
    from gridbackupd.upload.publisher import Publisher


class JobStopped(GridBackupError):
    """The daemon is stopping: the job ends here and is resumed at the next start."""


@attr.define(eq=False)
class JobContext:
    reactor: IReactorFromThreads
    conn: sqlite3.Connection  # the daemon's: use it on the reactor thread only
    db_path: str  # for a worker thread's own connection
    client: "TahoeClient"
    rootcap: str = attr.field(repr=False)
    pool: ThreadPool  # the daemon's worker pool
    statedir: "StateDir"  # the paths under state_dir
    job_id: str
    options: dict = attr.Factory(dict)
    progress: dict = attr.Factory(dict)
    publisher: "Publisher | None" = None  # writer lock, commits; None when read-only
    restorer: "Restorer | None" = None
    stopping: bool = False

    def in_thread(self, fn, *args):
        """``fn(*args)`` in the daemon's worker pool (disk and database work, off the reactor)."""
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def check_stopping(self):
        if self.stopping:
            raise JobStopped("the daemon is stopping")

    def is_done(self, item):
        return jobstate.item_done(self.conn, self.job_id, item)

    def done_items(self):
        return jobstate.done_items(self.conn, self.job_id)

    def mark_done(self, items):
        jobstate.mark_items_done(self.conn, self.job_id, items)
