"""Where the project's source calls ``module.function(...)``: for tests that check each named point is placed once."""

import ast
import os

from tests.support import REPO

SRC = os.path.join(REPO, "src", "gridbackupd")


def calls_of(module, function):
    """``(call node, "path:line")`` of every ``module.function(...)`` call under src/gridbackupd."""
    for top, _, files in os.walk(SRC):
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = os.path.join(top, file)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == function and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == module):
                    yield node, f"{os.path.relpath(path, SRC)}:{node.lineno}"


def literal_name(arg):
    """The point's name if ``arg`` is a string literal, else None."""
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
