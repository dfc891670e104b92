"""
Tahoe's error answers, as the fake node gives them: the status, and a body
shaped like the one Tahoe 1.20 sends (the client reads both).
"""

from __future__ import annotations

import json

TEXT = b"text/plain;charset=utf-8"


class Answer(Exception):
    """Raised inside the fake node to answer with an error."""

    def __init__(self, status, body, content_type=TEXT, headers=()):
        super().__init__(status)
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode("utf-8")
        self.content_type = content_type
        self.headers = headers


def html_error(status, title, message=None):
    para = f"\n    <p>{message}</p>" if message else ""
    return Answer(
        status,
        f"\n<html>\n  <head><title>{status} - {title}</title></head>\n  <body>\n"
        f"    <h1>{title}</h1>{para}\n  </body>\n</html>\n",
        b"text/html; charset=utf-8",
    )


def traceback_answer(request, status, exception, message, where="allmydata/fake.py"):
    """A 500-style traceback answer, plain or HTML as the request asks."""
    short = exception.rsplit(".", 1)[-1]
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    if "text/plain" in accept:
        body = (
            "Traceback (most recent call last):\n"
            f'  File "/site-packages/{where}", line 1, in fake\n'
            f"    raise {short}(msg)\n"
            f"{exception}: {message}\n"
        )
        return Answer(status, body)
    escaped = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = (
        "<!DOCTYPE html>\n<html><head><title>Exception</title></head><body><div>\n"
        f'  <div class="error">\n    <span>{exception}</span>: <span>{escaped}</span>\n  </div>\n'
        '  <div class="stackTrace">\n  </div>\n'
        f'  <div class="error">\n    <span>{exception}</span>: <span>{escaped}</span>\n  </div>\n'
        "</div></body></html>"
    )
    return Answer(status, body, b"text/html")


DEFAULT_BODIES = {
    400: "injected bad request",
    404: None,  # an HTML "No Such Resource" page
    409: "There was already a child by that name, and you asked me to not replace it.",
    410: "NoSharesError: no shares could be found. (injected)",
}


def no_shares(needed):
    """The 410 for an immutable file of which no shares can be found."""
    return Answer(410, (
        "NoSharesError: no shares could be found. Zero shares usually "
        "indicates a corrupt URI, or that no servers were connected, but it "
        "might also indicate severe corruption. You should perform a "
        "filecheck on this object to learn more.\n\n"
        f"The full error message is:\nno shares (need {needed}). "
        "Last failure: None"))


def unrecoverable():
    """The 410 for a directory that cannot be retrieved."""
    return Answer(410, json.dumps({"error": (
        "UnrecoverableFileError: the directory (or mutable file) could not be "
        "retrieved, because there were insufficient good shares. This might "
        "indicate that no servers were connected, insufficient servers were "
        "connected, the URI was corrupt, or that shares have been lost due to "
        "server departure, hard drive failure, or disk corruption. You should "
        "perform a filecheck on this object to learn more.")}), b"text/html")
