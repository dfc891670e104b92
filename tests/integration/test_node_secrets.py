"""
The introducer's FURL is a secret of the embedded grid: a node is created
by the real ``tahoe create-*`` without it in its argv (which ``ps`` shows
to every local user), and it reaches the node through a file only its
owner reads, which Tahoe itself then reads.
"""

import os
import stat
import subprocess

from allmydata.client import _valid_config
from allmydata.node import read_config
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.grid import nodes

FURL = "pb://abcdefghijklmnopqrstuvwxyz234567@tcp:127.0.0.1:40000/swissnumswissnumswissnum"


class NodeSecretsTests(SynchronousTestCase):
    def test_no_furl_in_the_argv_of_tahoe_create(self):
        basedir = os.path.abspath(self.mktemp())
        os.makedirs(basedir)
        argvs = []
        real_run = subprocess.run

        def run(argv, **kwargs):
            argvs.append(list(argv))
            return real_run(argv, **kwargs)
        self.patch(nodes.subprocess, "run", run)
        for name, args in [(nodes.CLIENT, nodes.client_args(nodes.pick_free_ports(1, set())[0], 2, 3, 3)),
                           ("storage0", nodes.storage_args("storage0", nodes.pick_free_ports(1, set())[0], 2, 3, 3))]:
            nodes.run_create(nodes.tahoe_command(), basedir, name, args, FURL)
            path = os.path.join(basedir, name, "private", "introducers.yaml")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            config = read_config(os.path.join(basedir, name), "portnum", _valid_config=_valid_config())
            [(furl, _)] = config.get_introducer_configuration().values()
            self.assertEqual(furl, FURL)
        self.assertEqual(len(argvs), 2)
        for argv in argvs:
            self.assertFalse([a for a in argv if "pb://" in a or "swissnum" in a], argv)
