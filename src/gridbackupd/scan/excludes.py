"""
What a scan leaves out.

By default only two things: the daemon's own state directory, and
directories tagged as caches with a valid ``CACHEDIR.TAG`` (see
https://bford.info/cachedir/).  No guessing by names: a file called
``cache.html`` is data.  The configuration may add:

- glob patterns (``[backup] exclude``, one per line), on raw bytes:

  ========================  =============================================
  ``/abs/path/*.iso``       starts with ``/``: matched against the full path
  ``build/**/*.o``          contains a ``/`` elsewhere: anchored at each
                            backup root (``<root>/build/.../x.o``)
  ``*.tmp``, ``.cache``     no ``/``: matched against the name, anywhere
  ``pattern/``              a trailing ``/``: directories only
  ========================  =============================================

  ``*`` matches within one name (never ``/``), ``?`` one byte of a name,
  ``[abc]``, ``[a-z]``, ``[!abc]`` one byte of a set, ``**`` as a whole
  component any number of components (none included; inside a name it
  is a plain ``*``); ``\\`` escapes the
  next byte.  A directory that matches is not entered.
- marker files (``[backup] exclude_if_present``): a directory holding an
  entry with one of these names is left out, with everything in it;
- ``one_file_system``: directories on another file system than their root
  are recorded but not entered.

The daemon's own FUSE mounts (``gridbackup mount``, see ``mounts``) are
always left out.

All the patterns are compiled into one regular expression matched once per
entry, so an exclusion list costs little whatever its length.
"""

import os
import re
import stat

import attr

from gridbackupd.scan import mounts

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


class PatternError(ValueError):
    """An exclusion pattern that cannot be used."""


def _class(pattern, i):
    """Translate the ``[...]`` set starting at ``pattern[i]``; (regex, next index)."""
    j = i + 1
    negate = False
    if j < len(pattern) and pattern[j : j + 1] in (b"!", b"^"):
        negate = True
        j += 1
    start = j
    if j < len(pattern) and pattern[j : j + 1] == b"]":
        j += 1  # a leading ] is a member
    while j < len(pattern) and pattern[j : j + 1] != b"]":
        j += 1
    if j >= len(pattern):
        return None, i  # no closing ]: a literal [
    members = pattern[start:j]
    out = []
    k = 0
    while k < len(members):
        if k + 2 < len(members) and members[k + 1 : k + 2] == b"-":
            lo, hi = members[k], members[k + 2]
            if lo > hi:
                raise PatternError(f"bad range in {pattern!r}")
            out.append(re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi])))
            k += 3
        else:
            out.append(re.escape(members[k : k + 1]))
            k += 1
    body = b"".join(out)
    if negate:
        return b"[^/" + body + b"]", j + 1
    return b"(?:(?!/)[" + body + b"])", j + 1


def _glob_to_regex(pattern):
    """The regex source (bytes) of a glob over a whole path, without anchors."""
    parts = pattern.split(b"/")
    out = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == b"**":
            if last:
                out.append(b".*")  # everything below (the separator is already out)
            else:
                out.append(b"(?:[^/]*/)*")  # any number of whole components
            continue
        i = 0
        piece = []
        while i < len(part):
            c = part[i : i + 1]
            if c == b"*":
                # ``**`` inside a name is a plain ``*``, as in gitignore.
                while part[i : i + 1] == b"*":
                    i += 1
                piece.append(b"[^/]*")
            elif c == b"?":
                piece.append(b"[^/]")
                i += 1
            elif c == b"[":
                regex, i2 = _class(part, i)
                if regex is None:
                    piece.append(re.escape(c))
                    i += 1
                else:
                    piece.append(regex)
                    i = i2
            elif c == b"\\" and i + 1 < len(part):
                piece.append(re.escape(part[i + 1 : i + 2]))
                i += 2
            else:
                piece.append(re.escape(c))
                i += 1
        out.append(b"".join(piece) + (b"" if last else b"/"))
    return b"".join(out)


