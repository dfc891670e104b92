"""
The e-mail target: the notification as a short text mail (the JSON
document attached as the body's second half, for filters), sent with
Twisted's ESMTP client; STARTTLS is required unless ``smtp_starttls = no``
(a relay on this machine), and the password comes from a 0600 file.
"""

import json
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from gridbackupd.errors import one_line
from gridbackupd.notify.httpsend import DeliveryError

TIMEOUT = 30.0


def message(doc, mail_from, mail_to):
    msg = EmailMessage()
    msg["Subject"] = doc["title"]
    msg["From"] = mail_from
    msg["To"] = ", ".join(mail_to)
    msg["Date"] = formatdate(doc["time"])
    msg["Message-ID"] = make_msgid("gridbackup")
    msg["X-Gridbackup-Event"] = doc["event"]
    msg.set_content(doc["message"] + "\n\n" + json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return msg.as_bytes()


class MailTarget:
    name = "mail"

    def __init__(self, reactor, host, port, starttls, user, password, mail_from, mail_to):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.starttls = starttls
        self.user = user
        self._password = password
        self.mail_from = mail_from
        self.mail_to = tuple(mail_to)
        self.where = f"{host}:{port}"

    def __repr__(self):
        return f"<MailTarget {self.where}>"

    def wants(self, event):
        return True

    async def send(self, doc):
        # Imported here: twisted.mail is a fifth of a second to import, paid only with a mail target.
        from twisted.mail.smtp import sendmail

        d = sendmail(self.host, self.mail_from, list(self.mail_to), message(doc, self.mail_from, self.mail_to),
                     port=self.port, reactor=self.reactor, username=self.user, password=self._password,
                     requireAuthentication=self.user is not None, requireTransportSecurity=self.starttls)
        d.addTimeout(TIMEOUT, self.reactor)
        try:
            await d
        except Exception as e:
            raise DeliveryError(f"mail to {self.where} failed: {_without(one_line(e), self._password)}")


def _without(text, secret):
    return text.replace(secret, "...") if secret else text
