"""
The one place where the daemon's parts are wired together.

``from_config(reactor, config)`` builds a ``GridBackupDaemon``: a service
tree whose children are the parts that run (the embedded grid if any, the
backup jobs, the restorer, the API listener, the backup schedule, then, once
the grid is up, the uploader, the grid watch and the maintenance jobs).
Each part is built here from its own config section and the collaborators
it needs; none gets the whole daemon.  Children start in the order they are
added and stop one after another in the reverse order; the daemon owns the
resources they share (the database, the worker thread pool, the Tahoe
client) and closes them last.

The database is opened when the daemon starts, not when it is built:
twistd forks after ``makeService``, and an SQLite connection must not cross
a fork.  So the parts that use it are built at start; the grid-side parts
are built once the grid answers.  The API answers from the first moment,
also while the grid is still starting; scans may run before the grid is up,
uploads wait for it.
"""

import os
import stat

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gridbackupd import clock as clockmod
from gridbackupd import crashpoints
from gridbackupd.api.http import endpoint_description, listen_unix, make_site
from gridbackupd.api.http import listen as api_listen
from gridbackupd.api.routes import router
from gridbackupd.changes.filler import FiguresFiller
from gridbackupd.errors import GridBackupError, ReadOnly, TahoeError, Unavailable, one_line
from gridbackupd.grid.answers import announced_hosts, connected_count, offsite
from gridbackupd.grid.caps import is_read_only
from gridbackupd.grid.client import TahoeClient
from gridbackupd.grid.localgrid import LocalGrid
from gridbackupd.grid.nodes import cached_announcements
from gridbackupd.grid.retry import Backoff
from gridbackupd.maintenance.forget import settle_replaced_logs
from gridbackupd.maintenance.jobs import JobContext
from gridbackupd.maintenance.scheduler import Maintenance
from gridbackupd.mount.indexer import MountIndexer
from gridbackupd.notify.wiring import notifier as notifier_part
from gridbackupd.restore.recover import mark_pending, needs_recovery, recover_state
from gridbackupd.restore.requests import Restorer
from gridbackupd.scan.chunker import ChunkParams
from gridbackupd.scan.hooks import run_command
from gridbackupd.scan.jobs import BackupJobs
from gridbackupd.state import backupset, snapshots
from gridbackupd.state import db as dbmod
from gridbackupd.state.queue import Weights
from gridbackupd.statedir import StateDir
from gridbackupd.upload import sampler
from gridbackupd.upload.allowif import TIMEOUT as ALLOW_IF_TIMEOUT
from gridbackupd.upload.allowif import AllowIf
from gridbackupd.upload.buckets import testing_overrides
from gridbackupd.upload.publisher import Publisher, settings_document
from gridbackupd.upload.uploader import Uploader
from gridbackupd.waiters import OneShot, Waiters
from gridbackupd.watch.watcher import Watcher, off_status, platform_backend

GRID_POLL = 10.0
# Waits between checks of a grid without enough storage servers: 1, 2, 4 ... 30 s.
GRID_WAIT = Backoff(base=1.0, cap=30.0)
WORKER_THREADS = 4


class OrderedServices(MultiService):
    """
    A MultiService that stops its children one after another, last started
    first, each even if another failed to stop (MultiService stops them all
    at once: a scan would then lose the grid under it).
    """

    log = Logger()

    def stopService(self):
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self):
        Service.stopService(self)
        for child in reversed(list(self)):
            try:
                await _as_deferred(child.stopService())
            except Exception:
                self.log.failure("while stopping {child}", child=child)


class Periodic(Service):
    """``call`` every ``interval`` seconds on ``clock`` while running; first at once if ``now``."""

    def __init__(self, clock, interval, call, now=True):
        self.clock = clock
        self.interval = interval
        self.call = call
        self.now = now
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.call)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=self.now)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()


