"""
The node directories of the embedded grid: their names, how they are
created (``tahoe create-*`` into a temporary name, renamed into place when
complete), what their tahoe.cfg says and how it is edited, and the
loopback ports they listen on.  Blocking functions, run in threads.
"""

from __future__ import annotations

import configparser
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys

__all__ = [
    "CLIENT",
    "INTRODUCER",
    "STORAGE_PREFIX",
    "GridStartError",
    "accepts_connections",
    "cached_announcements",
    "client_args",
    "existing_nodes",
    "introducer_args",
    "node_port",
    "pick_free_ports",
    "port_in_use",
    "read_furl",
    "run_create",
    "set_config_values",
    "storage_args",
    "storage_names",
    "tahoe_command",
    "write_introducer",
]

INTRODUCER = "introducer"
CLIENT = "client"
STORAGE_PREFIX = "storage"
CREATING_PREFIX = ".creating-"

# The storage nodes of a private test grid share one disk with everything
# else; Tahoe's default (1G) refuses shares on a nearly full disk.
RESERVED_SPACE = "100M"

_STORAGE_RE = re.compile(r"^storage([1-9][0-9]*)$")


class GridStartError(Exception):
    """
    The embedded grid could not be started; the message says which node
    and why (with the tail of its log where there is one).
    """


def tahoe_command() -> list[str]:
    """
    The command that runs the ``tahoe`` of this Python environment.

    The ``tahoe`` script next to ``sys.executable`` if there is one, else
    ``python -m allmydata.scripts.runner``.  Never looked up on ``PATH``:
    another ``tahoe`` there may belong to another Python and version.
    """
    executable = sys.executable
    script = os.path.join(os.path.dirname(os.path.abspath(executable)), "tahoe")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [executable, "-m", "allmydata.scripts.runner"]


# -- ports ------------------------------------------------------------------


def pick_free_ports(count: int, exclude: set[int]) -> list[int]:
    """
    Bind ``count`` loopback sockets to port 0 at once (so they are
    distinct), read their ports, and close them.  Ports in ``exclude``
    (those of nodes that exist but are not running yet) are skipped.
    """
    held = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def port_in_use(port: int) -> bool:
    """
    Whether something listens on 127.0.0.1:port (as Twisted binds:
    with SO_REUSEADDR, so a connection in TIME_WAIT does not count).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return True
        raise
    finally:
        s.close()
    return False


def accepts_connections(port: int) -> bool:
    """Whether a connection to 127.0.0.1:port succeeds now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


# -- tahoe.cfg and node directories -------------------------------------------


def _read_config(nodedir: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    with open(os.path.join(nodedir, "tahoe.cfg"), encoding="utf-8") as f:
        parser.read_file(f)
    return parser


def _endpoint_port(description: str) -> int | None:
    """
    The port of a ``tcp:PORT:interface=...`` endpoint description.
    """
    parts = description.strip().split(":")
    if len(parts) >= 2 and parts[0] == "tcp" and parts[1].isdigit():
        return int(parts[1])
    return None


def node_port(nodedir: str) -> int | None:
    """
    The port a node listens on: the web port of the client, the tub port
    of the others.  None if it has none.
    """
    config = _read_config(nodedir)
    if os.path.basename(nodedir) == CLIENT:
        return _endpoint_port(config.get("node", "web.port", fallback=""))
    return _endpoint_port(config.get("node", "tub.port", fallback=""))


def set_config_values(nodedir: str, section: str, values: dict[str, str]) -> None:
    """
    Set ``key = value`` lines of one section of tahoe.cfg in place, keeping
    the rest of the file (comments included) as it is.
    """
    path = os.path.join(nodedir, "tahoe.cfg")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    current = None
    seen = set()
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if current == section:
                out.extend(
                    f"{k} = {v}\n" for k, v in values.items() if k not in seen
                )
                seen.update(values)
            current = stripped[1:-1]
        elif current == section and "=" in stripped and not stripped.startswith("#"):
            key = stripped.split("=", 1)[0].strip()
            if key in values:
                line = f"{key} = {values[key]}\n"
                seen.add(key)
        out.append(line)
    missing = [k for k in values if k not in seen]
    if missing:
        if current != section:
            if out and not out[-1].endswith("\n"):
                out.append("\n")
            out.append(f"\n[{section}]\n")
        out.extend(f"{k} = {values[k]}\n" for k in missing)
    new = "".join(out)
    if new != "".join(lines):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def run_create(command: list[str], basedir: str, name: str, args: list[str],
               introducer_furl: str | None = None) -> None:
    """
    Run ``tahoe create-*`` into ``basedir/.creating-NAME`` and rename the
    result to ``basedir/NAME``.  A leftover temporary directory of an
    interrupted creation is removed first.  The introducer's FURL is a
    secret (whoever has it may use the grid's storage), so it is written to
    the node's ``private/introducers.yaml``, never put in an argv that
    ``ps`` shows.
    """
    final = os.path.join(basedir, name)
    tmp = os.path.join(basedir, CREATING_PREFIX + name)
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    result = subprocess.run(
        command + args + [tmp],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=basedir,
    )
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace").strip()
        raise GridStartError(
            f"creating tahoe node {name!r} failed "
            f"(exit status {result.returncode}): {output}"
        )
    if name.startswith(STORAGE_PREFIX):
        set_config_values(tmp, "storage", {"reserved_space": RESERVED_SPACE})
    if introducer_furl is not None:
        write_introducer(tmp, introducer_furl)
    os.rename(tmp, final)


def write_introducer(nodedir: str, furl: str) -> None:
    """The node's ``private/introducers.yaml`` (JSON is YAML), readable by its owner only."""
    path = os.path.join(nodedir, "private", "introducers.yaml")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"introducers": {"default": {"furl": furl}}}, f)
    os.chmod(path, 0o600)


