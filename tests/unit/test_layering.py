"""
The layering of src/gridbackupd/, checked from the source: which package
may import which, where SQL may be written, and where HTTP may be known.
docs/DESIGN-NOTES.md ("The parts and how they meet") is the same table in
prose; when a rule here changes, change it there too.
"""

import ast
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO

SRC = os.path.join(REPO, "src", "gridbackupd")

#: The plain modules every layer may use: values, exceptions, small helpers.
BASE = {"errors", "model", "waiters", "runner", "statedir", "crashpoints", "clock", "faultpoints", "apisign"}

#: Each layer and the layers it may import (besides itself and BASE).
ALLOWED = {
    "errors": set(),
    "model": set(),
    "waiters": set(),
    "runner": set(),
    "statedir": set(),
    "crashpoints": set(),
    "clock": set(),
    "faultpoints": set(),
    "apisign": set(),
    "format": set(),
    "state": {"format"},
    "changes": {"format", "state"},
    "grid": set(),
    "scan": {"format", "state", "config", "changes"},
    "upload": {"format", "state", "grid"},
    "restore": {"format", "state", "grid", "changes"},
    "maintenance": {"format", "state", "grid", "restore", "upload", "scan", "changes"},
    "api": {"format", "state", "restore", "maintenance", "scan", "upload", "config", "changes"},
    "cli": {"config"},
    "mount": {"format", "state", "config"},
    "config": {"format", "scan", "maintenance", "notify", "upload"},
    "watch": {"scan", "config"},
    "service": {"config", "format", "state", "grid", "scan", "upload", "restore", "maintenance", "api", "notify",
                "watch", "mount", "changes"},
    "tap": {"config", "service"},
    "testing": {"grid", "format"},
    "console": set(),
    "notify": {"state", "scan"},
}

#: The server side of twisted.web: only api/ (and the test fakes) may use it.
WEB_SERVER = re.compile(r"^twisted\.web\.(server|resource|http|static)\b")

SQL_CALL = re.compile(r"\.(execute|executemany|executescript)\(")


def modules():
    """(layer, dotted name, path) of every module under src/gridbackupd."""
    for top, dirs, files in os.walk(SRC):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(top, name)
            rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            if not rel:
                continue
            yield rel[0], ".".join(["gridbackupd", *rel]), path


def imports(dotted, path):
    """Every module name imported by the module at ``path``, made absolute."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            for alias in node.names:
                yield f"{mod}.{alias.name}"


def layer_of(name):
    parts = name.split(".")
    if parts[0] != "gridbackupd" or len(parts) < 2:
        return None
    return parts[1]


class LayeringTests(SynchronousTestCase):
    def test_every_module_has_a_layer(self):
        layers = {layer for layer, _, _ in modules()}
        self.assertTrue(layers)
        self.assertEqual(layers - set(ALLOWED), set(), "a new package needs its row in ALLOWED and in DESIGN-NOTES.md")

    def test_imports_follow_the_layers(self):
        wrong = []
        checked = 0
        for layer, dotted, path in modules():
            for name in imports(dotted, path):
                other = layer_of(name)
                if other is None or other == layer or other in BASE:
                    continue
                checked += 1
                if other not in ALLOWED[layer] and other in ALLOWED:
                    wrong.append(f"{dotted} imports {name}")
        self.assertGreater(checked, 0)
        self.assertEqual(sorted(set(wrong)), [])

    def test_only_api_knows_http_servers(self):
        wrong = []
        for layer, dotted, path in modules():
            if layer in ("api", "testing"):
                continue
            for name in imports(dotted, path):
                if WEB_SERVER.match(name) or name.endswith(".APIError"):
                    wrong.append(f"{dotted} imports {name}")
        self.assertEqual(sorted(set(wrong)), [])

    def test_sql_only_in_state(self):
        wrong = []
        seen_in_state = 0
        for layer, dotted, path in modules():
            with open(path) as f:
                count = len(SQL_CALL.findall(f.read()))
            if layer == "state":
                seen_in_state += count
            elif count and layer != "testing":
                wrong.append(f"{dotted}: {count}")
        self.assertGreater(seen_in_state, 0)
        self.assertEqual(wrong, [])