class APIListener(Service):
    """
    The API's listening ports: ``[api] listen`` and, always, the unix socket
    ``state_dir/api.sock`` (the state directory is 0700, so nobody else can
    even reach it; the CLI prefers it).  Where ``[api] listen`` listens is
    written to ``api_endpoint`` for the CLI, and removed at a clean stop.
    ``bind`` listens before the daemon starts anything else, so that a
    daemon that can listen nowhere stops having touched nothing; one that
    loses only ``[api] listen`` (its port taken) answers on the socket and
    says why in ``tcp_error``.
    """

    log = Logger()

    def __init__(self, reactor, description, site, endpoint_file, on_failure, socket_path=None):
        self.reactor = reactor
        self.description = description
        self.site = site
        self.endpoint_file = endpoint_file
        self.on_failure = on_failure
        self.socket_path = socket_path
        self.port = None  # [api] listen's
        self.socket_port = None  # state_dir/api.sock's
        self.tcp_error = None  # why [api] listen could not be bound, one line
        self.socket_error = None  # why api.sock could not be bound, one line
        self._listening_d = None
        self._binding = False

    def status(self):
        """``api`` in GET /v1/status."""
        return {"tcp_error": self.tcp_error, "socket_error": self.socket_error}

    def bind(self):
        """Listen now; raise GridBackupError (one line) if no endpoint can listen."""
        if self._listening_d is not None:
            return
        self._binding = True
        try:
            if self.socket_path is not None:
                self._bind_socket()
            self._listening_d = api_listen(self.reactor, self.description, self.site)
            self._listening_d.addCallbacks(self._listening, self._failed)
        finally:
            self._binding = False
        if self.port is None and self.tcp_error is not None:
            if self.socket_port is None:
                raise GridBackupError(self._no_listener())
            self._lost_tcp()
        elif self.socket_error is not None:
            self.log.error("{why}", why=self.socket_error)

    def _bind_socket(self):
        """api.sock: a socket left there by a daemon that was killed is ours to remove (we hold the lock)."""
        path = self.socket_path
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass

        def refused(f):
            self.socket_error = one_line(f"cannot listen on {path}: {f.getErrorMessage()}")

        d = maybeDeferred(listen_unix, self.reactor, path, self.site)
        d.addCallbacks(lambda port: setattr(self, "socket_port", port), refused)

    def _no_listener(self):
        return "; ".join(why for why in (self.tcp_error, self.socket_error) if why)

    def startService(self):
        super().startService()
        self.bind()

    def _listening(self, port):
        self.port = port
        self._write_endpoint(endpoint_description(port))

    def _write_endpoint(self, description):
        with open(self.endpoint_file, "w") as f:
            f.write(str(description) + "\n")
        self.log.info("API listening on {where}", where=description)

    def _failed(self, f):
        self.tcp_error = one_line(f"cannot listen on {self.description}: {f.getErrorMessage()}")
        if self._binding:
            return
        if self.socket_port is None:
            self.log.error("{why}", why=self.tcp_error)
            self.on_failure(self._no_listener())
        else:
            self._lost_tcp()

    def _lost_tcp(self):
        self.log.error("{why}; the API answers on {path} only", why=self.tcp_error, path=self.socket_path)
        self._write_endpoint("unix:" + self.socket_path)

    async def _stop(self):
        for port in (self.port, self.socket_port):
            if port is not None:
                await port.stopListening()
        await self.site.close_connections()
        if self.port is not None or self.socket_port is not None:
            try:
                os.unlink(self.endpoint_file)
            except FileNotFoundError:
                pass

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


# -- the parts, each from its own config section ---------------------------------


def backup_jobs(reactor, conn, statedir, pool, config, on_scanned, waiters):
    """The scans as ``[backup]`` says, for this host."""
    return BackupJobs(reactor, conn, statedir, pool, config.backup, config.hostname, on_scanned, waiters)


