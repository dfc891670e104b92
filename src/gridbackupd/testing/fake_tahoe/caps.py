"""
The fake grid's caps: their shapes, and the deterministic hashing that
makes identical content give identical caps (as convergent encryption does).
"""

from __future__ import annotations

import base64
import hashlib
import re

# Tahoe keeps files up to this many bytes inside the cap itself (URI:LIT:).
LIT_THRESHOLD = 55

B32 = r"[a-z2-7]"
CHK_RE = re.compile(rf"^URI:(CHK|DIR2-CHK):({B32}{{26}}):({B32}{{52}}):(\d+):(\d+):(\d+)$")
LIT_RE = re.compile(rf"^URI:(LIT|DIR2-LIT):({B32}*)$")
DIR_RE = re.compile(rf"^URI:(DIR2|DIR2-RO):({B32}{{26}}):({B32}{{52}})$")

def b32(data: bytes) -> str:
    """Tahoe's base32: lower case, no padding."""
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


def well_formed(cap: str) -> bool:
    """Whether a cap's base32 parts decode canonically (as Tahoe insists)."""
    for m in (CHK_RE.match(cap), DIR_RE.match(cap), LIT_RE.match(cap)):
        if m:
            parts = [p for p in m.groups()[1:] if p and not p.isdigit()]
            try:
                return all(b32(unb32(p)) == p for p in parts)
            except ValueError:
                return False
    return False


def digest(*parts: bytes) -> bytes:
    """SHA-256 of length-prefixed parts: a stable seed for fake keys and ids."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()
