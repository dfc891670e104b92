"""
What is sent, when, and what became of it.

Every ``POLL`` seconds (so within 10 s of an event) the notifier reads the
conditions (``conditions.current``) and compares them with those it has
announced (the ``notify_conditions`` table): a new one is announced, one
that lasts is announced again once ``repeat_every`` has passed since the
last time, and one that ended is announced once as ``healthy``.  The
snapshots finished since the last look ping the ping target.

Each notification is recorded first (``notifications``, with a ``pending``
delivery per target), then sent to each target on its own, again after
``RETRY_DELAYS`` on the reactor's clock while it fails; each delivery's
state is kept in the row, so ``GET /v1/notifications`` shows it and a
restart sends what was still pending.
"""

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from gridbackupd import crashpoints
from gridbackupd.errors import one_line
from gridbackupd.notify import conditions as condmod
from gridbackupd.notify.events import document
from gridbackupd.state import notifications as stored

POLL = 5.0
# Waits before the 2nd, 3rd ... attempt of a delivery; after the last, it has failed.
RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)


class Notifier(Service):
    log = Logger()

    def __init__(self, clock, conn, host, targets, *, repeat_every, stale_after, sources=None, poll=POLL):
        self.clock = clock
        self.conn = conn
        self.host = host
        self.targets = list(targets)
        self.repeat_every = repeat_every
        self.stale_after = stale_after
        self.sources = sources if sources is not None else condmod.Sources()
        self.poll = poll
        self.pings = {}  # the ping target's last result: {"time", "ok", "error"}
        self._loop = None
        self._seen = None  # the newest snapshot id looked at for pings
        self._sending = set()  # Deferreds of deliveries in progress (retries included)
        self._own = set()  # ids of the notifications this notifier sends (the others: a restart's pending)
        # Called with (notification id, target name, delivery) after each attempt (tests wait on it).
        self.observers = []

    # -- the service ---------------------------------------------------------------

    def startService(self):
        super().startService()
        self._seen = stored.newest_snapshot_id(self.conn, self.host)
        for row in stored.pending(self.conn):
            if row[0] not in self._own:
                self._resend(row)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.poll, now=False).addErrback(
            lambda f: self.log.failure("the notifier stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for d in list(self._sending):
            d.cancel()

    def tick(self):
        """One look: pings for the snapshots finished since the last, then the conditions."""
        try:
            self._ping_finished()
            self.check()
        except Exception:
            self.log.failure("the notifier could not look at the daemon's state")

    # -- conditions ------------------------------------------------------------------

    def check(self):
        """Announce the conditions that started, are due again, or ended."""
        now = self.clock.seconds()
        active = condmod.current(self.conn, self.host, now, self.stale_after, self.sources)
        announced = stored.conditions(self.conn)
        for condition, (message, details) in sorted(active.items()):
            if condition not in announced:
                self.notify(condition, message, condition=condition, since=now, active=active, details=details,
                            change="started")
            else:
                since, last_sent = announced[condition]
                if now - last_sent >= self.repeat_every:
                    self.notify(condition, message, condition=condition, since=since, repeat=True,
                                active=active, details=details, change="repeated")
        for condition in sorted(set(announced) - set(active)):
            since = announced[condition][0]
            self.notify("healthy", f"{condition} is over", condition=condition, since=since, active=active,
                        change="ended")

    def crash_recovered(self, work):
        """At start, after a daemon that was killed: what its restart redid."""
        self.notify("crash_recovered", "the daemon was not stopped cleanly; on restart: " + "; ".join(work),
                    details={"redone": list(work)})

    # -- sending ---------------------------------------------------------------------

    def notify(self, event, message, change=None, **fields):
        """
        Record a notification and start sending it to every target that
        wants it; its id.  ``change`` ("started", "repeated", "ended"): the
        change of its condition, recorded with it (``stored.add``).
        """
        now = self.clock.seconds()
        doc = document(event, self.host, now, message, **fields)
        targets = [t for t in self.targets if t.wants(event)]
        deliveries = {t.name: {"state": "pending", "attempts": 0, "last_attempt": None, "error": None}
                      for t in targets}
        notification_id = self._record(now, event, doc, deliveries, change)
        self._own.add(notification_id)
        self.log.info("notification {event}: {message}", event=event, message=message)
        for target in targets:
            self._start(self._deliver(notification_id, target, doc, 0))
        return notification_id

    def _record(self, now, event, doc, deliveries, change=None):
        """The notification's row (and its condition's change), durable before anything is sent."""
        notification_id = stored.add(self.conn, now, event, doc["condition"], doc, deliveries, change=change)
        crashpoints.reached("notify.recorded")
        return notification_id

    def _resend(self, row):
        notification_id, _, _, _, doc, deliveries = row
        for target in self.targets:
            delivery = deliveries.get(target.name)
            if delivery is not None and delivery["state"] == "pending":
                self._start(self._deliver(notification_id, target, doc, delivery["attempts"]))

    def _start(self, coroutine):
        d = Deferred.fromCoroutine(coroutine)
        self._sending.add(d)
        d.addErrback(lambda f: f.trap(CancelledError))
        d.addBoth(lambda r: self._sending.discard(d))
        return d

    async def _attempt(self, notification_id, target, doc, attempts):
        """One try; (ok, error) after recording it."""
        try:
            await target.send(doc)
        except CancelledError:
            raise
        except Exception as e:
            error = one_line(e)
        else:
            error = None
            crashpoints.reached("notify.sent")
        attempts += 1
        last = attempts > len(RETRY_DELAYS)
        state = "sent" if error is None else ("failed" if last else "pending")
        delivery = {"state": state, "attempts": attempts, "last_attempt": self.clock.seconds(), "error": error}
        stored.set_delivery(self.conn, notification_id, target.name, delivery)
        for observer in list(self.observers):
            observer(notification_id, target.name, delivery)
        if error is not None:
            self.log.warn("notification {event} to {target} ({where}), attempt {n}: {error}",
                          event=doc["event"], target=target.name, where=target.where, n=attempts, error=error)
        return error is None, error

    async def _deliver(self, notification_id, target, doc, attempts):
        """Send, and again after each delay while it fails."""
        while True:
            ok, _ = await self._attempt(notification_id, target, doc, attempts)
            attempts += 1
            if ok or attempts > len(RETRY_DELAYS):
                return ok
            await deferLater(self.clock, RETRY_DELAYS[attempts - 1], lambda: None)

    async def test(self):
        """Send a ``test`` event to every target once (no retries): ``{target: {"ok", "error", "where"}}``."""
        now = self.clock.seconds()
        doc = document("test", self.host, now, "a test notification (gridbackup notify test)",
                       active=stored.conditions(self.conn))
        deliveries = {t.name: {"state": "pending", "attempts": 0, "last_attempt": None, "error": None}
                      for t in self.targets}
        notification_id = self._record(now, "test", doc, deliveries)
        # At once, each within its transport's time limit (30 s): the CLI waits 60 s for the answer.
        tried = await gatherResults([
            Deferred.fromCoroutine(self._attempt(notification_id, target, doc, len(RETRY_DELAYS)))
            for target in self.targets])
        return {target.name: {"ok": ok, "error": error, "where": target.where}
                for target, (ok, error) in zip(self.targets, tried)}

    # -- pings -------------------------------------------------------------------------

    def _ping_finished(self):
        pingers = [t for t in self.targets if hasattr(t, "ping")]
        finished = stored.snapshots_after(self.conn, self.host, self._seen)
        if finished:
            self._seen = finished[-1][0]
        for target in pingers:
            for snapshot_id, state in finished:
                if state in ("complete", "failed"):
                    self._start(self._ping(target, state == "complete"))

    async def _ping(self, target, ok):
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                await target.ping(ok)
            except CancelledError:
                raise
            except Exception as e:
                self.pings = {"time": self.clock.seconds(), "ok": False, "error": one_line(e)}
                self.log.warn("ping to {where}: {error}", where=target.where, error=self.pings["error"])
            else:
                self.pings = {"time": self.clock.seconds(), "ok": True, "error": None}
                return
            if attempt < len(RETRY_DELAYS):
                await deferLater(self.clock, RETRY_DELAYS[attempt], lambda: None)

    # -- for the API -------------------------------------------------------------------

    def recent(self, limit):
        """The answer of GET /v1/notifications."""
        targets = []
        for t in self.targets:
            entry = {"name": t.name, "where": t.where}
            if t.name == "ping":
                entry["last_ping"] = self.pings or None
            targets.append(entry)
        return {
            "targets": targets,
            "active": [{"condition": c, "since": since, "last_sent": last}
                       for c, (since, last) in sorted(stored.conditions(self.conn).items())],
            "notifications": [
                {"id": i, "time": t, "event": e, "condition": c, "message": doc.get("message"),
                 "repeat": doc.get("repeat", False), "deliveries": deliveries}
                for i, t, e, c, doc, deliveries in stored.recent(self.conn, limit)],
        }
