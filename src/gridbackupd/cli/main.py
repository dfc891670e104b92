"""
The ``gridbackup`` command: a person's (and a script's) client of the API.

It reads the daemon's own configuration file (``--config``, else
``$GRIDBACKUP_CONFIG``, else /etc/gridbackup/gridbackup.ini) to find the
daemon (``cli.client``).  It is a plain synchronous program on the
standard library: no reactor.  This module is the command line (argparse)
and the dispatch; ``cli.commands`` and ``cli.rootcap`` do the work,
``cli.render`` draws it.

Exit codes: 0 success, 1 the operation failed, 2 usage (a bad command line
or configuration), 3 the daemon cannot be reached.  Every failure prints one
line on stderr.  Progress bars are drawn only when stdout is a terminal;
otherwise progress is plain lines, so a pipe or a log never sees ``\\r``.
"""

import argparse
import os
import sys

from gridbackupd.cli import commands, rootcap
from gridbackupd.cli.client import FAILED, OK, USAGE, Exit, load_config, make_client

DEFAULT_CONFIG = "/etc/gridbackup/gridbackup.ini"
ENV_CONFIG = "GRIDBACKUP_CONFIG"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Exit(USAGE, f"{message} (see '{self.prog} --help')")


def build_parser():
    parser = _Parser(prog="gridbackup", description="Drive the gridbackupd daemon.")
    parser.add_argument("--config", help=f"the daemon's configuration (default: ${ENV_CONFIG}, "
                                         f"else {DEFAULT_CONFIG})")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subcommands.required = True

    p = subcommands.add_parser("status", help="what the daemon is doing")
    p.add_argument("--json", action="store_true", help="the API's answer as it is")
    p = subcommands.add_parser("backup", help="start a backup now")
    p.add_argument("--wait", action="store_true", help="wait until it is complete, with progress")
    p = subcommands.add_parser("snapshots", help="list the snapshots, oldest first")
    p.add_argument("--json", action="store_true")
    p = subcommands.add_parser("show", help="a snapshot: its figures, paths and errors")
    p.add_argument("snapshot", help="a snapshot id, or 'latest'")
    p.add_argument("--json", action="store_true", help="the API's answer as it is")
    p = subcommands.add_parser("ls", help="list a directory of a snapshot")
    p.add_argument("snapshot", help="a snapshot id, or 'latest'")
    p.add_argument("path", nargs="?", help="a directory (default: /)")
    p.add_argument("-r", "--recursive", action="store_true", help="everything below, not just the children")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p = subcommands.add_parser("history", help="every version of one path across the snapshots")
    p.add_argument("path")
    p.add_argument("--host", help="only this host's snapshots")
    p.add_argument("--json", action="store_true", help="the API's answer as it is")
    p = subcommands.add_parser("cat", help="write one file of a snapshot to stdout")
    p.add_argument("snapshot")
    p.add_argument("path")
    p = subcommands.add_parser("diff", help="what changed between two snapshots")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("path", nargs="?", help="only below this path")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p = subcommands.add_parser("restore", help="restore a snapshot, or some of its paths")
    p.add_argument("snapshot", help="a snapshot id, or 'latest'")
    p.add_argument("paths", nargs="*", metavar="PATH", help="what to restore (default: everything)")
    p.add_argument("--target", help="the directory to restore into")
    p.add_argument("--overwrite", action="store_true", help="replace files that exist in the target")
    p.add_argument("--no-wait", action="store_true", help="print the restore id and return")
    p.add_argument("--dry-run", action="store_true", help="check what would be written, write nothing")
    p.add_argument("--verify", action="store_true", help="read the restored files back and check them")
    p = subcommands.add_parser("cancel", help="cancel a restore")
    p.add_argument("restore_id")
    subcommands.add_parser("pause", help="pause uploads")
    subcommands.add_parser("resume", help="resume uploads")
    subcommands.add_parser("take-over", help="write the backup set now, though another machine's lock is fresh "
                                          "(only when that machine is gone)")
    p = subcommands.add_parser("forget", help="forget snapshots by the retention policy (or those named), and prune")
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="forget these (default: apply [retention])")
    p.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    p.add_argument("--no-prune", action="store_true", help="forget, but leave the grid's packs as they are")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p = subcommands.add_parser("job", help="run a maintenance job now: leases, check, drill or prune")
    p.add_argument("kind", choices=["leases", "check", "drill", "prune"])
    p.add_argument("--verify", type=float, metavar="FRACTION",
                   help="check: the fraction of objects whose shares are downloaded and verified")
    p.add_argument("--files", type=int, help="drill: how many files to restore and check")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    subcommands.add_parser("jobs", help="the recent maintenance jobs")
    p = subcommands.add_parser("ui", help="a one-time sign-in URL for the web console")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p = subcommands.add_parser("notify", help="notifications: send a test to every target, or list the recent")
    p.add_argument("notify_command", choices=("test", "list"), metavar="test|list",
                   help="test: send a test event to every [notify] target; list: the recent notifications")
    p = subcommands.add_parser("recover", help="rebuild the local state from the grid (on a new machine)")
    p.add_argument("--rootcap-file", metavar="FILE",
                   help="the root cap to recover from (- for stdin), written to state_dir/private/rootcap")
    p = subcommands.add_parser("mount", help="every snapshot as a read-only file system at MOUNTPOINT, "
                                             "until unmounted or Ctrl-C")
    p.add_argument("mountpoint", help="an existing directory")
    p = subcommands.add_parser("key", help="the root cap")
    keys = p.add_subparsers(dest="key_command", metavar="show", parser_class=_Parser)
    keys.required = True
    k = keys.add_parser("show", help="print the root cap, read-write and read-only")
    k.add_argument("--json", action="store_true")
    return parser


COMMANDS = {
    "status": commands.cmd_status, "backup": commands.cmd_backup, "snapshots": commands.cmd_snapshots,
    "ls": commands.cmd_ls, "cat": commands.cmd_cat, "diff": commands.cmd_diff, "restore": commands.cmd_restore,
    "cancel": commands.cmd_cancel, "pause": commands.cmd_pause, "resume": commands.cmd_resume,
    "take-over": commands.cmd_take_over, "forget": commands.cmd_forget, "job": commands.cmd_job,
    "jobs": commands.cmd_jobs, "show": commands.cmd_show, "notify": commands.cmd_notify,
    "history": commands.cmd_history,
}
#: Commands that also need the configuration (where the daemon listens).
WITH_CONFIG = {"ui": commands.cmd_ui}


def main(argv=None, out=None, err=None):
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else OK
        config = load_config(args.config or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)
        if args.command == "key":
            return rootcap.cmd_key_show(config, args, out)
        if args.command == "recover":
            return rootcap.cmd_recover(config, args, out)
        if args.command in WITH_CONFIG:
            return WITH_CONFIG[args.command](make_client(config), args, out, config)
        if args.command == "mount":
            return _mount(config, args)
        return COMMANDS[args.command](make_client(config), args, out)
    except Exit as e:
        out.flush()
        err.write(f"gridbackup: {e.message}\n")
        err.flush()
        return e.code
    except KeyboardInterrupt:
        err.write("gridbackup: interrupted\n")
        return FAILED
    except BrokenPipeError:
        # `gridbackup cat ... | head`: the reader went away; nothing more to say.
        try:
            sys.stdout = None
        except Exception:
            pass
        return OK


def _mount(config, args):
    """The mount process takes over this one (Ctrl-C then reaches it alone)."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "gridbackupd.mount", "--config", config.path, os.path.abspath(args.mountpoint)]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    sys.exit(main())
