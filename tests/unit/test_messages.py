"""
Paths in messages a person reads are text, never a Python repr
(``path b'example/README.txt' is not absolute``); bytes that are not
UTF-8 show as \\xNN escapes.
"""

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.format import logpaths
from tests.support import REPO

SRC = os.path.join(REPO, "src", "gridbackupd")


class PathMessageTests(SynchronousTestCase):
    def test_path_problems_read_as_text(self):
        self.assertEqual(logpaths.path_problem(b"example/README.txt"),
                         "path example/README.txt is not absolute")
        self.assertEqual(logpaths.path_problem(b"/a/../caf\xe9"),
                         "path /a/../caf\\xe9 has an empty, '.' or '..' component")
        self.assertEqual(logpaths.shown("/caf\udce9/\u00e9t\u00e9"), "/caf\\xe9/\u00e9t\u00e9")

    def test_no_repr_of_a_path_in_the_sources(self):
        """No f-string shows a path with !r (a bytes path would read b'...')."""
        found = []
        for top, _, names in os.walk(SRC):
            for name in names:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(top, name)
                with open(path, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        if re.search(r"\{[^{}]*(path|part|target)[^{}]*!r\}", line):
                            found.append(f"{os.path.relpath(path, SRC)}:{number}: {line.strip()}")
        self.assertEqual(found, [])
