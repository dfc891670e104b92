"""
Paths in backup logs and their order.

Records are ordered by ``path_key``, which sorts a directory's descendants
immediately after it: a scanner that lists each directory, sorts the names
bytewise and recurses depth first produces exactly this order, a later scan
can compare with the previous log by a streaming merge, and a restore finds
a sub-tree as one contiguous run (see ``is_in_subtree``).
"""

import os

__all__ = ["is_in_subtree", "path_key", "path_problem", "shown", "validate_path"]


def shown(path):
    """
    A path in a message a person reads: text, never a bytes repr; bytes
    that are not UTF-8 as \\xNN escapes (JSON answers add ``path_b64``).
    """
    if isinstance(path, str):
        path = os.fsencode(path)
    return path.decode("utf-8", "backslashreplace")


def path_key(path):
    """
    The sort key of a valid absolute path: records are in strictly
    increasing ``path_key`` order.

    Comparing keys bytewise is comparing the paths' component tuples: every
    ``/`` becomes NUL, the one byte that is smaller than any byte of a
    component, so ``/a`` < ``/a/b`` < ``/a/c`` < ``/a+`` < ``/ab``.  A
    directory's descendants therefore follow it without a gap, and sorting
    the names of each directory bytewise and recursing depth first walks a
    tree in this order.  ``path`` is not checked (see ``validate_path``).
    """
    return path.replace(b"/", b"\0")


def validate_path(path):
    """
    Raise ``ValueError`` unless ``path`` is a path a backup log may hold:
    bytes, absolute, without NUL, and without empty, ``.`` or ``..``
    components; ``b"/"`` itself is valid.
    """
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(problem)


def path_problem(path):
    """What is wrong with path as a log path, or None."""
    if type(path) is bytes and path[:1] == b"/":
        if path == b"/" or not (
            b"\0" in path
            or b"//" in path
            or b"/./" in path
            or b"/../" in path
            or path.endswith((b"/", b"/.", b"/.."))
        ):
            return None
    if type(path) is not bytes:
        return f"a path must be bytes, not {type(path).__name__}"
    if path == b"/":
        return None
    if not path.startswith(b"/"):
        return f"path {shown(path)} is not absolute"
    if b"\0" in path:
        return f"path {shown(path)} contains NUL"
    if (
        path.endswith(b"/")
        or b"//" in path
        or b"/./" in path
        or b"/../" in path
        or path.endswith(b"/.")
        or path.endswith(b"/..")
    ):
        return f"path {shown(path)} has an empty, '.' or '..' component"
    return None


def is_in_subtree(path, top):
    """Whether ``path`` is ``top`` or below it (both valid paths)."""
    if top == b"/" or path == top:
        return True
    return path.startswith(top) and path[len(top) : len(top) + 1] == b"/"

