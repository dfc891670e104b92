"""
Restore drills: prove now and then that a snapshot can really be restored.

A drill picks a complete snapshot at random, a random sample of its regular
files, restores them through the real restore path (ranged GETs from the
grid, blob checks, ``TargetWriter``) into a scratch directory under the
state directory, and reads each one back against the SHA-256 and size the
log recorded.  A file that fails is a finding, reported in the result; the
drill itself only fails when the daemon stops or the job is misused.

The sample is drawn in a worker thread by reservoir sampling over the
streamed entries, so a million-file snapshot costs a pass over its logs and
memory for the sample only.  Files whose content is in packs on the grid are
preferred; files held inline in the log test nothing of the grid and only
fill up a sample the snapshot has too few grid files for.
"""

import hashlib
import os
import random
import shutil
import sqlite3
import stat

from twisted.logger import Logger

from gridbackupd.errors import DomainError, TahoeError
from gridbackupd.format.chain import snapshot_entries
from gridbackupd.format.logfields import LogFormatError
from gridbackupd.model import FILE
from gridbackupd.restore.engine import RestoreProgress
from gridbackupd.restore.targetfs import UnsafePath, components, hash_file
from gridbackupd.state import db as dbmod
from gridbackupd.state import snapshots

log = Logger()

DEFAULT_FILES = 20


async def restore_drill(ctx) -> dict:
    """The ``restore_drill`` job (see ``maintenance.jobs`` for the contract)."""
    wanted = _files_option(ctx.options)
    ctx.progress.update(snapshot=None, phase="starting", done=0, total=0, errors=0)
    root = ctx.statedir.drill  # each drill restores under <job id>/ of it
    target = os.path.join(root, ctx.job_id)
    _active[id(ctx)] = target
    try:
        # A run killed earlier (or this job before a restart) left its
        # files; a drill running now (one started by hand) keeps its own.
        await ctx.in_thread(remove_leftovers, root, set(_active.values()))
        return await _drill(ctx, wanted, random.Random(ctx.options.get("seed")), target)
    finally:
        del _active[id(ctx)]
        await ctx.in_thread(remove_tree, target)
        await ctx.in_thread(_remove_if_empty, root)


async def _drill(ctx, wanted, rnd, target):
    progress = ctx.progress
    snapshot_id, why_not = _pick_snapshot(ctx, rnd)
    if snapshot_id is None:
        log.info("restore drill: {why}", why=why_not)
        progress["phase"] = "skipped"
        return _result(None, [], [], skipped=why_not)
    progress["snapshot"] = snapshot_id
    progress["phase"] = "sampling"
    try:
        sample = await ctx.in_thread(sample_files, ctx.db_path, snapshot_id,
            ctx.statedir.logs, wanted, rnd)
    except (LogFormatError, OSError, sqlite3.Error) as e:
        # The log itself is unreadable: that is what this drill found.
        reason = f"cannot read the snapshot's log: {e}"
        log.warn("restore drill of {snapshot}: {reason}", snapshot=snapshot_id, reason=reason)
        progress["phase"] = "finished"
        return _result(snapshot_id, [], [], error=reason)
    ctx.check_stopping()
    files = sample.chosen
    progress["total"] = len(files)
    progress["phase"] = "restoring"
    restore_errors = await _restore(ctx, snapshot_id, files, target)
    ctx.check_stopping()
    progress["phase"] = "checking"
    failed = []
    for entry in files:
        ctx.check_stopping()
        reason = await ctx.in_thread(check_file, target, entry)
        if reason is not None:
            if reason is MISSING:
                reason = "; ".join(restore_errors.get(entry.path, ())) or "was not restored"
            path = os.fsdecode(entry.path)
            failed.append({"path": path, "reason": reason})
            progress["errors"] = len(failed)
            log.warn("restore drill of {snapshot}: {path}: {reason}",
                     snapshot=snapshot_id, path=path, reason=reason)
        progress["done"] += 1
    progress["phase"] = "finished"
    log.info("restore drill of {snapshot}: {ok} of {n} files restored intact",
             snapshot=snapshot_id, ok=len(files) - len(failed), n=len(files))
    return _result(snapshot_id, files, failed, grid_files=sample.grid_files,
                   inline_files=len(files) - sample.grid_files, candidates=sample.candidates)


# id(ctx) -> the scratch directory of each drill running in this process.
_active: dict[int, str] = {}


