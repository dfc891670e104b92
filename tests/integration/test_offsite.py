"""
Joining a grid of other machines: ``[tahoe] introducer = pb://...``.

The grid here is an introducer and three storage nodes, each its own
``tahoe run`` process started by this test (not by the daemon), listening
on a non-loopback address of this machine where it has one, as storage
nodes on other machines would.  A daemon configured with the introducer
runs its own client node (no storage) and backs up, restores and, from the
root cap with a fresh state_dir, recovers through that grid.
"""

import configparser
import json
import os
import socket
import stat
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gridbackupd.cli.render import offsite_warning, status_lines
from gridbackupd.config import parse_config
from gridbackupd.errors import ConfigError
from gridbackupd.grid import nodes, processes
from gridbackupd.grid.answers import announced_hosts, offsite
from gridbackupd.service import from_config
from tests.support.process import Daemon, free_port

CONFIG = """\
[gridbackup]
state_dir = %(here)s/state
[tahoe]
introducer = {furl}
shares_needed = 2
shares_happy = 3
shares_total = 3
[backup]
paths =
    {tree}
scan_interval = 0
watch = no
[api]
listen = tcp:{port}:interface=127.0.0.1
"""
FURL = "pb://abcdefghijklmnopqrstuvwxyz234567@tcp:192.0.2.9:44801/swissnumsecret"


