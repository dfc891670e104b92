"""
What a request asks, read from its query string and body: every helper
here takes a twisted.web Request and raises ``errors.Invalid`` (a 400) for
a value it cannot use, so that handlers and ``browse`` see only checked
values.
"""

import base64
import binascii
import json
import os

from gridbackupd.api import browse
from gridbackupd.errors import Invalid

# A listing's page: its default size and the largest one a client may ask for.
PAGE = 1000
MAX_PAGE = 10000


def query_arg(request, name, default=None):
    """One query parameter as text (the last one if repeated), or ``default``."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("bad_request", f"the query parameter {name!r} is not valid UTF-8") from None


def query_int(request, name, default, low, high):
    """An integer query parameter within [low, high]."""
    text = query_arg(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise Invalid("bad_request", f"{name} must be an integer from {low} to {high}, got {text!r}")
    return value


def path_arg(request, name="path"):
    """The ``path`` query parameter as the raw bytes a log holds, or ``path_b64`` for exact bytes; None if absent."""
    b64 = request.args.get((name + "_b64").encode("ascii"))
    if b64:
        try:
            raw = base64.b64decode(b64[-1], validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("bad_request", f"{name}_b64 is not valid base64") from None
        return browse.checked_path(raw, name + "_b64")
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    return browse.parse_path(os.fsdecode(values[-1]), name)


def json_body(request, allowed=None):
    """The request's body as a JSON object, with only the ``allowed`` keys if given."""
    raw = request.content.read()
    if not raw:
        raise Invalid("bad_request", "a JSON object is required as the request body")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Invalid("bad_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise Invalid("bad_json", "the body must be a JSON object")
    unknown = set(doc) - set(allowed) if allowed is not None else ()
    if unknown:
        raise Invalid("bad_request", f"unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    return doc


def bool_field(doc, key, default=False):
    """``doc[key]`` if it is true or false (``default`` if absent)."""
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise Invalid("bad_request", f"{key} must be true or false")
    return value