def remove_leftovers(root, keep):
    """In a worker thread: remove what is under ``root`` but not in ``keep``."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(root, name)
        if path not in keep:
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree(path)
            else:
                os.unlink(path)
    _remove_if_empty(root)


def _remove_if_empty(path):
    try:
        os.rmdir(path)
    except OSError:
        pass  # gone already, or another drill's directory is in it


def _files_option(options):
    wanted = options.get("files", DEFAULT_FILES)
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise ValueError(f"files must be a positive number of files, not {wanted!r}")
    return wanted


def _result(snapshot_id, files, failed, **extra):
    result = {
        "snapshot": snapshot_id,
        "files": len(files),
        "bytes": sum(e.size for e in files),
        "ok": len(files) - len(failed),
        "failed": failed,
    }
    result.update(extra)
    return result


def _pick_snapshot(ctx, rnd):
    """(snapshot id, None), or (None, why there is nothing to drill)."""
    chosen = ctx.options.get("snapshot")
    if chosen is not None:
        row = snapshots.with_log(ctx.conn, chosen)
        if row is None:
            return None, f"no snapshot {chosen!r} with a log to drill"
        return row[0], None
    count = snapshots.count_complete(ctx.conn)
    if not count:
        return None, "no complete snapshot to drill"
    return snapshots.nth_complete(ctx.conn, rnd.randrange(count)), None


class Sample:
    """A reservoir sample of a snapshot's regular files with content."""

    def __init__(self, size, rnd):
        self.size = size
        self.rnd = rnd
        self.grid = []  # content in blobs (packs, or the index)
        self.inline = []  # content in the log itself
        self.seen_grid = 0
        self.seen_inline = 0

    def _offer(self, reservoir, seen, entry):
        if len(reservoir) < self.size:
            reservoir.append(entry)
        else:
            slot = self.rnd.randrange(seen)
            if slot < self.size:
                reservoir[slot] = entry

    def add(self, entry):
        if entry.kind != FILE or entry.size <= 0:
            return
        if entry.blobs:
            self.seen_grid += 1
            self._offer(self.grid, self.seen_grid, entry)
        elif entry.inline:
            self.seen_inline += 1
            self._offer(self.inline, self.seen_inline, entry)

    @property
    def chosen(self):
        """Grid files first; inline ones only to fill up, in path order."""
        files = self.grid + self.inline[:self.size - len(self.grid)]
        return sorted(files, key=lambda e: e.path)

    @property
    def grid_files(self):
        return len(self.grid)

    @property
    def candidates(self):
        return self.seen_grid + self.seen_inline


def sample_files(db_path, snapshot_id, logs_dir, size, rnd):
    """In a worker thread: a Sample of ``size`` files of the snapshot."""
    with dbmod.worker_connection(db_path) as conn:
        entries = snapshot_entries(snapshot_id, snapshots.log_resolver(conn, logs_dir))
    sample = Sample(size, rnd)
    for entry in entries:
        sample.add(entry)
    return sample


async def _restore(ctx, snapshot_id, files, target):
    """
    Restore ``files`` into ``target`` with the daemon's Restorer: {path:
    [reason, ...]} of what the restore reported.  A restore that fails as a
    whole is a reason for every file.
    """
    progress = RestoreProgress()
    reasons: dict[bytes, list[str]] = {}
    if not files:
        return reasons  # (no paths would mean the whole snapshot)
    try:
        await ctx.restorer.run(snapshot_id, [os.fsdecode(e.path) for e in files], target,
                               False, progress)
    except (LogFormatError, DomainError, TahoeError, OSError, UnsafePath) as e:
        for entry in files:
            reasons.setdefault(entry.path, []).append(f"the restore failed: {e}")
    for item in progress.errors + progress.pending:
        if item.get("path") is not None:
            reasons.setdefault(os.fsencode(item["path"]), []).append(item["reason"])
    return reasons


MISSING = object()


def check_file(target, entry):
    """
    In a worker thread: None if the restored file has the entry's size and
    SHA-256, else why not (MISSING when there is no file).
    """
    try:
        path = os.path.join(os.fsencode(target), *components(entry.path))
    except UnsafePath:
        return MISSING  # the restore refused it, and said why
    try:
        fd = _open_restored(path)
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return f"cannot read the restored file: {e.strerror}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "the restored path is not a regular file"
        expected = entry.sha256
        if expected is None and entry.inline is not None:
            expected = hashlib.sha256(entry.inline).hexdigest()
        # The log format lets the whole-file hash out: the blobs' then say.
        size, whole, bad = hash_file(fd, entry.blobs if expected is None else ())
    finally:
        os.close(fd)
    if size != entry.size:
        return f"restored {size} bytes, the snapshot says {entry.size}"
    if expected is None:
        if bad is not None:
            return f"bytes {bad[0]}-{bad[0] + bad[1]} do not match their blob's SHA-256"
        return None
    if whole != expected:
        return "the restored content does not match the snapshot's SHA-256"
    return None


def _open_restored(path):
    """
    Open a restored file for reading.  The restore set the snapshot's modes,
    which may deny a daemon that is not root (a 0200 file, a 0600
    directory): the scratch copy is ours to open up.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except PermissionError:
        pass
    ancestors = []
    parent = os.path.dirname(path)
    while parent != os.path.dirname(parent):
        ancestors.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(ancestors):
        _add_mode(directory, stat.S_IRWXU)
    _add_mode(path, stat.S_IRUSR)
    return os.open(path, flags)


def _add_mode(path, bits):
    """Add mode bits to a file or directory we own (never through a symlink)."""
    try:
        st = os.lstat(path)
        if st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode) and st.st_mode & bits != bits:
            os.chmod(path, stat.S_IMODE(st.st_mode) | bits)
    except OSError:
        pass


def remove_tree(path):
    """
    Remove ``path`` and everything below, if it exists.  Restored modes may
    forbid it when we are not root (a 0500 directory): then every directory
    is opened up, top down, and the removal tried again.
    """
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except PermissionError:
        pass
    _add_mode(path, stat.S_IRWXU)
    for dirpath, dirnames, _ in os.walk(path):
        # os.walk lists a directory after this body has seen its name.
        for name in dirnames:
            _add_mode(os.path.join(dirpath, name), stat.S_IRWXU)
    shutil.rmtree(path)
