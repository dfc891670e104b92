"""
A restore against someone who wants it to do harm: a user swapping what
the restore just made for a symlink, set-uid files restored without root,
a log whose hard links go round in circles.  The backup sets are made by
hand as in test_restore (a fake grid, a fresh database, logs written with
the format's writer).
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SkipTest, TestCase

from gridbackupd.api import browse
from gridbackupd.errors import Conflict
from gridbackupd.format import hardlinks
from gridbackupd.model import FIFO, HARDLINK, SYMLINK, Entry
from gridbackupd.restore import targetfs
from tests.integration.test_restore import T0, BackupSet, dir_entry, file_entry


class HostileRestoreTests(TestCase):
    timeout = 60

    def setUp(self):
        self.set = BackupSet(self)
        self.target = os.path.join(self.set.base, "target")

    def out(self, path):
        return os.path.join(os.fsencode(self.target), path.lstrip(b"/"))

    async def restore(self, **options):
        restorer = self.set.restorer()
        self.addCleanup(restorer.stop)
        restore_id = restorer.request("s1", [], self.target, **options)
        state = await restorer.wait(restore_id)
        return state, restorer.status(restore_id)

    async def test_fifo_swapped_for_a_symlink_at_the_metadata_step(self):
        victim = os.path.join(self.set.base, "victim")
        with open(victim, "wb") as f:
            f.write(b"#!/bin/sh\n")
        os.chmod(victim, 0o600)
        before = os.stat(victim)
        self.set.add_snapshot("s1", [
            dir_entry(b"/"),
            file_entry(b"/before", b"kept"),
            Entry(path=b"/pipe", kind=FIFO, mode=stat.S_IFIFO | 0o4777, mtime_ns=T0),
            Entry(path=b"/zlink", kind=SYMLINK, mode=stat.S_IFLNK | 0o777, target=b"before",
                  mtime_ns=T0),
        ])

        def swap(dir_fd, name):
            if name == b"pipe":
                os.unlink(name, dir_fd=dir_fd)
                os.symlink(victim, name, dir_fd=dir_fd)
        self.patch(targetfs, "_before_metadata", swap)
        state, status = await self.restore()
        after = os.stat(victim)
        self.assertEqual((oct(after.st_mode), after.st_uid, after.st_mtime_ns),
                         (oct(before.st_mode), before.st_uid, before.st_mtime_ns))
        self.assertEqual(state, "failed")
        [error] = status["errors"]
        self.assertEqual(error["path"], "/pipe")
        self.assertIn("now a symlink", error["reason"])
        # The rest of the restore went on.
        self.assertEqual(os.readlink(self.out(b"/zlink")), b"before")
        self.assertEqual(os.lstat(self.out(b"/zlink")).st_mtime_ns, T0)
        with open(self.out(b"/before"), "rb") as f:
            self.assertEqual(f.read(), b"kept")

    async def test_hard_link_cycles_and_chains(self):
        chain = [Entry(path=b"/long/%04d" % i, kind=HARDLINK, target=b"/long/%04d" % (i + 1))
                 for i in range(2000)]
        self.set.add_snapshot("s1", [
            dir_entry(b"/"),
            dir_entry(b"/long"),
            file_entry(b"/file", b"the content"),
            Entry(path=b"/a", kind=HARDLINK, target=b"/b"),
            Entry(path=b"/b", kind=HARDLINK, target=b"/a"),
            Entry(path=b"/c", kind=HARDLINK, target=b"/a"),
            # A chain of two, its first link before the second in the log.
            Entry(path=b"/d1", kind=HARDLINK, target=b"/d2"),
            Entry(path=b"/d2", kind=HARDLINK, target=b"/file"),
            Entry(path=b"/long/2000", kind=HARDLINK, target=b"/file"),
            *chain,
        ])
        state, status = await self.restore()
        self.assertEqual(state, "failed")
        reasons = {e["path"]: e["reason"] for e in status["errors"]}
        for path in ("/a", "/b", "/c"):
            self.assertIn("cycle", reasons.pop(path))
        too_long = {p for p, r in reasons.items() if "chain of more than" in r}
        # /long/N is 2001 - N hops from the file.
        self.assertEqual(too_long, {"/long/%04d" % i for i in range(2001 - hardlinks.MAX_HOPS)})
        self.assertEqual(set(reasons) - too_long, set())
        # The other links are the file itself.
        inode = os.stat(self.out(b"/file")).st_ino
        for path in (b"/d1", b"/d2", b"/long/2000", b"/long/%04d" % (2001 - hardlinks.MAX_HOPS)):
            self.assertEqual(os.stat(self.out(path)).st_ino, inode, path)
        for path in (b"/a", b"/b", b"/c", b"/long/0000"):
            self.assertFalse(os.path.lexists(self.out(path)), path)

    def test_content_of_a_hard_link_cycle_reads_the_log_a_bounded_number_of_times(self):
        self.set.add_snapshot("s1", [
            file_entry(b"/file", b"x"),
            Entry(path=b"/a", kind=HARDLINK, target=b"/b"),
            Entry(path=b"/b", kind=HARDLINK, target=b"/a"),
            Entry(path=b"/link", kind=HARDLINK, target=b"/file"),
        ])
        logs = browse.log_chain(self.set.conn, "s1")
        reads = []
        real_entries = browse.entries

        def counted(log_paths):
            reads.append(1)
            return real_entries(log_paths)
        self.patch(browse, "entries", counted)
        with self.assertRaises(Conflict) as caught:
            browse.find_entry(logs, b"/a")
        self.assertEqual(caught.exception.code, "bad_hard_link")
        self.assertLessEqual(len(reads), hardlinks.MAX_HOPS + 1)
        self.assertEqual(browse.find_entry(logs, b"/link").path, b"/file")


# Run as nobody: restore a set-uid, a set-gid and a plain file into
# argv[1]/target, print the restore's status as JSON.  The modules are
# imported first: the interpreter's own files need not be readable by nobody.
_AS_NOBODY = textwrap.dedent("""
    import json, os, pwd, stat, sys, time

    from twisted.internet import defer, task
    from twisted.python.threadpool import ThreadPool

    import gridbackupd.format.chain
    from gridbackupd.format.logwriter import write_log
    from gridbackupd.model import FILE, Entry, LogHeader
    from gridbackupd.restore.requests import Restorer
    from gridbackupd.state import db as dbmod
    from gridbackupd.testing.fake_tahoe import fake_client

    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)

    base = sys.argv[1]
    log_path = os.path.join(base, "s1.log")
    entries = [Entry(path=b"/" + name, kind=FILE, mode=stat.S_IFREG | mode, size=1, inline=b"x",
                     mtime_ns=10**18)
               for name, mode in ((b"plain", 0o755), (b"sgid", 0o2755), (b"suid", 0o4755))]
    with open(log_path, "wb") as f:
        write_log(f, LogHeader(snapshot="s1", kind="full", host="h", paths=(b"/",),
                               started=time.time()), entries)
    conn = dbmod.open_database(os.path.join(base, "state.sqlite"))
    conn.execute("INSERT INTO snapshots (id, state, kind, host, requested, started, log_path, "
                 "complete) VALUES ('s1', 'complete', 'full', 'h', 1, 1, ?, 1)", (log_path,))
    conn.commit()

    async def main(reactor):
        pool = ThreadPool(minthreads=0, maxthreads=2)
        pool.start()
        client, _ = fake_client()
        restorer = Restorer(reactor, conn, lambda: client, pool, os.path.join(base, "tmp"))
        try:
            restore_id = restorer.request("s1", [], os.path.join(base, "target"))
            await restorer.wait(restore_id)
            print(json.dumps(restorer.status(restore_id)))
        finally:
            await restorer.stop()
            pool.stop()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
""")


class NonRootRestoreTests(TestCase):
    timeout = 60

    def test_set_id_bits_dropped_and_reported(self):
        if os.geteuid() != 0:
            raise SkipTest("needs root, to become nobody")
        nobody = pwd.getpwnam("nobody")
        # Outside _trial_temp, whose directories nobody may not search.
        base = tempfile.mkdtemp(prefix="restore-as-nobody-")
        self.addCleanup(shutil.rmtree, base)
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        result = subprocess.run([sys.executable, "-c", _AS_NOBODY, base], capture_output=True,
                                timeout=50)
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        status = json.loads(result.stdout.decode().strip().splitlines()[-1])
        self.assertEqual((status["state"], status["errors"]), ("done", []))
        self.assertEqual(status["files_done"], 3)
        self.assertEqual(status["setid_dropped"], 2)
        target = os.path.join(base, "target")
        modes = {name: stat.S_IMODE(os.stat(os.path.join(target, name)).st_mode)
                 for name in ("plain", "sgid", "suid")}
        self.assertEqual(modes, {"plain": 0o755, "sgid": 0o755, "suid": 0o755})
        self.assertEqual(os.stat(os.path.join(target, "suid")).st_uid, nobody.pw_uid)
