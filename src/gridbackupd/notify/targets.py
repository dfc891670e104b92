"""
The notification targets ``[notify]`` names, built at start: the secret
files are read here (the configuration only checked them), so a secret is
held by its target alone and never by the configuration or a log.
"""

from gridbackupd.notify.command import CommandTarget
from gridbackupd.notify.mail import MailTarget
from gridbackupd.notify.ping import PingTarget
from gridbackupd.notify.secretfile import read_secret, read_url
from gridbackupd.notify.webhook import WebhookTarget


def build(reactor, pool, notify):
    """The targets of ``notify`` (a NotifyConfig): a list, empty when nothing is configured."""
    targets: list = []
    webhook = notify.webhook or (read_url(notify.webhook_file) if notify.webhook_file else None)
    if webhook:
        secret = read_secret(notify.webhook_secret_file).encode() if notify.webhook_secret_file else None
        targets.append(WebhookTarget(reactor, webhook, secret))
    if notify.smtp_host:
        password = read_secret(notify.smtp_password_file) if notify.smtp_password_file else None
        targets.append(MailTarget(reactor, notify.smtp_host, notify.smtp_port, notify.smtp_starttls,
                                  notify.smtp_user, password, notify.mail_from, notify.mail_to))
    if notify.command:
        targets.append(CommandTarget(reactor, pool, notify.command, notify.command_timeout))
    ping = notify.ping_url or (read_url(notify.ping_url_file) if notify.ping_url_file else None)
    if ping:
        targets.append(PingTarget(reactor, ping))
    return targets
