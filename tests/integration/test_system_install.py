"""
README.md's "Running it as a service", run step by step as written, into a
temporary directory that stands for ``/``.

Every command of the section's ``sh`` blocks (install, upgrade, uninstall)
is handled here, in order; a command this test does not know fails it, so
the README cannot grow a step nobody ran.  What differs from a real
machine, and why:

- the absolute paths the section names (/opt/gridbackup, /etc/gridbackup,
  ...) are moved under the temporary root, in the commands and in the
  installed files;
- ``pip install .`` gets ``--no-deps``: the dependencies (Twisted,
  Tahoe-LAFS, ...) are borrowed from the test's own environment through a
  ``.pth`` file (with a ``twistd`` script next to it) instead of being
  downloaded again; the package itself is built and installed from a copy
  of the working tree;
- systemd does not run here: ``systemctl enable --now`` starts the unit's
  ``ExecStart=`` line as it is installed, its output (which systemd would
  put in the journal) going to a file; ``systemd-analyze verify`` checks the
  installed unit where it is available;
- the installed configuration is edited as the README says a person does:
  the paths to back up (a small tree) and, so as not to collide with a
  ``make run`` on this machine, the API port.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

from twisted.trial.unittest import SkipTest, TestCase

from gridbackupd.config import parse_config
from tests.support import REPO
from tests.support.process import free_port

# The absolute paths the README's commands and the shipped files name.
SYSTEM_PATHS = ("/opt/gridbackup", "/etc/gridbackup", "/etc/systemd/system",
                "/usr/local/bin", "/var/lib/gridbackup", "/run/gridbackup")
SECTION = "## Running it as a service"
# What the copy of the working tree leaves out: build products, not sources.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "run", "build", "_trial_temp*", "*.egg-info",
                                     "__pycache__", ".mypy_cache", ".ruff_cache", "out")


def readme_blocks():
    """The ``sh`` blocks of the README's service section, as lists of commands."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [[line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
            for block in blocks]


def unit_value(path, key):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(key + "="):
                return line[len(key) + 1:].strip()
    return None


