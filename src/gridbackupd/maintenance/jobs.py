"""
Maintenance jobs (lease renewal, check and repair, restore drills, forget
and prune): what one run of a job sees, and how it survives a restart.

A job is ``async def job(ctx: JobContext) -> dict`` (its result, JSON).  It
reports progress by updating ``ctx.progress`` (a JSON-able dict shown in
``GET /v1/status`` and ``/metrics``), marks the items it has finished with
``ctx.mark_done`` so that a run interrupted by a restart skips them when it
is resumed, and calls ``ctx.check_stopping()`` between items so that a
daemon stop does not wait for a long walk.  The scheduler (maintenance.py)
owns the ``jobs`` table; a job only touches its own items.
"""

import attr
from twisted.internet.threads import deferToThreadPool

from gridbackupd.errors import GridBackupError
from gridbackupd.state import db as dbmod


class JobStopped(GridBackupError):
    """The daemon is stopping: the job ends here and is resumed at the next start."""


@attr.define(eq=False)
class JobContext:
    reactor: object
    conn: object  # the daemon's SQLite connection: use it on the reactor thread only
    db_path: str  # for a worker thread's own connection
    client: object  # TahoeClient
    rootcap: str = attr.field(repr=False)
    pool: object  # the daemon's worker ThreadPool
    state_dir: str
    job_id: str
    options: dict = attr.Factory(dict)
    progress: dict = attr.Factory(dict)
    publisher: object = None  # the Publisher (writer lock, commits); None when read-only
    restorer: object = None
    stopping: bool = False

    def in_thread(self, fn, *args):
        """``fn(*args)`` in the daemon's worker pool (disk and database work, off the reactor)."""
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def check_stopping(self):
        if self.stopping:
            raise JobStopped("the daemon is stopping")

    def is_done(self, item):
        return self.conn.execute(
            "SELECT 1 FROM job_items WHERE job = ? AND item = ?", (self.job_id, item)
        ).fetchone() is not None

    def done_items(self):
        return {row[0] for row in self.conn.execute(
            "SELECT item FROM job_items WHERE job = ?", (self.job_id,))}

    def mark_done(self, items):
        with dbmod.transaction(self.conn):
            self.conn.executemany(
                "INSERT OR IGNORE INTO job_items (job, item) VALUES (?, ?)",
                [(self.job_id, item) for item in items],
            )