def watcher(reactor, jobs, pool, backup, statedir, backend_factory=None):
    """The watcher over ``[backup] paths``, its set-up walks in the worker pool."""
    return Watcher(reactor, jobs, backup, statedir.root,
                   lambda f, *args: deferToThreadPool(reactor, pool, f, *args),
                   backend_factory if backend_factory is not None else _no_backend_here())


def _no_backend_here():
    factory = platform_backend()
    return factory if factory is not None else (lambda reactor, on_event, on_overflow: None)


def restorer(reactor, conn, statedir, pool, client_getter, hostname, config):
    return Restorer(reactor, conn, client_getter, pool, statedir.tmp, hostname=hostname,
                    grid_wait=config.tahoe.grid_wait)


def publisher(conn, client, backup, upload, waiters, hostname):
    """The one writer of the backup set's mutable directories, with this set's settings."""
    settings = settings_document(ChunkParams(), backup.tiny_max, backup.chunk_threshold, upload.inline_max)
    return Publisher(conn, client, settings, waiters, host=hostname, **testing_overrides())


def uploader(reactor, conn, statedir, pool, client, publisher, upload):
    """The uploader as ``[upload]`` says."""
    return Uploader(
        reactor, conn, client, publisher, pool, statedir.packs,
        pack_size=upload.pack_size, parallel=upload.parallel, inline_max=upload.inline_max,
        max_rate=upload.max_rate, schedule=upload.schedule,
        allow_if=allow_if(reactor, pool, upload.allow_if),
        weights=Weights(upload.weight_recency, upload.weight_small, upload.weight_user,
                        upload.weight_age, upload.user_roots),
        spool_dir=statedir.spool,
    )


def allow_if(reactor, pool, command):
    """``[upload] allow_if``: its command runs in the worker pool, killed with its group at a time-out."""
    if not command:
        return None

    def run(command):
        return deferToThreadPool(reactor, pool, run_command, command, {}, ALLOW_IF_TIMEOUT)

    return AllowIf(reactor, command, run)


def maintenance(reactor, conn, statedir, pool, client, rootcap, publisher, restorer, config, *,
                scan_lock, require_writable, read_only):
    """The maintenance jobs as ``[maintenance]`` and ``[retention]`` say, and what each job sees."""
    template = JobContext(
        reactor=reactor, conn=conn, db_path=statedir.database, client=client, rootcap=rootcap,
        pool=pool, statedir=statedir, job_id="", publisher=publisher, restorer=restorer)
    return Maintenance(reactor, template, config.maintenance, config.retention, config.upload.pack_size,
                       scan_lock, require_writable, read_only=read_only, grid_wait=config.tahoe.grid_wait)


class _RunningPart(Service):
    """A part with ``start()`` and ``stop()`` (the uploader) as a child service."""

    def __init__(self, part):
        self.part = part

    def startService(self):
        super().startService()
        self.part.start()

    def stopService(self):
        super().stopService()
        return self.part.stop()