def introducer_args(port: int) -> list[str]:
    """The ``tahoe`` arguments that create the introducer, listening on ``port``."""
    return [
        "create-introducer",
        "--listen=tcp",
        f"--port=tcp:{port}:interface=127.0.0.1",
        f"--location=tcp:127.0.0.1:{port}",
    ]


def _common_args(name: str, needed: int, happy: int, total: int) -> list[str]:
    return [
        f"--nickname={name}",
        f"--shares-needed={needed}",
        f"--shares-happy={happy}",
        f"--shares-total={total}",
    ]


def client_args(port: int, needed: int, happy: int, total: int) -> list[str]:
    """The ``tahoe`` arguments that create the client node, its web API on ``port``."""
    return [
        "create-client",
        f"--webport=tcp:{port}:interface=127.0.0.1",
    ] + _common_args(CLIENT, needed, happy, total)


def storage_args(name: str, port: int, needed: int, happy: int, total: int) -> list[str]:
    """The ``tahoe`` arguments that create a storage node (no web API) listening on ``port``."""
    return [
        "create-node",
        "--listen=tcp",
        f"--port=tcp:{port}:interface=127.0.0.1",
        f"--location=tcp:127.0.0.1:{port}",
        "--webport=none",
    ] + _common_args(name, needed, happy, total)


def existing_nodes(basedir: str) -> list[str]:
    """The names of the complete nodes under ``basedir`` (created if missing)."""
    os.makedirs(basedir, exist_ok=True)
    return sorted(
        n
        for n in os.listdir(basedir)
        if (n in (INTRODUCER, CLIENT) or _STORAGE_RE.match(n))
        and os.path.isfile(os.path.join(basedir, n, "tahoe.cfg"))
    )


def storage_names(existing: list[str], count: int) -> list[str]:
    """
    The storage nodes to run: ``storage1..count``, and any other that
    exists (a grid never loses a node that may hold shares).
    """
    wanted = {f"{STORAGE_PREFIX}{i}" for i in range(1, count + 1)}
    names = wanted | {n for n in existing if _STORAGE_RE.match(n)}
    return sorted(names, key=_storage_number)


def _storage_number(name: str) -> int:
    match = _STORAGE_RE.match(name)
    assert match is not None
    return int(match.group(1))


def read_furl(path: str) -> str | None:
    """
    The FURL in ``path`` once it is completely written (foolscap writes
    it with a trailing newline, not atomically).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if text.startswith("pb://") and text.endswith("\n"):
        return text.strip()
    return None


def cached_announcements(nodedir: str) -> list:
    """
    The announcements the node's introducer client keeps in
    ``private/introducer_default_cache.yaml`` (what each storage server
    says of itself, its addresses among it); [] without a readable one.
    """
    import yaml

    try:
        with open(os.path.join(nodedir, "private", "introducer_default_cache.yaml"), encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return data if isinstance(data, list) else []
