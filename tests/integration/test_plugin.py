"""The twistd plugin is found from the installed package, not only the source tree."""

import os
import subprocess
import sys

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO


class PluginTests(SynchronousTestCase):
    def test_get_plugins(self):
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("gridbackup", makers)
        options = makers["gridbackup"].options()
        here = REPO
        options.parseOptions(["--config", os.path.join(here, "etc", "gridbackup.ini")])
        service = makers["gridbackup"].makeService(options)
        self.assertTrue(IService.providedBy(service))

    def test_twistd_lists_it_outside_the_source_tree(self):
        # From an empty directory, so only the installed copy can be found.
        empty = self.mktemp()
        os.makedirs(empty)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        result = subprocess.run([twistd, "--help"], capture_output=True, text=True,
                                cwd=empty, env=env, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("gridbackup", result.stdout)
        self.assertIn("A backup daemon for Tahoe-LAFS grids", result.stdout)