class SystemInstall:
    """The state of one run of the README's commands under ``root``."""

    def __init__(self, testcase, root, tree):
        self.testcase = testcase
        self.root = root
        self.tree = tree
        self.daemon = None
        self.port = free_port()
        self.backed_up = os.path.join(root, "data")
        os.makedirs(self.backed_up)
        # What any machine with systemd has already.
        for d in ("/etc/systemd/system", "/usr/local/bin", "/opt"):
            os.makedirs(self.path(d))
        with open(os.path.join(self.backed_up, "notes.txt"), "w") as f:
            f.write("worth keeping\n")

    def path(self, system_path):
        return self.root + system_path

    def remap(self, text):
        for p in SYSTEM_PATHS:
            text = re.sub(re.escape(p) + r"(?=[/\s'\"]|$)", self.root + p, text, flags=re.M)
        return text

    def remap_file(self, path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.remap(text))

    def env(self):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # The CLI's default configuration, /etc/gridbackup/gridbackup.ini, under the root.
        env["GRIDBACKUP_CONFIG"] = self.path("/etc/gridbackup/gridbackup.ini")
        return env

    def sh(self, command, timeout=300):
        result = subprocess.run(["bash", "-ec", command], cwd=self.tree, env=self.env(),
                                capture_output=True, text=True, timeout=timeout)
        self.testcase.assertEqual(result.returncode, 0, f"{command}\n{result.stdout}\n{result.stderr}")
        return result.stdout

    # -- the steps ------------------------------------------------------------

    def run(self, command):
        """One line of the README, or one part of it joined by ``&&``."""
        if " && " in command:
            for part in command.split(" && "):
                self.run(part)
            return
        words = shlex.split(command)
        if words[:3] == ["python3", "-m", "venv"]:
            self.make_venv(words[3])
        elif words[0] == "/opt/gridbackup/bin/pip" and words[1] == "install":
            self.pip_install(words)
        elif words[0] in ("ln", "install", "rm"):
            self.sh(self.remap(command))
            if words[0] == "install" and words[-1].endswith(".ini"):
                self.edit_config(self.path(words[-1]))
            if words[0] == "install" and words[-1].endswith(".service"):
                self.check_unit(self.path(words[-1]))
        elif words == ["systemctl", "daemon-reload"]:
            pass  # nothing to reload without systemd
        elif words == ["systemctl", "enable", "--now", "gridbackup"]:
            self.start()
        elif words == ["systemctl", "restart", "gridbackup"]:
            self.stop()
            self.start()
        elif words == ["systemctl", "disable", "--now", "gridbackup"]:
            self.stop()
        elif words == ["gridbackup", "status"]:
            self.wait_ready()
            out = self.sh(self.path("/usr/local/bin/gridbackup") + " status")
            self.testcase.assertIn("daemon: ready", out)
        elif words == ["gridbackup", "key", "show"]:
            out = self.sh(self.path("/usr/local/bin/gridbackup") + " key show")
            self.testcase.assertIn("URI:DIR2:", out)
            self.testcase.assertIn("URI:DIR2-RO:", out)
        else:
            self.testcase.fail(f"README step not covered by this test: {command}")

    def make_venv(self, target):
        # The interpreter this test's environment was made from: the
        # borrowed packages are built for it.
        python = getattr(sys, "_base_executable", sys.executable)
        self.sh(f"{shlex.quote(python)} -m venv {self.path(target)}")
        purelib = sysconfig.get_paths(vars={"base": self.path(target), "platbase": self.path(target)})["purelib"]
        with open(os.path.join(purelib, "borrowed-test-dependencies.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        # twistd is a script of Twisted's, installed with it; borrowed here.
        twistd = self.path(target + "/bin/twistd")
        with open(twistd, "w") as f:
            f.write(f"#!{self.path(target)}/bin/python\nfrom twisted.scripts.twistd import run\nrun()\n")
        os.chmod(twistd, 0o755)

    def pip_install(self, words):
        # Reinstalling the same version must replace the files: mark one.
        init = self.installed_init()
        if init is not None:
            with open(init, "a") as f:
                f.write("# left by the installed version\n")
        out = self.sh(" ".join([self.remap(words[0])] + words[1:] + ["--no-deps"]))
        self.testcase.assertIn("Successfully installed gridbackupd", out)
        init = self.installed_init()
        self.testcase.assertIsNotNone(init)
        with open(init) as f:
            self.testcase.assertNotIn("left by the installed version", f.read())
        plugin = os.path.join(os.path.dirname(os.path.dirname(init)), "twisted", "plugins",
                              "gridbackup_plugin.py")
        self.testcase.assertTrue(os.path.isfile(plugin), plugin)

    def installed_init(self):
        venv = self.path("/opt/gridbackup")
        purelib = sysconfig.get_paths(vars={"base": venv, "platbase": venv})["purelib"]
        init = os.path.join(purelib, "gridbackupd", "__init__.py")
        return init if os.path.exists(init) else None

    def edit_config(self, path):
        """What the README asks a person to edit, and the root's paths."""
        self.remap_file(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r"^paths =\n(    .*\n)+", f"paths =\n    {self.backed_up}\n", text, flags=re.M)
        text = re.sub(r"^listen = .*$", f"listen = tcp:{self.port}:interface=127.0.0.1", text, flags=re.M)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        config = parse_config(path)
        self.testcase.assertEqual(config.state_dir, self.path("/var/lib/gridbackup"))
        self.testcase.assertEqual(config.backup.paths, (self.backed_up,))

    def check_unit(self, path):
        with open(path, encoding="utf-8") as f:
            shipped = f.read()
        self.testcase.assertIn("gridbackup --config /etc/gridbackup/gridbackup.ini", shipped)
        # The journal keeps what the daemon writes to stdout: no other log.
        self.testcase.assertNotIn("StandardOutput=", shipped)
        self.testcase.assertNotIn("--logfile", shipped)
        self.remap_file(path)
        # The documentation it names is where the install put it.
        docs = unit_value(path, "Documentation").split()
        local = [d[len("file:"):] for d in docs if d.startswith("file:")]
        self.testcase.assertTrue(local, docs)
        for doc in local:
            self.testcase.assertTrue(os.path.isfile(doc), f"Documentation={doc} is not installed")
            with open(doc, encoding="utf-8") as f:
                self.testcase.assertIn("# gridbackupd", f.read())
        if shutil.which("systemd-analyze"):
            result = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
            self.testcase.assertEqual(result.returncode, 0, result.stderr)
            self.testcase.assertEqual(result.stderr.strip(), "")

    # -- the daemon, as systemd would run it ------------------------------------

    def start(self):
        unit = self.path("/etc/systemd/system/gridbackup.service")
        argv = shlex.split(unit_value(unit, "ExecStart"))
        self.journal = open(os.path.join(self.root, "journal.log"), "ab")
        self.daemon = subprocess.Popen(argv, cwd="/", env=self.env(), stdin=subprocess.DEVNULL,
                                       stdout=self.journal, stderr=subprocess.STDOUT)

    def stop(self):
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(90)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None
        self.journal.close()

    def wait_ready(self, timeout=240):
        deadline = time.monotonic() + timeout
        gridbackup = self.path("/usr/local/bin/gridbackup")
        while True:
            result = subprocess.run([gridbackup, "status", "--json"], env=self.env(),
                                    capture_output=True, text=True, timeout=60)
            if result.returncode == 0 and json.loads(result.stdout)["state"] == "ready":
                return
            if self.daemon.poll() is not None:
                self.testcase.fail(f"the daemon exited with {self.daemon.returncode}: {self.journal_text()}")
            if time.monotonic() > deadline:
                self.testcase.fail(f"not ready: {result.stdout} {result.stderr}")
            time.sleep(0.5)  # polling another process: nothing to wait on

    def journal_text(self):
        with open(os.path.join(self.root, "journal.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill_leftovers(self):
        """After a failure: the daemon, and the grid nodes it may have left."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        grid = self.path("/var/lib/gridbackup/grid")
        for name in os.listdir(grid) if os.path.isdir(grid) else ():
            try:
                with open(os.path.join(grid, name, "running.process")) as f:
                    os.kill(int(f.read().split()[0]), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


class SystemInstallTests(TestCase):
    timeout = 900

    def test_readme_service_section(self):
        blocks = readme_blocks()
        self.assertEqual(len(blocks), 3, "install, upgrade and uninstall")
        install, upgrade, uninstall = blocks
        self.assertEqual((len(upgrade), len(uninstall)), (2, 2))
        base = self.mktemp()
        tree = os.path.join(base, "gridbackupd")
        shutil.copytree(REPO, tree, ignore=NOT_SOURCES, symlinks=True)
        system = SystemInstall(self, os.path.abspath(os.path.join(base, "root")), tree)
        self.addCleanup(system.kill_leftovers)

        for command in install:
            system.run(command)
        journal = system.journal_text()
        self.assertIn("ready", journal)
        # It runs the code it installed, not the test's own copy.
        self.assertIn(system.path("/opt/gridbackup"), system.sh(
            system.path("/opt/gridbackup/bin/python") + " -c 'import gridbackupd; print(gridbackupd.__file__)'"))

        for command in upgrade:
            system.run(command)
        system.wait_ready()

        for command in uninstall:
            system.run(command)
        for gone in ("/opt/gridbackup", "/usr/local/bin/gridbackup", "/etc/systemd/system/gridbackup.service"):
            self.assertFalse(os.path.lexists(system.path(gone)), gone)
        # What the README says stays: the configuration and the root cap.
        self.assertTrue(os.path.isfile(system.path("/etc/gridbackup/gridbackup.ini")))
        self.assertTrue(os.path.isfile(system.path("/var/lib/gridbackup/private/rootcap")))

    def test_system_example_config(self):
        config = parse_config(os.path.join(REPO, "etc", "gridbackup.system.ini"))
        self.assertEqual(config.state_dir, "/var/lib/gridbackup")
        self.assertTrue(config.tahoe.embedded)
        self.assertEqual(config.backup.paths, ("/etc", "/home", "/root"))

    def test_shipped_unit_verifies(self):
        """The unit as shipped, its ExecStart pointed at this environment's twistd."""
        if shutil.which("systemd-analyze") is None:
            raise SkipTest("systemd-analyze is not installed")
        with open(os.path.join(REPO, "etc", "gridbackup.service"), encoding="utf-8") as f:
            unit = f.read()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.assertIn("ExecStart=/opt/gridbackup/bin/twistd ", unit)
        path = os.path.join(os.path.abspath(self.mktemp()), "gridbackup.service")
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as f:
            f.write(unit.replace("/opt/gridbackup/bin/twistd", twistd))
        result = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
        self.assertEqual((result.returncode, result.stderr.strip()), (0, ""))

    def test_make_says_it_installs(self):
        """``make`` announces the pip install before it starts it."""
        result = subprocess.run(["make", "-n", "-W", "setup.cfg", "install"], cwd=REPO,
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        first_pip = next(i for i, line in enumerate(lines) if "pip install" in line)
        self.assertTrue(any("installing" in line and line.startswith("echo") for line in lines[:first_pip]),
                        lines)
