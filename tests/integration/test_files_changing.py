"""
Files that change while they are backed up, on the real shared grid with
the daemon in this process (issue 18 item 4, issue 12 item 6).

Each change is made at its moment through a test hook of the scanner or
the packer, never a sleep: appended or truncated while read, deleted after
the walk, a directory renamed during the walk, a file replaced by a link
and a directory swapped for a link to the state directory between scan and
upload.  Each ends as a per-file error or a ``possibly inconsistent``
entry, the snapshot ends (never a crash), what the grid holds for a file
matches the hash its entry records, and the daemon's root cap is never
read into a log or a pack.
"""

import hashlib
import os
import sqlite3
from urllib.parse import quote

from gridbackupd.format.logreader import read_log
from gridbackupd.model import POSSIBLY_INCONSISTENT
from gridbackupd.scan import reader, walker
from gridbackupd.upload import packer
from tests.support.daemoncase import DaemonTestCase

SIZE = 200_000


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def once(hook_path, action):
    """A hook that runs ``action`` the first time it is called for ``hook_path``."""
    done = []

    def hook(seen):
        seen = getattr(seen, "source_path", seen)  # the packer's hook gets the queued blob
        if seen == hook_path and not done:
            done.append(seen)
            action()

    hook.done = done
    return hook


class FilesChangingTests(DaemonTestCase):
    def make_tree(self):
        rnd = os.urandom
        self.paths = {}
        for rel in ("app/log.bin", "app/table.db", "gone.bin", "moving/x.bin", "link-me.bin",
                    "swap/private/rootcap", "keep.bin"):
            path = os.path.join(self.tree, rel)
            write(path, rnd(SIZE))
            self.paths[rel] = os.fsencode(path)
        self.decoy = os.path.join(self.base, "decoy")
        write(self.decoy, rnd(SIZE))

    @property
    def state_dir(self):
        return os.path.join(self.base, "state")

    def rootcap(self):
        with open(os.path.join(self.state_dir, "private", "rootcap"), "rb") as f:
            return f.read()

    async def backup_ends(self, expected):
        code, body = await self.api.call("POST", "/v1/backups")
        self.assertEqual(code, 202, body)
        self.assertEqual(await self.daemon.wait_for_snapshot(body["id"]), expected)
        code, snapshot = await self.api.call("GET", f"/v1/snapshots/{body['id']}")
        self.assertEqual(code, 200, snapshot)
        return snapshot

    async def entry(self, snapshot_id, path):
        code, doc = await self.api.call(
            "GET", f"/v1/snapshots/{snapshot_id}/files?path={quote(os.fsdecode(path))}")
        self.assertEqual(code, 200, doc)
        return doc["entry"]

    async def content(self, snapshot_id, path):
        response = await self.api.http.get(
            f"{self.api.base}/v1/snapshots/{snapshot_id}/content?path={quote(os.fsdecode(path))}",
            headers={"Authorization": [f"Bearer {self.api.token}"]})
        return response.code, await response.content()

    async def assertStoredAsRecorded(self, snapshot_id, path):
        """What the grid gives back for ``path`` is what its entry's hash says."""
        entry = await self.entry(snapshot_id, path)
        code, data = await self.content(snapshot_id, path)
        self.assertEqual(code, 200, data[:200])
        self.assertEqual((len(data), hashlib.sha256(data).hexdigest()), (entry["size"], entry["sha256"]))
        return entry, data

    def log_records(self, snapshot_id):
        with open(os.path.join(self.state_dir, "logs", snapshot_id + ".log"), "rb") as f:
            _, records = read_log(f)
            return list(records)

    def blob_states(self, data):
        conn = sqlite3.connect(os.path.join(self.state_dir, "state.sqlite"))
        try:
            return [s for (s,) in conn.execute(
                "SELECT state FROM blobs WHERE hash = ?", (hashlib.sha256(data).hexdigest(),))]
        finally:
            conn.close()

    async def test_appended_while_read(self):
        path = self.paths["app/log.bin"]

        def append(seen):
            if seen == path:
                with open(path, "ab") as f:
                    f.write(b"appended while read\n")

        self.patch(reader, "while_open", append)
        snapshot = await self.backup_ends("complete")
        self.assertEqual(snapshot["errors"], [])
        entry, data = await self.assertStoredAsRecorded(snapshot["id"], path)
        self.assertIn(POSSIBLY_INCONSISTENT, entry["flags"])
        # The last read, whole: every append the reads saw, no more.
        self.assertEqual(len(data), SIZE + len(b"appended while read\n") * reader.REREAD_ATTEMPTS)

    async def test_truncated_while_read(self):
        path = self.paths["app/table.db"]
        with open(path, "rb") as f:
            original = f.read()
        hook = once(path, lambda: os.truncate(path, 5000))
        self.patch(reader, "while_open", hook)
        snapshot = await self.backup_ends("complete")
        self.assertEqual(hook.done, [path])
        self.assertEqual(snapshot["errors"], [])
        entry, data = await self.assertStoredAsRecorded(snapshot["id"], path)
        self.assertEqual(data, original[:5000])  # read again once it held still

    async def test_deleted_after_the_walk(self):
        path = self.paths["gone.bin"]
        with open(path, "rb") as f:
            data = f.read()
        hook = once(path, lambda: os.unlink(path))
        self.patch(packer, "before_open", hook)
        snapshot = await self.backup_ends("incomplete")
        self.assertEqual(hook.done, [path])
        self.assertEqual(snapshot["errors"], [
            {"path": os.fsdecode(path), "reason": "vanished since the scan"}])
        self.assertEqual(self.blob_states(data), ["stale"])
        # The rest is there, as recorded.
        await self.assertStoredAsRecorded(snapshot["id"], self.paths["keep.bin"])

    async def test_directory_renamed_during_the_walk(self):
        moving = os.fsencode(os.path.join(self.tree, "moving"))
        moved = os.fsencode(os.path.join(self.tree, "zz-moved"))
        hook = once(moving, lambda: os.rename(moving, moved))
        self.patch(walker, "before_opening_dir", hook)
        snapshot = await self.backup_ends("complete")
        self.assertEqual(hook.done, [moving])
        self.assertEqual(snapshot["errors"], [
            {"path": os.fsdecode(moving), "reason": "vanished while scanned"}])
        paths = [r.path for r in self.log_records(snapshot["id"])]
        self.assertNotIn(moving, paths)
        self.assertNotIn(moving + b"/x.bin", paths)
        await self.assertStoredAsRecorded(snapshot["id"], self.paths["keep.bin"])

    async def test_replaced_by_a_link_between_scan_and_upload(self):
        path = self.paths["link-me.bin"]
        with open(path, "rb") as f:
            data = f.read()
        # The link leads to a file of the very same bytes: only its identity differs.
        write(self.decoy, data)

        def to_link():
            os.unlink(path)
            os.symlink(self.decoy, path)

        hook = once(path, to_link)
        self.patch(packer, "before_open", hook)
        snapshot = await self.backup_ends("incomplete")
        self.assertEqual(hook.done, [path])
        self.assertEqual(snapshot["errors"], [
            {"path": os.fsdecode(path), "reason": "changed since the scan"}])
        self.assertEqual(self.blob_states(data), ["stale"])
        # The next backup records the link as a link, and completes.
        snapshot = await self.backup_ends("complete")
        entry = await self.entry(snapshot["id"], path)
        self.assertEqual((entry["kind"], entry["target"]), ("symlink", self.decoy))

    async def test_directory_swapped_for_a_link_to_the_state_dir_between_scan_and_upload(self):
        swap = os.fsencode(os.path.join(self.tree, "swap"))
        decoy = self.paths["swap/private/rootcap"]
        rootcap = self.rootcap()

        def to_state_dir():
            os.rename(swap, swap + b".away")
            os.symlink(self.state_dir, swap)

        hook = once(decoy, to_state_dir)
        self.patch(packer, "before_open", hook)
        snapshot = await self.backup_ends("incomplete")
        self.assertEqual(hook.done, [decoy])
        self.assertEqual(snapshot["errors"], [
            {"path": os.fsdecode(decoy), "reason": "changed since the scan"}])
        # The next backup records the link and does not follow it.
        snapshot = await self.backup_ends("complete")
        entry = await self.entry(snapshot["id"], swap)
        self.assertEqual(entry["kind"], "symlink")
        self.assertNoRootcap(rootcap)

    async def test_directory_swapped_for_a_link_to_the_state_dir_during_the_walk(self):
        swap = os.fsencode(os.path.join(self.tree, "swap"))
        rootcap = self.rootcap()

        def to_state_dir():
            os.rename(swap, swap + b".away")
            os.symlink(self.state_dir, swap)

        hook = once(swap, to_state_dir)
        self.patch(walker, "before_opening_dir", hook)
        snapshot = await self.backup_ends("complete")
        self.assertEqual(hook.done, [swap])
        self.assertEqual(snapshot["errors"], [
            {"path": os.fsdecode(swap), "reason": "replaced by another file while scanned"}])
        paths = [r.path for r in self.log_records(snapshot["id"])]
        self.assertEqual([p for p in paths if p.startswith(swap + b"/")], [])
        self.assertNoRootcap(rootcap)

    def assertNoRootcap(self, rootcap):
        """The root cap is in no log of this machine and in no blob queued or sent."""
        logs = os.path.join(self.state_dir, "logs")
        for name in os.listdir(logs):
            if name.endswith(".log"):
                for r in self.log_records(name[:-4]):
                    self.assertNotIn(rootcap, getattr(r, "inline", None) or b"")
                    self.assertNotEqual(getattr(r, "sha256", None), hashlib.sha256(rootcap).hexdigest())
        self.assertEqual(self.blob_states(rootcap), [])
