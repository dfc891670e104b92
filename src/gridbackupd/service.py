"""
The one place where the daemon's parts are wired together.

``from_config(reactor, config)`` builds a ``GridBackupDaemon``, a
MultiService that owns the database, the worker thread pool, the embedded
grid (if any), the API listener, the backup jobs, the uploader and the
restorer.  The API answers from the first moment, also while the grid is
still starting; scans may run before the grid is up, uploads wait for it.
"""

import os
import secrets

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gridbackupd.api.http import endpoint_description, make_site
from gridbackupd.api.http import listen as api_listen
from gridbackupd.api.routes import router
from gridbackupd.errors import APIError, GridBackupError, TahoeError
from gridbackupd.grid.localgrid import LocalGrid
from gridbackupd.grid.tahoe import TahoeClient
from gridbackupd.maintenance.scheduler import Maintenance
from gridbackupd.restore.recover import is_read_only, mark_pending, needs_recovery, recover_state
from gridbackupd.restore.requests import Restorer
from gridbackupd.scan.backup import BackupJobs
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.state import db as dbmod
from gridbackupd.state.queue import Weights
from gridbackupd.upload.publisher import Publisher, settings_document
from gridbackupd.upload.uploader import Uploader
from gridbackupd.waiters import Waiters

GRID_POLL = 10.0
WORKER_THREADS = 4


def write_private(path, text):
    """Write a secret file readable by its owner only, atomically."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_private(path):
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def make_state_dir(state_dir):
    """
    The state directory, owner only: it holds caps (the database), the
    content of files waiting to be uploaded (packs, spool) and logs that
    name every backed-up file.
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    os.chmod(state_dir, 0o700)