class GridBackupDaemon(OrderedServices):
    log = Logger()

    def __init__(self, reactor, config, statedir, grid=None, lock=None):
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.statedir = statedir
        self.grid = grid
        # The state directory's lock (StateDir.lock): taken by twistd's
        # makeService before its fork, else when this daemon starts.
        self.lock = lock
        self.api: APIListener | None = None
        self.state = "starting"
        self.error = None
        # Shared resources, opened at start and closed after the children stop.
        self.conn = None
        self.pool = ThreadPool(minthreads=0, maxthreads=WORKER_THREADS, name="gridbackup-work")
        self.client = None
        # The parts built at start (before it, require_ready refuses) and once the grid answers.
        self.jobs = None
        self.restorer = None
        self.publisher = None
        self.uploader = None
        self.maintenance = None
        self.watcher = None  # the watch over [backup] paths, while the daemon backs up with watch = yes
        self.mount_indexer = None
        self.rootcap = None
        self.servers_connected = None
        self.offsite = None  # the connected servers all elsewhere (grid.answers.offsite)
        self.read_only = False  # the root cap gives read access only
        self.recovering = False  # rebuilding the local state from the grid
        self.recovery = None  # what the last recovery found (RecoveryReport.as_dict())
        self.figures = None  # computes the figures no scan counted (changes.filler)
        self.snapshot_waiters = Waiters()
        self.notifier = None  # gridbackupd.notify: [notify]'s targets, GET /v1/notifications
        self.unclean_stop = False  # the last daemon here was killed (its api_endpoint is still there)
        self._ready = None
        # The daemon's state once the grid side is up or gave up, for when_ready.
        self._started = OneShot()
        if grid is not None:
            grid.setServiceParent(self)

    @property
    def db_path(self):
        return self.statedir.database

    @property
    def port(self):
        return self.api.port if self.api is not None else None

    # -- start and stop ----------------------------------------------------

    def privilegedStartService(self):
        """
        Under twistd, after its fork: claim the state directory and bind the
        API before any child starts, so that a daemon that can do neither
        stops here (tap turns the error into one line and exit status 1).
        """
        self._claim_and_listen()
        super().privilegedStartService()

    def _claim_and_listen(self):
        """The state directory's lock (with this pid), the API token and the bound API listener."""
        if self.api is not None:
            return self.api
        if self.lock is None:
            self.lock = self.statedir.lock()
        self.lock.claim()
        self.token = self.statedir.ensure_api_token()
        self.site = make_site(router, self, self.token, self.config.api_allowed_hosts)
        self.unclean_stop = os.path.exists(self.statedir.api_endpoint)
        api = APIListener(self.reactor, self.config.api_listen, self.site,
                          self.statedir.api_endpoint, self._listen_failed, socket_path=self.statedir.api_socket)
        try:
            api.bind()
        except GridBackupError:
            self.lock.release()
            self.lock = None
            raise
        self.api = api
        return api

    def startService(self):
        api = self._claim_and_listen()
        fresh = not self.statedir.has_database()
        self.conn = dbmod.open_database(self.statedir.database)
        moved = snapshots.reroot_logs(self.conn, self.statedir.logs)
        if moved:
            self.log.info("state_dir moved: {n} snapshot logs found again under {logs}",
                          n=moved, logs=self.statedir.logs)
        settle_replaced_logs(self.conn)
        # A root cap without a database: this is a new machine (or a lost
        # state_dir); rebuild the state from the grid before the first scan.
        existing_cap = self.statedir.read_rootcap()
        self.read_only = existing_cap is not None and is_read_only(existing_cap)
        if existing_cap is not None and fresh:
            mark_pending(self.conn)
        self.recovering = needs_recovery(self.conn)
        self.notifier = notifier_part(self.reactor, self.conn, self.pool, self.config,
                                      lambda: (self.uploader, self.publisher),
                                      protected_as_of=self._protected_as_of, crashed=self.unclean_stop)
        self.pool.start()
        jobs = self.jobs = backup_jobs(self.reactor, self.conn, self.statedir, self.pool, self.config,
                                       self._scanned, self.snapshot_waiters)
        restores = self.restorer = restorer(self.reactor, self.conn, self.statedir, self.pool, self._client,
                                            self.config.hostname, self.config)
        self.figures = FiguresFiller(self.reactor, self.pool, self.statedir.database)
        super().startService()
        # Each recovers its interrupted rows as it starts, before the API answers.
        jobs.setServiceParent(self)
        self.figures.setServiceParent(self)
        restores.setServiceParent(self)
        # Bound already; a child here so that it stops before the parts it serves.
        api.setServiceParent(self)
        self.notifier.setServiceParent(self)
        if not self.recovering and not self.read_only:
            self._start_schedule(jobs)
        self._ready = Deferred.fromCoroutine(self._start_grid_side(jobs, restores))
        self._ready.addErrback(self._start_failed)
        self._ready.addBoth(lambda _: self._started.fire(self.state))

    def _listen_failed(self, why):
        self.state = "error"
        self.error = why
        self.reactor.stop()

    def _start_schedule(self, jobs):
        if self.config.backup.watch and self.config.backup.paths:
            # The watcher scans at its start, on changes, every full_scan_interval,
            # and every scan_interval where watching cannot work.
            self.watcher = watcher(self.reactor, jobs, self.pool, self.config.backup, self.statedir)
            self.watcher.setServiceParent(self)
            return
        interval = self.config.backup.scan_interval
        if interval <= 0 or not self.config.backup.paths:
            return
        last = snapshots.last_requested(self.conn)
        due_now = last is None or last + interval <= clockmod.wall()

        def scheduled_scan():
            try:
                jobs.request(tags=("scheduled",))
            except Exception:
                self.log.failure("cannot queue the scheduled scan")

        Periodic(self.reactor, interval, scheduled_scan, now=due_now).setServiceParent(self)

    async def _start_grid_side(self, jobs, restores):
        if self.grid is not None:
            node_url = await self.grid.when_ready()
        else:
            node_url = self.config.tahoe.node_url
        client = self.client = TahoeClient(node_url, clock=self.reactor,
                                           min_servers=self.config.tahoe.shares_happy)
        await self._wait_for_grid(client)
        crashpoints.reached("start.grid_started")
        rootcap = self.rootcap = await self._root_cap(client)
        if self.recovering:
            self.state = "recovering"
            self.log.info("no local state: recovering it from the grid")
            report = await recover_state(self.reactor, self.conn, self.statedir.database, client,
                                         rootcap, self.statedir.logs, self.pool)
            self.recovery = report.as_dict()
            self.recovering = False
            if not self.read_only:
                self._start_schedule(jobs)
        if self.read_only:
            # A read-only root cap: list and restore, never write.
            self._ready_to_serve(client, jobs, restores)
            self.log.info("ready (read-only root cap: no backups): grid at {url}", url=node_url)
            return
        writer = self.publisher = publisher(self.conn, client, self.config.backup, self.config.upload,
                                            self.snapshot_waiters, self.config.hostname)
        await writer.ensure_layout(rootcap)
        writer.heartbeat(self.reactor).setServiceParent(self)
        self.uploader = uploader(self.reactor, self.conn, self.statedir, self.pool, client,
                                 writer, self.config.upload)
        _RunningPart(self.uploader).setServiceParent(self)
        Periodic(self.reactor, sampler.INTERVAL, sampler.UploadSampler(self.conn, self.uploader).sample,
                 now=False).setServiceParent(self)
        self._ready_to_serve(client, jobs, restores)
        self.log.info("ready: grid at {url}", url=node_url)
        jobs.kick()

    def _ready_to_serve(self, client, jobs, restores):
        """The grid side is up: watch the grid, run the restores that wait, and maintenance."""
        Periodic(self.reactor, GRID_POLL, lambda: self._poll_grid(client), now=False).setServiceParent(self)
        self.state = "ready"
        restores.kick()
        # The per-directory index of finished snapshots for `gridbackup mount`.
        indexer = self.mount_indexer = MountIndexer(self.reactor, self.conn, self.pool, self.statedir)
        self.snapshot_waiters.listen(indexer.kick)
        _RunningPart(indexer).setServiceParent(self)
        self.maintenance = maintenance(
            self.reactor, self.conn, self.statedir, self.pool, client, self.rootcap, self.publisher, restores,
            self.config, scan_lock=jobs.scan_lock, require_writable=self.require_writable,
            read_only=self.read_only)
        self.maintenance.setServiceParent(self)

    async def _wait_for_grid(self, client):
        """Wait, however long it takes, until enough storage servers are connected."""
        delays = GRID_WAIT.delays()
        while True:
            try:
                await self._saw_servers(await client.servers())
            except TahoeError as e:
                self.error = str(e)
            else:
                if self.servers_connected >= self.config.tahoe.shares_happy:
                    self.error = None
                    return
                self.error = (f"{self.servers_connected} storage servers connected, "
                              f"{self.config.tahoe.shares_happy} needed")
            self.state = "waiting-for-grid"
            await deferLater(self.reactor, next(delays), lambda: None)

    async def _root_cap(self, client):
        cap = self.statedir.read_rootcap()
        if cap is None:
            check_rootcap(self.statedir, self.conn)
            cap = await client.mkdir()
            self.statedir.write_rootcap(cap)
            self.log.info("created a new backup set; its root cap is in {path}", path=self.statedir.rootcap)
        self.statedir.protect_rootcap()
        return cap

    def _start_failed(self, failure):
        self.state = "error"
        self.error = one_line(failure)
        if failure.check(GridBackupError):
            # A refusal said on purpose (a missing root cap, say): one line, no traceback.
            self.log.error("the daemon could not start its grid side: {why}", why=self.error)
        else:
            self.log.failure("the daemon could not start its grid side", failure)

    async def _poll_grid_async(self, client):
        """
        How many storage servers are connected now, and whether that is
        enough; when it is again, an upload round backing off tries at once.
        """
        happy = self.config.tahoe.shares_happy
        before = self.servers_connected
        try:
            await self._saw_servers(await client.servers())
        except TahoeError as e:
            self.servers_connected = 0
            self.error = one_line(e)
            return
        if self.servers_connected < happy:
            self.error = f"{self.servers_connected} storage servers connected, {happy} needed"
            return
        self.error = None
        if before is not None and before < happy and self.uploader is not None:
            self.log.info("the grid is back ({n} storage servers): uploads go on", n=self.servers_connected)
            self.uploader.wake()

    async def _saw_servers(self, servers):
        """What the client node's welcome page says of the storage servers, and (our own node) where they are."""
        self.servers_connected = connected_count(servers)
        if self.config.tahoe.introducer is not None:
            cached = await deferToThreadPool(self.reactor, self.pool, cached_announcements, self.grid.client_dir)
            self.offsite = offsite(servers, announced_hosts(cached))

    def _poll_grid(self, client):
        return Deferred.fromCoroutine(self._poll_grid_async(client))

    async def _stop_children(self):
        """Stop every child, then close the shared resources: the client, the pool, the database."""
        if self._ready is not None and not self._ready.called:
            self._ready.cancel()
        try:
            await super()._stop_children()
            client = self.client
            if client is not None:
                try:
                    await client.close()
                except Exception:
                    self.log.failure("while closing the Tahoe client")
        finally:
            self.pool.stop()
            if self.conn is not None:
                self.conn.close()
            if self.lock is not None:
                self.lock.release()

    # -- for the API and for tests ----------------------------------------------

    def when_ready(self):
        """Fires with the daemon's state once the grid side is up ("ready") or gave up ("error")."""
        return self._started.observe()

    def wait_for_snapshot(self, snapshot_id):
        """Fires with the end state of a snapshot: complete, incomplete or failed."""
        if self.jobs is None:
            raise Unavailable("starting", "the daemon is still starting")
        return self.jobs.wait(snapshot_id)

    def wait_for_restore(self, restore_id):
        """Fires with the end state of a restore: done, failed or cancelled."""
        if self.restorer is None:
            raise Unavailable("starting", "the daemon is still starting")
        return self.restorer.wait(restore_id)

    def _client(self):
        if self.client is None:
            raise Unavailable("grid_unavailable", "the grid is not connected yet")
        return self.client

    def require_ready(self):
        if self.jobs is None:
            raise Unavailable("starting", "the daemon is still starting")

    def require_writable(self):
        """For requests that would write to the backup set (a backup)."""
        self.require_ready()
        if self.read_only:
            raise ReadOnly("read_only",
                           "the root cap is read-only: this daemon lists and restores, it never backs up")
        if self.recovering:
            raise Unavailable("recovering",
                           "the daemon is rebuilding its state from the grid; back up when it is ready")

    def _protected_as_of(self):
        """Up to when changes are safe, once watching tells (``protected_as_of``); else None (the newest snapshot's)."""
        protected_as_of = getattr(self, "protected_as_of", None)
        return protected_as_of() if protected_as_of is not None else None

    def _scanned(self, snapshot_id):
        if self.uploader is not None:
            self.uploader.wake()

    def watch_status(self):
        """``watch`` in GET /v1/status."""
        if self.watcher is not None:
            return self.watcher.status()
        if not self.config.backup.watch:
            return off_status("[backup] watch = no")
        if not self.config.backup.paths:
            return off_status("no [backup] paths")
        if self.read_only:
            return off_status("the root cap is read-only")
        return off_status("the daemon is starting")

    def protected_as_of(self):
        """
        Up to when every change is in a complete snapshot: now while the
        watcher is healthy with nothing dirty or in a scan, else the start of
        the newest complete snapshot (None without one).
        """
        if self.watcher is not None and self.watcher.healthy():
            return clockmod.wall()
        if self.conn is None:
            return None
        return snapshots.newest_complete_started(self.conn)

    def grid_status(self):
        status = {
            "embedded": self.config.tahoe.embedded,
            "servers_connected": self.servers_connected,
            "servers_needed": self.config.tahoe.shares_happy,
            "error": self.error,
            # The embedded grid is on this machine's disk: no off-site copy.
            "offsite": False if self.config.tahoe.embedded else self.offsite,
        }
        if self.grid is not None:
            # Nodes of the embedded grid that exited by themselves and were started again.
            status["node_restarts"] = self.grid.restarts
            status["last_node_exit"] = self.grid.last_exit
        return status


