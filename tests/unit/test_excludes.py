"""Exclusion rules: glob patterns, markers, CACHEDIR.TAG, the state dir, one file system."""

import fnmatch
import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.scan.excludes import (
    CACHEDIR_SIGNATURE,
    Excluder,
    ExcludeRules,
    PatternError,
    compile_pattern,
)
from gridbackupd.scan.values import ScanOptions, ScanProgress
from gridbackupd.scan.walker import Scanner


def matches(pattern, path, is_dir=False, roots=(b"/r",)):
    ex = Excluder(ExcludeRules(patterns=(pattern,), exclude_caches=False), roots)
    return ex.path_excluded(path, is_dir)


class PatternTests(SynchronousTestCase):
    def test_table(self):
        cases = [
            # (pattern, path, is_dir, excluded)
            (b"*.tmp", b"/r/a/b.tmp", False, True),
            (b"*.tmp", b"/r/a/b.tmpx", False, False),
            (b"*.tmp", b"/r/a.tmp/b", False, False),  # the name only
            (b".cache", b"/r/home/.cache", True, True),
            (b"cache", b"/r/cache.html", False, False),  # no guessing by names
            (b"/r/a/*.o", b"/r/a/x.o", False, True),
            (b"/r/a/*.o", b"/r/a/b/x.o", False, False),  # * stops at /
            (b"/r/a/**/*.o", b"/r/a/x.o", False, True),  # ** may be nothing
            (b"/r/a/**/*.o", b"/r/a/b/c/x.o", False, True),
            (b"/r/a/**", b"/r/a/b/c", False, True),
            (b"/r/a/**", b"/r/a", True, False),
            (b"/r/a/x**y", b"/r/a/x/y", False, False),  # ** in a name is *
            (b"/r/a/x**y", b"/r/a/xzzy", False, True),
            (b"**/node_modules", b"/r/p/node_modules", True, True),
            (b"build/out", b"/r/build/out", True, True),  # anchored at a root
            (b"build/out", b"/r/x/build/out", True, False),
            (b"build/out", b"/s/build/out", True, False),
            (b"**/build/out", b"/r/x/build/out", True, True),
            (b"logs/", b"/r/logs", True, True),  # directories only
            (b"logs/", b"/r/logs", False, False),
            (b"/r/f[0-9]", b"/r/f7", False, True),
            (b"/r/f[0-9]", b"/r/fx", False, False),
            (b"/r/f[!0-9]", b"/r/fx", False, True),
            (b"/r/f[!0-9]", b"/r/f/", False, False),
            (b"/r/f?", b"/r/f/", False, False),
            (b"/r/a\\*", b"/r/a*", False, True),
            (b"/r/a\\*", b"/r/ab", False, False),
            (b"/r/[", b"/r/[", False, True),  # an unclosed [ is literal
            (b"caf\xe9*", b"/r/caf\xe9.txt", False, True),  # bytes, not text
            (b"/r/a.b", b"/r/axb", False, False),  # . is literal
        ]
        for pattern, path, is_dir, expected in cases:
            self.assertEqual(matches(pattern, path, is_dir), expected, (pattern, path, is_dir))

    def test_str_patterns_and_errors(self):
        self.assertTrue(matches("*.iso", b"/r/x.iso"))
        self.assertRaises(PatternError, compile_pattern, b"", [])
        self.assertRaises(PatternError, compile_pattern, b"/r/[z-a]", [])

    def test_many_patterns_one_regex(self):
        ex = Excluder(ExcludeRules(patterns=tuple(f"*.e{i}" for i in range(500))), [b"/r"])
        self.assertTrue(ex.path_excluded(b"/r/x.e499", False))
        self.assertFalse(ex.path_excluded(b"/r/x.e500", False))


# Components of hypothetical paths: a few letters so that matches happen.
_names = st.text(alphabet="ab.", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))
_glob_parts = st.lists(
    st.one_of(_names, st.sampled_from(["*", "?", "a*", "*b", "**"])), min_size=1, max_size=4
)


def reference(pattern_parts, path_parts):
    """Whole-component glob matching by recursion: ** is any number of components."""
    if not pattern_parts:
        return not path_parts
    head, rest = pattern_parts[0], pattern_parts[1:]
    if head == "**":
        if not rest:  # a trailing ** is everything below, not the directory itself
            return len(path_parts) >= 1
        return any(reference(rest, path_parts[i:]) for i in range(len(path_parts) + 1))
    if not path_parts:
        return False
    return fnmatch.fnmatchcase(path_parts[0], head) and reference(rest, path_parts[1:])


class PatternProperties(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(_glob_parts, st.lists(_names, min_size=1, max_size=5))
    def test_absolute_globs_match_like_the_reference(self, pattern_parts, path_parts):
        pattern = "/" + "/".join(pattern_parts)
        path = "/" + "/".join(path_parts)
        regex = re.compile(compile_pattern(pattern.encode(), [])[0], re.DOTALL)
        expected = reference(pattern_parts, path_parts)
        self.assertEqual(bool(regex.fullmatch(path.encode())), expected, (pattern, path))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b),
           st.lists(st.binary(min_size=1, max_size=6).filter(lambda b: b"/" not in b and b"\0" not in b),
                    max_size=3))
    def test_an_escaped_name_matches_that_name_only(self, name, dirs):
        escaped = b"".join(b"\\" + bytes([c]) for c in name)
        path = b"/r/" + b"".join(d + b"/" for d in dirs) + name
        self.assertTrue(matches(escaped, path))
        self.assertFalse(matches(escaped, path + b"x"))
        self.assertFalse(matches(escaped, path + b"/" + name + b"z"))


