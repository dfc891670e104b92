"""
JSON decoders for on-grid documents: no NaN or Infinity, no key twice,
and (for formats without fractions) no floats.  Errors are ValueError,
or the caller's format error for ``load_object``.
"""

import json


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def _reject_float(text):
    raise ValueError(f"{text} is not an integer")


def _unique_keys(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("an object has a key twice")
    return obj


def decoder(integers_only=False):
    """A JSONDecoder that refuses what the strict formats refuse."""
    return json.JSONDecoder(
        parse_constant=_reject_constant,
        parse_float=_reject_float if integers_only else None,
        object_pairs_hook=_unique_keys,
    )


_INTEGERS_ONLY = decoder(integers_only=True)


def load_object(data, what, error=ValueError):
    """
    The one JSON object that ``data`` (UTF-8 bytes, no byte order mark,
    integers only) holds; else ``error`` with a message that names ``what``.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise error(f"{what}: expected bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what}: not valid UTF-8") from None
    if text.startswith("\ufeff"):
        raise error(f"{what}: starts with a byte order mark")
    try:
        doc = _INTEGERS_ONLY.decode(text)
    except ValueError as e:
        raise error(f"{what}: not valid JSON: {e}") from None
    if type(doc) is not dict:
        raise error(f"{what}: not a JSON object")
    return doc