def compile_pattern(pattern, roots):
    """
    The regex source matching the full paths ``pattern`` excludes (see the
    module docstring), and whether it applies to directories only.
    """
    if isinstance(pattern, str):
        pattern = os.fsencode(pattern)
    if not pattern or b"\0" in pattern:
        raise PatternError(f"empty pattern or NUL in {pattern!r}")
    dirs_only = pattern.endswith(b"/") and pattern != b"/"
    pattern = pattern.rstrip(b"/") or b"/"
    if pattern.startswith(b"/"):
        return _glob_to_regex(pattern), dirs_only
    if b"/" not in pattern:
        return b"(?:.*/)?" + _glob_to_regex(pattern), dirs_only
    body = _glob_to_regex(pattern)
    anchors = b"|".join(re.escape(r.rstrip(b"/")) for r in roots) or b"(?!)"
    return b"(?:" + anchors + b")/" + body, dirs_only


def _combine(sources):
    if not sources:
        return None
    return re.compile(b"|".join(b"(?:" + s + b")" for s in sources), re.DOTALL)


def valid_cachedir_tag(path):
    """Whether ``path`` is a regular file starting with the CACHEDIR.TAG signature."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.read(fd, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False
    finally:
        os.close(fd)


@attr.frozen
class ExcludeRules:
    """The exclusion settings of a scan, as configured."""

    patterns: tuple = ()
    if_present: tuple = ()  # marker names
    exclude_caches: bool = True
    one_file_system: bool = False
    excluded_dirs: tuple = ()  # absolute paths never entered (the state dir)


class Excluder:
    """The rules of one scan, compiled for the roots it walks."""

    def __init__(self, rules, roots):
        roots = [os.fsencode(r) for r in roots]
        all_sources: list[bytes] = []
        dir_sources: list[bytes] = []
        for p in rules.patterns:
            source, dirs_only = compile_pattern(p, roots)
            (dir_sources if dirs_only else all_sources).append(source)
        self._any = _combine(all_sources)
        self._dirs = _combine(all_sources + dir_sources) if dir_sources else self._any
        self._markers = frozenset(os.fsencode(m) for m in rules.if_present)
        self._caches = rules.exclude_caches
        self.one_file_system = rules.one_file_system
        self._excluded_paths = set()
        self._excluded_ids = set()
        for d in rules.excluded_dirs:
            d = os.fsencode(os.path.normpath(d))
            self._excluded_paths.add(d)
            try:
                st = os.stat(d)
            except OSError:
                continue
            self._excluded_ids.add((st.st_dev, st.st_ino))
        # The daemon's own FUSE mounts (``mounts``): by path, so that their
        # mount point is not even looked at, and by device.
        self._excluded_devs = set()
        for point, dev in mounts.gridbackup_mounts():
            self._excluded_paths.add(point)
            self._excluded_devs.add(dev)
        self.needs_listing = bool(self._markers or self._caches)

    def path_excluded(self, path, is_dir):
        """Whether a pattern excludes ``path``, or it is an excluded directory."""
        if is_dir and path in self._excluded_paths:
            return True
        regex = self._dirs if is_dir else self._any
        return regex is not None and regex.fullmatch(path) is not None

    def dir_excluded(self, path, st, names):
        """
        Why the directory ``path`` (``st`` its lstat, ``names`` its entries'
        names) is left out with everything in it, or None.
        """
        if (st.st_dev, st.st_ino) in self._excluded_ids:
            return "the daemon's state directory"
        if st.st_dev in self._excluded_devs:
            return "a gridbackup mount"
        if self._markers:
            for name in names:
                if name in self._markers:
                    return "holds " + os.fsdecode(name)
        if self._caches and CACHEDIR_TAG in names:
            if valid_cachedir_tag(path.rstrip(b"/") + b"/" + CACHEDIR_TAG):
                return "a cache directory (CACHEDIR.TAG)"
        return None
