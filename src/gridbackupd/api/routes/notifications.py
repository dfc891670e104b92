"""Notifications: what was sent to the [notify] targets and what became of it, and a test send."""

from gridbackupd.api.http import Router
from gridbackupd.api.query import query_int
from gridbackupd.errors import Conflict, Unavailable

router = Router()


def _notifier(daemon):
    if daemon.notifier is None:
        raise Unavailable("starting", "the daemon is still starting")
    return daemon.notifier


@router.route("GET", "/v1/notifications")
async def notifications(daemon, request):
    limit = query_int(request, "limit", 50, 1, 200)
    return 200, _notifier(daemon).recent(limit)


@router.route("POST", "/v1/notifications/test")
async def notify_test(daemon, request):
    """A ``test`` event to every target, each tried once; each target's result."""
    notifier = _notifier(daemon)
    if not notifier.targets:
        raise Conflict("no_targets", "no notification target is configured ([notify] in the configuration)")
    return 200, {"results": await notifier.test()}
