"""
The linter and the type checker, run as tests so that `make test` counts
them: ruff over the whole checkout, mypy over the package (settings in
pyproject.toml).
"""

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO


def run_tool(*args):
    env = dict(os.environ, MYPY_CACHE_DIR=os.path.join(REPO, ".mypy_cache"))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


class LintTests(SynchronousTestCase):
    def test_ruff(self):
        result = run_tool("ruff", "check", "--no-cache", ".")
        self.assertEqual(result.returncode, 0, result.stdout)

    def test_mypy(self):
        result = run_tool("mypy")
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("Success", result.stdout)