async def _as_deferred(result):
    """Await what a stop method returned: a Deferred, a coroutine or nothing."""
    if result is None:
        return None
    if hasattr(result, "__await__"):
        return await result
    return result


def check_rootcap(statedir, conn):
    """
    Refuse a missing root cap next to a database of a backup set: making a
    new root would start a new set that skips blobs only the old one holds.
    """
    if statedir.read_rootcap() is None and backupset.on_grid(conn):
        raise GridBackupError(
            f"{statedir.rootcap} is missing, but {statedir.database} belongs to a backup set: "
            "put its root cap back there (gridbackup recover --rootcap-file FILE), "
            "or move the database away to start a new backup set on purpose")


def preflight(config):
    """
    Check, before twistd starts anything, what would otherwise fail later
    with a traceback: no other daemon uses the state directory (returns its
    lock, held), the directory is usable, its database is one this version
    understands and has its root cap.  Raises GridBackupError with one clear line.
    """
    statedir = StateDir(config.state_dir)

    def unwritable(e):
        return GridBackupError(
            f"{config.path}: [gridbackup] state_dir = {config.state_dir!r}: not a writable directory ({e.strerror})")

    try:
        lock = statedir.lock()
    except OSError as e:
        raise unwritable(e)
    try:
        try:
            statedir.check_writable()
        except OSError as e:
            raise unwritable(e)
        # An existing database must be one this version can use; a missing one
        # is left missing, because a root cap without a database means recovery.
        if statedir.has_database():
            conn = dbmod.open_database(statedir.database)
            try:
                check_rootcap(statedir, conn)
            finally:
                conn.close()
    except BaseException:
        lock.release()
        raise
    return lock


def from_config(reactor, config, lock=None):
    """
    The daemon as ``config`` describes it; nothing is opened or started until
    it starts.  ``lock``: the state directory's, if the caller took it (preflight).
    """
    statedir = StateDir(config.state_dir)
    grid = None
    t = config.tahoe
    if t.embedded or t.introducer is not None:
        # The embedded grid; with an introducer, only a client node joined to that grid.
        grid = LocalGrid(reactor, statedir.grid, storage_nodes=t.storage_nodes,
                         needed=t.shares_needed, happy=t.shares_happy, total=t.shares_total,
                         restart_exited=True, introducer=t.introducer)
    return GridBackupDaemon(reactor, config, statedir, grid=grid, lock=lock)
