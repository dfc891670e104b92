"""
The root cap from the command line: ``gridbackup recover`` puts one in
place and follows the daemon's rebuild from the grid; ``gridbackup key
show`` prints it, read-write and read-only.  Neither needs the daemon to run.
"""

import json
import os
import sys
import time

from gridbackupd.cli.client import FAILED, OK, POLL, UNREACHABLE, Exit, make_client, read_secret
from gridbackupd.cli.render import Progress


def cmd_recover(config, args, out):
    """
    Put a root cap in place (``--rootcap-file``) and follow the daemon's
    rebuild of its state from the grid, which it does when it starts with a
    root cap and no database.
    """
    cap_path = config.statedir.rootcap
    if args.rootcap_file:
        install_rootcap(cap_path, args.rootcap_file)
    elif not os.path.exists(cap_path):
        raise Exit(FAILED, f"no root cap in {cap_path}: give it with --rootcap-file FILE (or - for stdin)")
    try:
        if not os.path.exists(config.statedir.api_token):
            # A daemon that never started here has no token yet: nothing to follow.
            raise Exit(UNREACHABLE, "the daemon has not started here yet")
        client = make_client(config)
        doc = client.call("GET", "/v1/status")
    except Exit as e:
        if e.code != UNREACHABLE:
            raise
        out.write(f"The root cap is in {cap_path}. Start the daemon now (systemctl start gridbackup,\n"
                  "or make run): with no state.sqlite it rebuilds its state from the grid before\n"
                  "its first scan. Then run `gridbackup recover` again to see what it found.\n")
        return OK
    progress = Progress(out)
    while doc.get("state") in ("starting", "waiting-for-grid", "recovering"):
        progress.show(f"{doc.get('state')}...")
        time.sleep(POLL)
        doc = client.call("GET", "/v1/status")
    progress.done()
    report = doc.get("recovery")
    if report is None:
        raise Exit(FAILED, "the daemon already had local state, so it did not recover: to rebuild it, "
                           "stop the daemon, move state_dir/state.sqlite away and start it again")
    out.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return OK


def install_rootcap(cap_path, source):
    """Write a root cap given by a person to private/rootcap (0600), never over another one."""
    try:
        text = sys.stdin.read() if source == "-" else open(source).read()
    except OSError as e:
        raise Exit(FAILED, f"cannot read {source}: {e.strerror}")
    cap = text.strip()
    if not cap.startswith("URI:DIR2") or any(c.isspace() for c in cap):
        raise Exit(FAILED, f"{source} does not hold a directory cap (URI:DIR2:... or URI:DIR2-RO:...)")
    existing = None
    if os.path.exists(cap_path):
        existing = read_secret(cap_path, "the root cap")
    if existing is not None and existing != cap:
        raise Exit(FAILED, f"{cap_path} already holds another root cap; move it away first")
    os.makedirs(os.path.dirname(cap_path), mode=0o700, exist_ok=True)
    fd = os.open(cap_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cap + "\n")
    os.chmod(cap_path, 0o600)


KEY_ADVICE = """\
Keep the root cap offline: on paper, in a password manager, or on a USB stick
in a drawer. Anyone who has it can read (read-write form: also delete) every
file in this backup; without it nobody, you included, can restore anything.
Never paste it into a chat, a ticket or a log. The read-only form is enough
to list and restore (gridbackup recover on a new machine)."""


def readonly_cap(cap):
    """The read-only form of a cap, computed locally (no grid needed)."""
    from allmydata import uri

    return uri.from_string(cap).get_readonly().to_string().decode("ascii")


def cmd_key_show(config, args, out):
    cap = read_secret(config.statedir.rootcap, "the root cap")
    try:
        ro = readonly_cap(cap)
    except Exception as e:
        ro = f"(cannot derive it: {e})"
    if args.json:
        json.dump({"rootcap": cap, "readonly": ro}, out, indent=1)
        out.write("\n")
        return OK
    out.write(f"read-write: {cap}\nread-only:  {ro}\n\n{KEY_ADVICE}\n")
    return OK
