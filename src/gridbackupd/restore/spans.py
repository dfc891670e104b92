"""
Writing fetched content into the restored files, from worker threads.

``SpanWriter`` takes the spans of a restore plan (``restore.plan``) as they
arrive from the grid, checks each blob against its SHA-256, and writes it
into every file that holds it, through the ``TargetWriter``; a file is
committed after its last blob, aborted after a failed one.
"""

import hashlib
import os
import threading

import zstandard

from gridbackupd.format.pack import PackFormatError, decode_blob
from gridbackupd.restore.targetfs import UnsafePath


class SpanWriter:
    """
    Writes fetched spans into their files, from worker threads.  A file is
    opened at its first blob and committed (renamed into place with its
    metadata) after its last; a file whose blob fails is aborted.
    """

    def __init__(self, writer, progress):
        self.writer = writer
        self.progress = progress
        self.lock = threading.Lock()

    def _error(self, job, reason):
        if not job.failed:
            job.failed = True
            self.progress.errors.append({"path": os.fsdecode(job.entry.path), "reason": reason})

    def _open(self, job):
        """Under the lock: the job's open file, or None if it must not be written."""
        if job.failed or job.skipped:
            return None
        if job.out is None:
            try:
                job.out = self.writer.open_file(job.entry)
            except (OSError, UnsafePath) as e:
                self._error(job, str(e))
                return None
            if job.out is None:
                job.skipped = True
                if self.writer.matches(job.entry):
                    # Already there as the snapshot has it (size, time and
                    # content): a restore resumed or run twice.  Not an error.
                    self.progress.files_done += 1
                    self.progress.bytes_done += job.entry.size
                    return None
                self.progress.errors.append({"path": os.fsdecode(job.entry.path),
                                             "reason": "exists in the target (overwrite is off)"})
                return None
        return job.out

    def _finish(self, job):
        """Under the lock: commit a job whose writes are all done."""
        try:
            job.out.commit()
            job.done = True
            self.progress.files_done += 1
        except OSError as e:
            self._error(job, str(e))
        job.out = None

    def write_direct(self, job):
        """The content that needs no download: the log's inline bytes, the
        index's inline blobs (checked against their SHA-256)."""
        with self.lock:
            out = self._open(job)
            if out is None:
                return
            if job.entry.inline:
                out.write(0, job.entry.inline)
                self.progress.bytes_done += len(job.entry.inline)
            for file_offset, expected, data in job.direct:
                if hashlib.sha256(data).hexdigest() != expected:
                    self._error(job, f"blob {expected[:12]} does not match its SHA-256 (corrupt index)")
                    return
                out.write(file_offset, data)
                self.progress.bytes_done += len(data)
            if job.remaining == 0:
                self._finish(job)

    def write_span(self, span, data):
        if len(data) != span.end - span.start:
            self.fail_span(span, f"the grid returned {len(data)} bytes of a {span.end - span.start}-byte range")
            return
        for read in span.reads:
            stored = data[read.offset - span.start:read.offset - span.start + read.length]
            try:
                blob = decode_checked(stored, read.compression, read.size, read.hash)
            except (PackFormatError, Corrupt, zstandard.ZstdError) as e:
                with self.lock:
                    for job, _ in read.targets:
                        self._error(job, str(e))
                continue
            for job, file_offset in read.targets:
                with self.lock:
                    out = self._open(job)
                if out is None:
                    continue
                try:
                    out.write(file_offset, blob)
                except OSError as e:
                    with self.lock:
                        self._error(job, str(e))
                    continue
                with self.lock:
                    self.progress.bytes_done += read.size
                    job.remaining -= 1
                    if job.remaining == 0 and not job.failed:
                        self._finish(job)

    def fail_span(self, span, reason):
        with self.lock:
            for read in span.reads:
                for job, _ in read.targets:
                    self._error(job, reason)

    def abort_unfinished(self, jobs):
        for job in jobs:
            if job.out is not None:
                job.out.abort()
                job.out = None


class Corrupt(Exception):
    """Content fetched from the grid is not what the snapshot says."""


def decode_checked(stored, compression, size, expected):
    data = decode_blob(stored, compression, size)
    if hashlib.sha256(data).hexdigest() != expected:
        raise Corrupt(f"blob {expected[:12]} does not match its SHA-256 (corrupt content on the grid)")
    return data