def scan(roots, **options):
    records = []
    progress = ScanProgress()
    Scanner(ScanOptions(roots=tuple(roots), **options), None, records.append,
            lambda b: None, progress).run()
    return records, progress


class ScannerExclusionTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        layout = {
            "cache.html": b"data",
            "real-cache/CACHEDIR.TAG": CACHEDIR_SIGNATURE + b"\n# made by a test\n",
            "real-cache/blob": b"x",
            "fake-cache/CACHEDIR.TAG": b"Signature: not the one\n",
            "fake-cache/blob": b"x",
            "marked/.nobackup": b"",
            "marked/secret": b"x",
            "state/db": b"x",
            "build/out/x.o": b"x",
            "src/build/out/y.o": b"x",
            "src/a.c": b"x",
            "src/a.o": b"x",
        }
        for rel, data in layout.items():
            path = os.path.join(self.root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    def rel(self, records):
        n = len(self.root)
        return sorted(os.fsdecode(r.path)[n:] for r in records)

    def test_defaults_leave_out_only_state_dir_and_valid_caches(self):
        records, progress = scan([self.root], excluded_dirs=(os.path.join(self.root, "state"),))
        got = self.rel(records)
        self.assertIn("/cache.html", got)
        self.assertIn("/fake-cache/blob", got)
        self.assertIn("/marked/secret", got)
        self.assertNotIn("/real-cache", got)
        self.assertNotIn("/real-cache/blob", got)
        self.assertNotIn("/state", got)
        self.assertEqual(progress.excluded, 2)

    def test_state_dir_by_identity(self):
        # The same directory reached by another spelling of its path.
        os.symlink(self.root, self.root + "-alias")
        records, _ = scan([self.root], excluded_dirs=(self.root + "-alias/state",))
        self.assertNotIn("/state", self.rel(records))

    def test_caches_can_be_kept(self):
        records, _ = scan([self.root], exclude_caches=False)
        self.assertIn("/real-cache/blob", self.rel(records))

    def test_markers_and_patterns(self):
        records, _ = scan(
            [self.root], exclude_if_present=(".nobackup",),
            exclude=("build/out", "*.o", "/nonexistent/**"),
        )
        got = self.rel(records)
        self.assertNotIn("/marked", got)
        self.assertNotIn("/marked/secret", got)
        self.assertNotIn("/build/out", got)
        self.assertIn("/build", got)
        self.assertIn("/src/build/out", got)  # anchored at the root only
        self.assertNotIn("/src/build/out/y.o", got)  # *.o anywhere
        self.assertIn("/src/a.c", got)

    def test_one_file_system(self):
        options = ScanOptions(roots=(self.root,), one_file_system=True)
        records = []
        scanner = Scanner(options, None, records.append, lambda b: None, ScanProgress())
        # As if the root had been reached from another file system: it is
        # recorded, not entered.
        scanner._root_dev = -1
        parent = os.open(os.path.dirname(self.root), os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, parent)
        scanner.visit(os.fsencode(self.root), os.lstat(self.root), parent,
                      os.fsencode(os.path.basename(self.root)))
        self.assertEqual([r.path for r in records], [os.fsencode(self.root)])
        records, _ = scan([self.root], one_file_system=True)
        self.assertIn("/src/a.c", self.rel(records))

    def test_mount_points_are_not_entered(self):
        if not os.path.isdir("/dev/pts") or os.lstat("/dev/pts").st_dev == os.lstat("/dev").st_dev:
            raise self.skipTest("no second file system under /dev here")
        records, _ = scan(["/dev"], one_file_system=True)
        paths = [r.path for r in records]
        self.assertIn(b"/dev/pts", paths)
        self.assertEqual([p for p in paths if p.startswith(b"/dev/pts/")], [])


class ConfigTests(SynchronousTestCase):
    def parse(self, backup):
        from gridbackupd.config import parse_config

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[gridbackup]\nstate_dir = /tmp/x\n[tahoe]\nnode_url = embedded\n"
                    "[backup]\npaths = /r\n" + backup)
        return parse_config(path).backup

    def test_keys(self):
        b = self.parse("exclude_if_present =\n  .nobackup\n  .git-annex\n"
                       "one_file_system = yes\nexclude_caches = no\n")
        self.assertEqual(b.exclude_if_present, (".nobackup", ".git-annex"))
        self.assertEqual((b.one_file_system, b.exclude_caches), (True, False))
        b = self.parse("")
        self.assertEqual((b.one_file_system, b.exclude_caches, b.exclude_if_present), (False, True, ()))

    def test_errors(self):
        from gridbackupd.errors import ConfigError

        for text, needle in [
            ("one_file_system = maybe\n", "expected yes or no"),
            ("exclude_if_present = a/b\n", "expected file names"),
            ("exclude = /r/[z-a]\n", "not a usable pattern"),
        ]:
            e = self.assertRaises(ConfigError, self.parse, text)
            self.assertIn(needle, str(e))
            self.assertIn("[backup]", str(e))
