"""
What a Tahoe capability string says by itself, without asking a node:
whether it is read-only or literal, what kind of node it names, the size
of the file it names; and how to keep caps out of logs.
"""

from __future__ import annotations

import base64
import re

from gridbackupd.model import short_cap

__all__ = [
    "READ_ONLY_DIR_PREFIXES",
    "child_kind",
    "expected_size",
    "is_literal",
    "is_read_only",
    "scrub_caps",
]

# Directory caps that only ever give read access.
READ_ONLY_DIR_PREFIXES = ("URI:DIR2-RO:", "URI:DIR2-CHK:", "URI:DIR2-LIT:", "URI:DIR2-MDMF-RO:")
# Caps that hold their data themselves: no shares, no lease, nothing to check.
_LITERAL_PREFIXES = ("URI:LIT:", "URI:DIR2-LIT:")

# A cap anywhere in a text (a traceback may quote a request body).
_CAP_RE = re.compile(r"(?:ro\.|imm\.)?URI:[A-Za-z0-9-]+(?::[A-Za-z0-9_-]*)*")


def is_read_only(dircap: str) -> bool:
    """Whether a directory cap gives read access only (nothing can be written through it)."""
    return dircap.startswith(READ_ONLY_DIR_PREFIXES)


def is_literal(cap: str | None) -> bool:
    """A literal cap holds its data itself: no shares, no lease, nothing to check."""
    return cap is not None and cap.startswith(_LITERAL_PREFIXES)


def child_kind(cap: str) -> str:
    """The node kind Tahoe expects for a cap in a directory body."""
    return "dirnode" if cap.startswith("URI:DIR2") else "filenode"


def expected_size(cap: str) -> int | None:
    """The size of an immutable file that its cap states, if it does."""
    if cap.startswith("URI:CHK:"):
        try:
            return int(cap.rsplit(":", 1)[1])
        except ValueError:
            return None
    if cap.startswith("URI:LIT:"):
        data = cap[len("URI:LIT:"):].upper()
        try:
            return len(base64.b32decode(data + "=" * (-len(data) % 8)))
        except ValueError:
            return None
    return None


def scrub_caps(text: str) -> str:
    """``text`` with every cap in it abbreviated (safe to log)."""
    return _CAP_RE.sub(lambda m: short_cap(m.group(0)), text)
