"""Configuration: good files parse, bad ones give one line naming what is wrong."""

import os
import socket
import subprocess
import sys
import textwrap

import attr
from twisted.trial.unittest import SynchronousTestCase

from gridbackupd.config import (
    DEFAULT_LISTEN,
    BackupConfig,
    MaintenanceConfig,
    RetentionConfig,
    TahoeConfig,
    UploadConfig,
    parse_config,
)
from gridbackupd.errors import ConfigError
from tests.support import REPO

GOOD = """
[gridbackup]
state_dir = %(here)s/state

[tahoe]
node_url = embedded

[backup]
paths =
    /home/alice
    %(here)s/data
exclude =
    *.tmp
"""


class ParseTests(SynchronousTestCase):
    def write(self, text):
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, "gridbackup.ini")
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def error(self, text):
        path = self.write(text)
        with self.assertRaises(ConfigError) as ctx:
            parse_config(path)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        self.assertIn(path, message)
        return message

    def test_good(self):
        path = os.path.abspath(self.write(GOOD))
        here = os.path.dirname(path)
        config = parse_config(path)
        self.assertEqual(config.state_dir, os.path.join(here, "state"))
        self.assertTrue(config.tahoe.embedded)
        self.assertEqual(config.backup.paths, ("/home/alice", os.path.join(here, "data")))
        self.assertEqual(config.backup.exclude, ("*.tmp",))
        self.assertEqual(config.api_listen, DEFAULT_LISTEN)
        self.assertEqual(
            (config.tahoe.storage_nodes, config.tahoe.shares_needed,
             config.tahoe.shares_happy, config.tahoe.shares_total),
            (3, 2, 3, 3),
        )
        self.assertEqual(config.upload.pack_size, 8 * 1024 * 1024)
        self.assertEqual(config.backup.scan_interval, 3600.0)

    def test_defaults_are_the_classes_defaults(self):
        # One table: an option left out has its field's default, and every field is a known key.
        config = parse_config(self.write(GOOD.replace("exclude =\n    *.tmp\n", "")))
        self.assertEqual(config.upload, UploadConfig())
        self.assertEqual(config.retention, RetentionConfig())
        self.assertEqual(config.maintenance, MaintenanceConfig())
        self.assertEqual(config.tahoe, TahoeConfig("embedded"))
        self.assertEqual(config.backup, BackupConfig(paths=config.backup.paths))
        self.assertEqual(config.hostname, socket.gethostname())
        # An empty value is a default too (but an empty user_roots means none).
        for section, cls in [("upload", UploadConfig), ("retention", RetentionConfig),
                             ("maintenance", MaintenanceConfig)]:
            for field in attr.fields(cls):
                if field.name == "user_roots":
                    continue
                path = self.write(GOOD + f"\n[{section}]\n{field.name} =\n")
                self.assertEqual(getattr(parse_config(path), section), getattr(config, section))

    def test_shipped_example_parses(self):
        here = REPO
        config = parse_config(os.path.join(here, "etc", "gridbackup.ini"))
        self.assertTrue(config.tahoe.embedded)
        self.assertEqual(config.backup.paths, (os.path.join(here, "example"),))

    def test_node_url(self):
        path = self.write(GOOD.replace("embedded", "http://127.0.0.1:3456"))
        self.assertEqual(parse_config(path).tahoe.node_url, "http://127.0.0.1:3456/")
        message = self.error(GOOD.replace("embedded", "ftp://x"))
        self.assertIn("[tahoe] node_url = 'ftp://x'", message)
        self.assertIn("embedded", message)

    def test_missing_state_dir(self):
        message = self.error(GOOD.replace("state_dir = %(here)s/state", ""))
        self.assertIn("[gridbackup] state_dir is missing", message)

    def test_relative_path(self):
        message = self.error(GOOD.replace("/home/alice", "home/alice"))
        self.assertIn("[backup] paths = 'home/alice'", message)
        self.assertIn("absolute", message)

    def test_bad_number(self):
        message = self.error(GOOD + "\n[upload]\nparallel = many\n")
        self.assertIn("[upload] parallel = 'many'", message)
        self.assertIn("whole number from 1 to 64", message)

    def test_bad_size_and_duration(self):
        self.assertIn("size such as", self.error(GOOD + "\n[upload]\npack_size = 8 parsecs\n"))
        self.assertIn("duration", self.error(GOOD.replace("[backup]", "[backup]\nscan_interval = often")))

    def test_watch_options(self):
        config = parse_config(self.write(GOOD))
        self.assertEqual((config.backup.watch, config.backup.settle, config.backup.settle_max,
                          config.backup.full_scan_interval), (True, 10.0, 60.0, 86400.0))
        config = parse_config(self.write(GOOD.replace("[backup]", "[backup]\nwatch = no\nsettle = 0.5s")))
        self.assertEqual((config.backup.watch, config.backup.settle), (False, 0.5))
        message = self.error(GOOD.replace("[backup]", "[backup]\nsettle = 0.05s"))
        self.assertIn("[backup] settle = '0.05s': expected a duration of at least 0.1s", message)
        self.assertNotIn("\n", message)
        message = self.error(GOOD.replace("[backup]", "[backup]\nsettle = 2m\nsettle_max = 1m"))
        self.assertIn("[backup] settle_max = '1m': expected a duration of at least settle (120s)", message)
        message = self.error(GOOD.replace("[backup]", "[backup]\nfull_scan_interval = 0"))
        self.assertIn("[backup] full_scan_interval = '0'", message)
        self.assertIn("yes or no", self.error(GOOD.replace("[backup]", "[backup]\nwatch = sometimes")))

    def test_shares(self):
        message = self.error(GOOD.replace("node_url = embedded", "node_url = embedded\nshares_needed = 5"))
        self.assertIn("[tahoe] shares_needed = '5'", message)
        message = self.error(GOOD.replace("node_url = embedded", "node_url = embedded\nstorage_nodes = 2"))
        self.assertIn("at least shares_happy", message)

    def test_unknown_key_and_section(self):
        self.assertIn("[tahoe] nodeurl is not a known option", self.error(GOOD.replace("node_url", "nodeurl")))
        self.assertIn("[bakup] is not a known section", self.error(GOOD + "\n[bakup]\nx = 1\n"))

    def test_bad_endpoint(self):
        message = self.error(GOOD + "\n[api]\nlisten = carrier-pigeon:7\n")
        self.assertIn("[api] listen = 'carrier-pigeon:7'", message)
        message = self.error(GOOD + "\n[api]\nlisten = unix:/" + "x" * 120 + "\n")
        self.assertIn("at most 107 bytes", message)
        path = self.write(GOOD + "\n[api]\nlisten = unix:/run/gridbackup/api.sock\n")
        self.assertEqual(parse_config(path).api_listen, "unix:/run/gridbackup/api.sock")

    def test_retention_and_maintenance(self):
        config = parse_config(self.write(GOOD))
        self.assertTrue(config.retention.policy().empty)
        self.assertEqual(config.maintenance.lease_interval, 7 * 86400)
        path = self.write(GOOD + "\n[retention]\nkeep_daily = 7\nkeep_last = 3\ninterval = 12h\n"
                          "[maintenance]\nlease_interval = 14d\ncheck_repair = no\n"
                          "check_verify_fraction = 0.25\n")
        config = parse_config(path)
        self.assertEqual((config.retention.policy().keep_daily, config.retention.keep_last,
                          config.retention.interval), (7, 3, 43200))
        self.assertEqual((config.maintenance.lease_interval, config.maintenance.check_repair,
                          config.maintenance.check_verify_fraction), (14 * 86400, False, 0.25))
        message = self.error(GOOD + "\n[retention]\nkeep_daily = -1\n")
        self.assertIn("[retention] keep_daily = '-1'", message)
        message = self.error(GOOD + "\n[maintenance]\nlease_interval = 40d\n")
        self.assertIn("[maintenance] lease_interval = '40d'", message)
        self.assertIn("31 days", message)
        message = self.error(GOOD + "\n[maintenance]\ncheck_verify_fraction = 2\n")
        self.assertIn("from 0 to 1", message)
        self.assertIn("[retention] keep_forever is not a known option",
                      self.error(GOOD + "\n[retention]\nkeep_forever = 1\n"))

    def test_unreadable_and_garbage(self):
        with self.assertRaises(ConfigError) as ctx:
            parse_config("/nonexistent/gridbackup.ini")
        self.assertIn("cannot read", str(ctx.exception))
        self.assertIn("not a valid INI file", self.error("this is not ini\n"))


class TwistdTests(SynchronousTestCase):
    """The daemon itself stops on bad configuration or state with one line, no traceback."""

    def refused(self, config_text, prepare=None):
        """Start twistd on ``config_text``; return its one line of complaint."""
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        if prepare is not None:
            prepare(d)
        path = os.path.join(d, "gridbackup.ini")
        with open(path, "w") as f:
            f.write(config_text)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run(
            [twistd, "--nodaemon", "--pidfile=", "gridbackup", "--config", path],
            capture_output=True, text=True, cwd=d, timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        return lines[0]

    def test_bad_config_one_line(self):
        line = self.refused("[gridbackup]\nstate_dir = /tmp/x\n[tahoe]\nnode_url = nowhere\n")
        self.assertIn("[tahoe] node_url = 'nowhere'", line)

    def test_unusable_state_one_line(self):
        def damaged_database(d):
            os.makedirs(os.path.join(d, "state"))
            with open(os.path.join(d, "state", "state.sqlite"), "wb") as f:
                f.write(b"this is not a database" * 100)

        line = self.refused(
            "[gridbackup]\nstate_dir = %(here)s/state\n[tahoe]\nnode_url = http://127.0.0.1:9/\n",
            damaged_database)
        self.assertIn("state database", line)
