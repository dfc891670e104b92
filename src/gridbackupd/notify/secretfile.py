"""
Secrets of the notification targets (a webhook's or ping's URL, the
webhook's signing key, the SMTP password) are read from files that only
their owner may read: a file readable by group or others is refused, since
whoever can read it can send as us (or, for a chat URL, read our alerts).
"""

import os
import re

URL = re.compile(r"https?://[^/\s?#]+(?:[/?#]\S*)?")


class SecretFileError(ValueError):
    """Why a secret file cannot be used, one line, never its content."""


def read_secret(path):
    """The file's content without its trailing newline; SecretFileError if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise SecretFileError(f"cannot be read ({e.strerror})")
    try:
        st = os.fstat(fd)
        mode = st.st_mode & 0o777
        if mode & 0o077:
            raise SecretFileError(
                f"the file is mode {mode:o}: a secret file must not be readable or writable by group "
                "or others (chmod 600 it)")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(64 * 1024)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretFileError("the file is not UTF-8 text")
    if not text:
        raise SecretFileError("the file is empty")
    return text


def read_url(path):
    """A URL kept in a secret file (it holds a key in its path)."""
    url = read_secret(path)
    if not URL.fullmatch(url):
        raise SecretFileError("the file does not hold one http:// or https:// URL")
    return url
