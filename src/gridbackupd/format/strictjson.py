"""
JSON decoders for on-grid documents: no NaN or Infinity, no key twice,
and (for formats without fractions) no floats.  Errors are ValueError.
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