def outward_address():
    """A non-loopback IPv4 address of this machine, or 127.0.0.1 without one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("203.0.113.1", 9))  # a UDP connect sends no packet
            address = s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    return address if not address.startswith("127.") else "127.0.0.1"


def free_port_on(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SeparateGrid:
    """An introducer and storage nodes on ``host``, each a ``tahoe run`` of its own."""

    def __init__(self, base, host, storage=3):
        self.base = base
        self.host = host
        self.storage = [f"storage{i}" for i in range(1, storage + 1)]
        self.procs = {}
        self.command = nodes.tahoe_command()

    def listen_args(self):
        port = free_port_on(self.host)
        return ["--listen=tcp", f"--port=tcp:{port}:interface={self.host}",
                f"--location=tcp:{self.host}:{port}"]

    def start(self):
        os.makedirs(self.base)
        nodes.run_create(self.command, self.base, "introducer", ["create-introducer"] + self.listen_args())
        self.procs["introducer"], _ = processes.spawn(self.command, os.path.join(self.base, "introducer"))
        path = os.path.join(self.base, "introducer", "private", "introducer.furl")
        deadline = time.monotonic() + 60
        while (furl := nodes.read_furl(path)) is None:
            assert time.monotonic() < deadline, "the introducer wrote no FURL"
            time.sleep(0.2)  # another process: nothing to wait on but its file
        self.furl = furl
        for name in self.storage:
            nodes.run_create(self.command, self.base, name,
                             ["create-node", "--webport=none", f"--nickname={name}"] + self.listen_args(), furl)
            self.procs[name], _ = processes.spawn(self.command, os.path.join(self.base, name))

    def stop_node(self, name):
        proc = self.procs.pop(name)
        processes.terminate_sync([proc], 10)

    def stop(self):
        processes.terminate_sync(list(self.procs.values()), 10)
        self.procs.clear()

    def share_files(self, name):
        count = 0
        for _, _, files in os.walk(os.path.join(self.base, name, "storage", "shares")):
            count += len([f for f in files if f.isdigit()])
        return count


def write_tree(root):
    files = {"a.txt": b"first file\n", "sub/b.bin": os.urandom(200_000), "sub/deeper/c.txt": b"x" * 5000}
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return files


class OffsiteGridTests(TestCase):
    timeout = 600

    async def test_backup_restore_recover_through_an_introducer(self):
        base = os.path.abspath(self.mktemp())
        host = outward_address()
        grid = SeparateGrid(os.path.join(base, "grid"), host)
        self.addCleanup(grid.stop)
        grid.start()
        tree = os.path.join(base, "tree")
        files = write_tree(tree)

        first = await self.daemon(os.path.join(base, "first"), grid.furl, tree)
        status = await first.ready()
        self.assertFalse(status["grid"]["embedded"])
        self.assertEqual(status["grid"]["servers_connected"], 3)
        # Off-site when the servers are reached at an address that is not loopback.
        self.assertIs(status["grid"]["offsite"], True if host != "127.0.0.1" else None)

        # The daemon's own client node, without storage, holds the FURL in
        # a file of its owner's only; no process shows it in its argv.
        state = os.path.join(first.base, "state")
        self.assertEqual(sorted(os.listdir(os.path.join(state, "grid"))), ["client"])
        client = os.path.join(state, "grid", "client")
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read(os.path.join(client, "tahoe.cfg"))
        self.assertEqual(cfg.get("storage", "enabled"), "false")
        introducers = os.path.join(client, "private", "introducers.yaml")
        self.assertEqual(stat.S_IMODE(os.stat(introducers).st_mode), 0o600)
        with open(introducers) as f:
            self.assertEqual(json.load(f)["introducers"]["default"]["furl"], grid.furl)
        swissnum = grid.furl.rsplit("/", 1)[1]
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    self.assertNotIn(swissnum.encode(), f.read())
            except OSError:
                pass

        code, body = await first.call("POST", "/v1/backups")
        self.assertEqual(code, 202)
        snapshot = await first.complete(body["id"])
        self.assertEqual(snapshot["files"], 3)
        # The shares are on the grid's storage nodes, each of them.
        for name in grid.storage:
            self.assertGreater(grid.share_files(name), 0, name)
        await self.restore_and_compare(first, tree, files, os.path.join(base, "restored1"))
        code, listing = await first.call("GET", "/v1/snapshots")
        first_ids = [s["id"] for s in listing["snapshots"] if s["complete"]]
        first.stop()

        # A new machine: the root cap, the same configuration, no state.
        second_base = os.path.join(base, "second")
        os.makedirs(second_base)
        rootcap_file = os.path.join(base, "rootcap")
        with open(os.path.join(state, "private", "rootcap")) as src, open(rootcap_file, "w") as dst:
            dst.write(src.read())
        self.write_config(second_base, grid.furl, tree)
        gridbackup = os.path.join(os.path.dirname(sys.executable), "gridbackup")
        subprocess.run([gridbackup, "--config", os.path.join(second_base, "gridbackup.ini"),
                        "recover", "--rootcap-file", rootcap_file], capture_output=True, text=True)
        # (Its exit status is left alone here: with a state_dir the daemon
        # never started in, it says so after putting the root cap in place.)
        self.assertTrue(os.path.isfile(os.path.join(second_base, "state", "private", "rootcap")))
        second = await self.daemon(second_base, grid.furl, tree, write=False)
        await second.ready()
        code, listing = await second.call("GET", "/v1/snapshots")
        self.assertEqual([s["id"] for s in listing["snapshots"] if s["complete"]], first_ids)

        # 2-of-3: one storage machine lost, the restore still comes back whole.
        grid.stop_node("storage3")
        await self.restore_and_compare(second, tree, files, os.path.join(base, "restored2"))

    def write_config(self, base, furl, tree):
        port = free_port()
        with open(os.path.join(base, "gridbackup.ini"), "w") as f:
            f.write(CONFIG.format(furl=furl, tree=tree, port=port))
        os.chmod(os.path.join(base, "gridbackup.ini"), 0o600)
        return port

    async def daemon(self, base, furl, tree, write=True):
        if write:
            os.makedirs(base)
            port = self.write_config(base, furl, tree)
        else:
            port = parse_config(os.path.join(base, "gridbackup.ini")).api_listen.split(":")[1]
        daemon = Daemon(self, base, int(port))
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    async def restore_and_compare(self, daemon, tree, files, target):
        code, body = await daemon.call("POST", "/v1/restores", {"snapshot": "latest", "target": target})
        self.assertEqual(code, 202, body)

        async def done():
            code, doc = await daemon.call("GET", f"/v1/restores/{body['id']}")
            return doc["state"] in ("done", "failed", "cancelled") and doc

        doc = await daemon.eventually(done, "the restore")
        self.assertEqual((doc["state"], doc["errors"]), ("done", []))
        for rel, data in files.items():
            with open(os.path.join(target, tree.lstrip("/"), rel), "rb") as f:
                self.assertEqual(f.read(), data, rel)


class OffsiteAnswerTests(SynchronousTestCase):
    def test_offsite_from_announcements(self):
        cache = [
            {"key_s": "v0-far", "ann": {
                "anonymous-storage-FURL": "pb://tub@tcp:192.0.2.7:4000,tcp:storage.example.org:4000/swiss",
                "anonymous-storage-NURLs": ["pb://key@192.0.2.7:4000/swiss#v=1"]}},
            {"key_s": "v0-here", "ann": {
                "anonymous-storage-FURL": "pb://tub@tcp:127.0.0.1:4001/swiss",
                "anonymous-storage-NURLs": ["pb://key@127.0.0.1:4001/swiss#v=1"]}},
            {"key_s": "v0-v6", "ann": {"anonymous-storage-FURL": "pb://tub@tcp:[::1]:4002/swiss"}},
            {"key_s": "v0-name", "ann": {"anonymous-storage-FURL": "pb://tub@tcp:localhost:4003/swiss"}},
            "garbage",
        ]
        announced = announced_hosts(cache)
        self.assertEqual(announced["v0-far"], ["192.0.2.7", "storage.example.org", "192.0.2.7"])

        def servers(*connected, other="v0-here"):
            return ([{"nodeid": n, "connection_status": "connected"} for n in connected]
                    + [{"nodeid": other, "connection_status": "Trying to connect"}])

        self.assertIs(offsite(servers("v0-far"), announced), True)
        for near in ("v0-here", "v0-v6", "v0-name", "v0-unknown"):
            self.assertIsNone(offsite(servers("v0-far", near), announced), near)
        self.assertIsNone(offsite(servers(), announced))
        self.assertIsNone(offsite([], announced))
        self.assertEqual(announced_hosts(None), {})

    def test_embedded_grid_is_not_offsite(self):
        base = self.mktemp()
        os.makedirs(base)
        path = os.path.join(base, "gridbackup.ini")
        with open(path, "w") as f:
            f.write("[gridbackup]\nstate_dir = %(here)s/state\n[tahoe]\nnode_url = embedded\n")
        self.assertIs(from_config(reactor, parse_config(path)).grid_status()["offsite"], False)

    def test_status_warns_when_not_offsite(self):
        status = {"state": "ready", "grid": {"embedded": True, "servers_connected": 3, "offsite": False}}
        lines = status_lines(status, tty=False)
        self.assertEqual(len([line for line in lines if line.startswith("warning:")]), 1)
        self.assertIn("only on this machine", "\n".join(lines))
        self.assertEqual(offsite_warning({"offsite": None}), [])
        self.assertEqual(offsite_warning({"offsite": True}), [])


class IntroducerConfigTests(SynchronousTestCase):
    def parse(self, tahoe):
        base = self.mktemp()
        os.makedirs(base)
        path = os.path.join(base, "gridbackup.ini")
        with open(path, "w") as f:
            f.write("[gridbackup]\nstate_dir = %(here)s/state\n[tahoe]\n" + tahoe)
        return parse_config(path)

    def error(self, tahoe):
        return str(self.assertRaises(ConfigError, self.parse, tahoe))

    def test_introducer(self):
        config = self.parse(f"introducer = {FURL}\nshares_needed = 3\nshares_happy = 5\nshares_total = 7\n")
        self.assertEqual(config.tahoe.introducer, FURL)
        self.assertIsNone(config.tahoe.node_url)
        self.assertFalse(config.tahoe.embedded)
        self.assertEqual((config.tahoe.shares_needed, config.tahoe.shares_happy, config.tahoe.shares_total),
                         (3, 5, 7))
        # A secret: not in the config's repr, so never in a log line.
        self.assertNotIn("swissnumsecret", repr(config))

    def test_introducer_and_node_url(self):
        message = self.error(f"introducer = {FURL}\nnode_url = embedded\n")
        self.assertIn("[tahoe] introducer and node_url are both set", message)
        self.assertNotIn("\n", message)
        self.assertNotIn("swissnumsecret", message)

    def test_neither(self):
        self.assertIn("[tahoe] node_url is missing", self.error("shares_needed = 2\n"))

    def test_bad_furl(self):
        message = self.error("introducer = http://example.org/furl\n")
        self.assertIn("[tahoe] introducer", message)
        self.assertIn("pb://", message)
        self.assertNotIn("/furl", message)