def ensure_private_dir(state_dir):
    private = os.path.join(state_dir, "private")
    os.makedirs(private, mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    token_path = os.path.join(private, "api_token")
    token = read_private(token_path)
    if token is None:
        token = secrets.token_urlsafe(32)
        write_private(token_path, token + "\n")
    os.chmod(token_path, 0o600)
    return private, token


class GridBackupDaemon(MultiService):
    log = Logger()

    def __init__(self, reactor, config):
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.state = "starting"
        self.error = None
        self.conn = None
        self.client = None
        self.grid = None
        self.jobs = None
        self.uploader = None
        self.restorer = None
        self.publisher = None
        self.maintenance = None
        self.rootcap = None
        self.port = None
        self.servers_connected = None
        self._grid_poll = None
        self._schedule = None
        self._ready = None
        self.read_only = False  # the root cap gives read access only
        self.recovering = False  # rebuilding the local state from the grid
        self.recovery = None  # what the last recovery found (RecoveryReport.as_dict())
        self.snapshot_waiters = Waiters()
        if config.tahoe.embedded:
            self.grid = LocalGrid(
                reactor, config.grid_dir,
                storage_nodes=config.tahoe.storage_nodes,
                needed=config.tahoe.shares_needed,
                happy=config.tahoe.shares_happy,
                total=config.tahoe.shares_total,
            )
            self.grid.setServiceParent(self)

    # -- start and stop ----------------------------------------------------

    def startService(self):
        make_state_dir(self.config.state_dir)
        self.private_dir, self.token = ensure_private_dir(self.config.state_dir)
        self.db_path = os.path.join(self.config.state_dir, "state.sqlite")
        fresh = not os.path.exists(self.db_path)
        self.conn = dbmod.open_database(self.db_path)
        # A root cap without a database: this is a new machine (or a lost
        # state_dir); rebuild the state from the grid before the first scan.
        existing_cap = read_private(os.path.join(self.private_dir, "rootcap"))
        self.read_only = existing_cap is not None and is_read_only(existing_cap)
        if existing_cap is not None and fresh:
            mark_pending(self.conn)
        self.recovering = needs_recovery(self.conn)
        self.pool = ThreadPool(minthreads=0, maxthreads=WORKER_THREADS, name="gridbackup-work")
        self.pool.start()
        self.jobs = BackupJobs(
            self.reactor, self.conn, self.db_path, self.pool, self.config, self._scanned,
            self.snapshot_waiters,
        )
        self.restorer = Restorer(
            self.reactor, self.conn, self._client, self.pool,
            os.path.join(self.config.state_dir, "tmp"), hostname=self.config.hostname,
        )
        self.jobs.recover_interrupted()
        self.restorer.recover_interrupted()
        super().startService()
        self._listen()
        if not self.recovering and not self.read_only:
            self._start_schedule()
        self._ready = Deferred.fromCoroutine(self._start_grid_side())
        self._ready.addErrback(self._start_failed)

    def _listen(self):
        self.site = make_site(router, self, self.token)
        d = api_listen(self.reactor, self.config.api_listen, self.site)

        def listening(port):
            self.port = port
            description = endpoint_description(port)
            with open(os.path.join(self.config.state_dir, "api_endpoint"), "w") as f:
                f.write(str(description) + "\n")
            self.log.info("API listening on {where}", where=description)

        def failed(f):
            self.log.failure("cannot listen on {listen}", f, listen=self.config.api_listen)
            self.state = "error"
            self.error = f"cannot listen on {self.config.api_listen}: {f.getErrorMessage()}"
            self.reactor.stop()

        d.addCallbacks(listening, failed)

    def _start_schedule(self):
        interval = self.config.backup.scan_interval
        if interval <= 0 or not self.config.backup.paths:
            return
        self._schedule = LoopingCall(self._scheduled_scan)
        self._schedule.clock = self.reactor
        last = self.conn.execute("SELECT max(requested) FROM snapshots").fetchone()[0]
        due_now = last is None or last + interval <= self.reactor.seconds()
        self._schedule.start(interval, now=due_now)

    def _scheduled_scan(self):
        try:
            self.jobs.request(tags=("scheduled",))
        except Exception:
            self.log.failure("cannot queue the scheduled scan")

    async def _start_grid_side(self):
        if self.grid is not None:
            node_url = await self.grid.when_ready()
        else:
            node_url = self.config.tahoe.node_url
        self.client = TahoeClient(node_url, clock=self.reactor, min_servers=self.config.tahoe.shares_happy)
        await self._wait_for_grid()
        rootcap = self.rootcap = await self._root_cap()
        if self.recovering:
            self.state = "recovering"
            self.log.info("no local state: recovering it from the grid")
            report = await recover_state(self.reactor, self.conn, self.db_path, self.client, rootcap,
                                         os.path.join(self.config.state_dir, "logs"), self.pool)
            self.recovery = report.as_dict()
            self.recovering = False
            if not self.read_only:
                self._start_schedule()
        if self.read_only:
            # A read-only root cap: list and restore, never write.
            self._start_read_only(node_url)
            return
        up = self.config.upload
        self.publisher = Publisher(self.conn, self.client, settings_document(
            ChunkParams(), self.config.backup.tiny_max, self.config.backup.chunk_threshold,
            up.inline_max),
            self.snapshot_waiters, host=self.config.hostname)
        await self.publisher.ensure_layout(rootcap)
        self.uploader = Uploader(
            self.reactor, self.conn, self.client, self.publisher, self.pool,
            os.path.join(self.config.state_dir, "packs"),
            pack_size=up.pack_size, parallel=up.parallel, inline_max=up.inline_max,
            max_rate=up.max_rate,
            weights=Weights(up.weight_recency, up.weight_small, up.weight_user, up.weight_age,
                            up.user_roots),
            spool_dir=os.path.join(self.config.state_dir, "spool"),
        )
        self.uploader.start()
        self._ready_to_serve()
        self.log.info("ready: grid at {url}", url=node_url)
        self.jobs.kick()

    def _start_read_only(self, node_url):
        self._ready_to_serve()
        self.log.info("ready (read-only root cap: no backups): grid at {url}", url=node_url)

    def _ready_to_serve(self):
        """The grid side is up: watch the grid, run the restores that wait, and maintenance."""
        self._grid_poll = LoopingCall(self._poll_grid)
        self._grid_poll.clock = self.reactor
        self._grid_poll.start(GRID_POLL, now=False)
        self.state = "ready"
        self.restorer.kick()
        self.maintenance = Maintenance(self.reactor, self)
        self.maintenance.start()

    async def _wait_for_grid(self):
        """Wait, however long it takes, until enough storage servers are connected."""
        delay = 1.0
        while True:
            try:
                self.servers_connected = await self.client.connected_servers()
            except TahoeError as e:
                self.error = str(e)
            else:
                if self.servers_connected >= self.config.tahoe.shares_happy:
                    self.error = None
                    return
                self.error = (f"{self.servers_connected} storage servers connected, "
                              f"{self.config.tahoe.shares_happy} needed")
            self.state = "waiting-for-grid"
            await deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, 30.0)

    async def _root_cap(self):
        path = os.path.join(self.private_dir, "rootcap")
        cap = read_private(path)
        if cap is None:
            cap = await self.client.mkdir()
            write_private(path, cap + "\n")
            self.log.info("created a new backup set; its root cap is in {path}", path=path)
        os.chmod(path, 0o600)
        return cap

    def _start_failed(self, failure):
        self.state = "error"
        self.error = failure.getErrorMessage()
        self.log.failure("the daemon could not start its grid side", failure)

    async def _poll_grid_async(self):
        try:
            self.servers_connected = await self.client.connected_servers()
        except TahoeError as e:
            self.servers_connected = 0
            self.error = str(e)

    def _poll_grid(self):
        return Deferred.fromCoroutine(self._poll_grid_async())

    def stopService(self):
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        """Stop every part, each even if another failed to; the pool and database last."""
        for loop in (self._schedule, self._grid_poll):
            if loop is not None and loop.running:
                loop.stop()
        if self._ready is not None and not self._ready.called:
            self._ready.cancel()
        steps = []
        if self.port is not None:
            steps += [self.port.stopListening, self.site.close_connections]
        # Maintenance first: forget and prune hold the scan lock a scan waits for.
        for part in (self.maintenance, self.jobs, self.uploader, self.restorer):
            if part is not None:
                steps.append(part.stop)
        if self.client is not None:
            steps.append(self.client.close)
        steps.append(super().stopService)
        try:
            for step in steps:
                try:
                    await _as_deferred(step())
                except Exception:
                    self.log.failure("while stopping: {step}", step=getattr(step, "__qualname__", step))
        finally:
            self.pool.stop()
            self.conn.close()

    # -- for the API and for tests ----------------------------------------------

    def when_ready(self):
        """Fires with the daemon's state once the grid side is up ("ready") or gave up ("error")."""
        d = Deferred()
        self._ready.addBoth(lambda result: d.callback(self.state) or result)
        return d

    def wait_for_snapshot(self, snapshot_id):
        """Fires with the end state of a snapshot: complete, incomplete or failed."""
        row = self.conn.execute("SELECT state FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        if row is not None and row[0] in ("complete", "incomplete", "failed"):
            return succeed(row[0])
        return self.snapshot_waiters.wait(snapshot_id)

    def wait_for_restore(self, restore_id):
        """Fires with the end state of a restore: done, failed or cancelled."""
        return self.restorer.wait(restore_id)

    def _client(self):
        if self.client is None:
            raise APIError(503, "grid_unavailable", "the grid is not connected yet")
        return self.client

    def require_ready(self):
        if self.jobs is None:
            raise APIError(503, "starting", "the daemon is still starting")

    def require_writable(self):
        """For requests that would write to the backup set (a backup)."""
        self.require_ready()
        if self.read_only:
            raise APIError(403, "read_only",
                           "the root cap is read-only: this daemon lists and restores, it never backs up")
        if self.recovering:
            raise APIError(503, "recovering",
                           "the daemon is rebuilding its state from the grid; back up when it is ready")

    def _scanned(self, snapshot_id):
        if self.uploader is not None:
            self.uploader.wake()

    def grid_status(self):
        return {
            "embedded": self.config.tahoe.embedded,
            "servers_connected": self.servers_connected,
            "servers_needed": self.config.tahoe.shares_happy,
            "error": self.error,
        }


async def _as_deferred(result):
    """Await what a stop method returned: a Deferred, a coroutine or nothing."""
    if result is None:
        return None
    if hasattr(result, "__await__"):
        return await result
    return result


def preflight(config):
    """
    Check, before twistd starts anything, what would otherwise fail later
    with a traceback: the state directory is usable and its database is one
    this version understands.  Raises GridBackupError with one clear line.
    """
    try:
        make_state_dir(config.state_dir)
        probe = os.path.join(config.state_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise GridBackupError(
            f"{config.path}: [gridbackup] state_dir = {config.state_dir!r}: not a writable directory ({e.strerror})"
        )
    # An existing database must be one this version can use; a missing one
    # is left missing, because a root cap without a database means recovery.
    db_path = os.path.join(config.state_dir, "state.sqlite")
    if os.path.exists(db_path):
        dbmod.open_database(db_path).close()


def from_config(reactor, config):
    return GridBackupDaemon(reactor, config)
