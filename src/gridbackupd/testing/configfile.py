"""A daemon configuration file for tests and benchmarks: one tree, one grid."""

import os

TCP_ANY_PORT = "tcp:0:interface=127.0.0.1"


def write_config(directory, node_url, paths, extra="", listen=TCP_ANY_PORT, hostname="testhost"):
    """Write ``directory/gridbackup.ini`` (no schedule, no watching; the API on ``listen``); return its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "gridbackup.ini")
    with open(path, "w") as f:
        f.write(
            f"[gridbackup]\nstate_dir = %(here)s/state\nhostname = {hostname}\n"
            f"[tahoe]\nnode_url = {node_url}\n"
            "[backup]\npaths =\n" + "".join(f"    {p}\n" for p in paths)
            + "scan_interval = 0\nwatch = no\n"
            f"[api]\nlisten = {listen}\n" + extra
        )
    return path
