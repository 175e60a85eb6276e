"""Where the CSV goes: one place that opens a DEST, checked before any image is scored.

- `-`: standard output; a reader that goes away (`| head`) ends the run quietly (OutputClosed).
- a local path: refused up front when it is a folder, its folder is missing or not writable, or it is one of
  the input images. Rows go to a temporary file beside it (created during the check, so /proc or a read-only
  folder fail before the work), renamed into place when complete, with the permissions the umask gives.
  If the disk fills up or the file grows past a limit mid-run, the rows move to a file in the system's
  temporary folder and the run ends by naming it: the work is never thrown away.
- s3://bucket/key: the bucket is checked first; rows go to a local temporary file, uploaded when complete;
  a refused upload names the local file it kept.
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from batch_job.base import DestinationError, is_s3_url
from batch_job.preprocessing import is_image_path


class OutputClosed(Exception):
    """Standard output was closed by its reader (a broken pipe): nothing is wrong, nobody is listening."""


class SpillingFile:
    """A text sink over a file that, when a write fails (full disk, file too large), copies what was
    written so far to the system's temporary folder and carries on there.

    Text is gathered and written in chunks of CHUNK bytes (one system call each, not one per row); what is
    known to be on disk (`good`) only moves after a chunk is written and flushed, so a failure mid-chunk
    loses nothing: the chunk is still in memory and is written again into the spill file.
    """

    CHUNK = 256 * 1024

    def __init__(self, path: str, fd: int):
        self.path = path
        self.file = os.fdopen(fd, "wb", buffering=0)
        self.good = 0  # bytes known to be in the file
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.spilled_to: str | None = None
        self.reason = ""

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= self.CHUNK:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if not self.pending:
            return
        chunk = b"".join(self.pending)
        try:
            self._write_all(chunk)
        except OSError as error:
            if self.spilled_to:
                raise DestinationError(f"cannot write {self.spilled_to} either: {error.strerror or error}") from None
            self._spill(error)
            self._write_all(chunk)
        self.good += len(chunk)
        self.pending, self.pending_bytes = [], 0

    def _write_all(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            written = self.file.write(view)
            view = view[written or 0:]

    def _spill(self, error: OSError) -> None:
        fd, fallback = tempfile.mkstemp(prefix="predictions-", suffix=".csv")
        spill = os.fdopen(fd, "wb", buffering=0)
        with open(self.path, "rb") as written:
            spill.write(written.read(self.good))
        try:
            self.file.close()
        except OSError:
            pass
        os.unlink(self.path)
        self.file, self.spilled_to, self.reason = spill, fallback, error.strerror or str(error)

    def close(self) -> None:
        if not self.file.closed:
            self.flush()
            self.file.close()


def _finish(sink: SpillingFile, keep: bool, tmp: str) -> None:
    """After a write: close the sink, and unless the CSV was kept for the user, remove its temporary files."""
    try:
        sink.close()
    except (OSError, DestinationError):
        pass
    if not keep:
        for leftover in (tmp, sink.spilled_to):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Destination:
    """A checked DEST. Use `with destination.open() as out:`; the CSV appears only if the block completes."""

    def __init__(self, dest: str):
        self.dest = dest

    @contextmanager
    def open(self) -> Iterator[IO[str]]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.dest

    def close(self) -> None:
        """Remove whatever the check created if the CSV was never written (a fatal error came first)."""


class StdoutDestination(Destination):
    @contextmanager
    def open(self) -> Iterator[IO[str]]:
        try:
            yield sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush does not complain
            raise OutputClosed() from None

    def describe(self) -> str:
        return "stdout"


class LocalDestination(Destination):
    def __init__(self, dest: str, sources: list[str]):
        super().__init__(dest)
        if os.path.isdir(dest):
            raise DestinationError(f"output is a folder, not a file: {dest}")
        folder = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(folder):
            raise DestinationError(f"output folder does not exist: {folder}")
        target = os.path.realpath(dest)
        for source in sources:
            if is_s3_url(source) or not is_image_path(dest):
                continue
            real = os.path.realpath(source)
            if target == real or (os.path.isdir(real) and target.startswith(real.rstrip("/") + "/")):
                raise DestinationError(f"output {dest} would overwrite an input image; choose a .csv path")
        try:
            self.fd, self.tmp = tempfile.mkstemp(prefix=".predictions-", suffix=".csv", dir=folder)
        except OSError as error:
            raise DestinationError(f"cannot write to {folder}: {error.strerror or error}") from None
        self.opened = False

    def close(self) -> None:
        if not self.opened:
            os.close(self.fd)
            os.unlink(self.tmp)
            self.opened = True

    @contextmanager
    def open(self) -> Iterator[IO[str]]:
        self.opened = True
        sink = SpillingFile(self.tmp, self.fd)
        keep = False
        try:
            yield sink  # type: ignore[misc]  # a text sink: csv_output only calls write()
            sink.close()
            if sink.spilled_to:
                keep = True
                raise DestinationError(f"cannot write {self.dest}: {sink.reason}; the complete CSV is at "
                                       f"{sink.spilled_to}")
            try:
                os.chmod(self.tmp, 0o666 & ~_umask())
                os.replace(self.tmp, self.dest)
            except OSError as error:
                keep = True
                raise DestinationError(f"cannot write {self.dest}: {error.strerror or error}; the complete CSV "
                                       f"is at {self.tmp}") from None
        finally:
            _finish(sink, keep, self.tmp)


class S3Destination(Destination):
    def __init__(self, dest: str):
        super().__init__(dest)
        from batch_job import s3

        self.bucket, self.key = s3.check_destination(dest)

    @contextmanager
    def open(self) -> Iterator[IO[str]]:
        from batch_job import s3

        fd, tmp = tempfile.mkstemp(prefix="predictions-", suffix=".csv")
        sink = SpillingFile(tmp, fd)
        keep = False
        try:
            yield sink  # type: ignore[misc]
            sink.close()
            local = sink.spilled_to or tmp
            try:
                s3.upload_file(local, self.dest)
            except DestinationError as error:
                keep = True
                raise DestinationError(f"{error}; the complete CSV is kept at {local}") from None
        finally:
            _finish(sink, keep, tmp)


def open_destination(dest: str, sources: list[str] | None = None) -> Destination:
    """The DEST of a run, checked now (before scoring): '-', a local path or s3://bucket/key."""
    if dest == "-":
        return StdoutDestination(dest)
    if is_s3_url(dest):
        return S3Destination(dest)
    return LocalDestination(dest, sources or [])


__all__ = ["Destination", "OutputClosed", "open_destination"]
