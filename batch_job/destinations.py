"""Where the output goes: the one place that opens a DEST for every entry point, checked before any image is
scored.

- `-`: standard output; a reader that goes away (`| head`) ends the run quietly (OutputClosed).
- a local path: refused up front when it is a folder, a socket or block device, its folder is missing or not
  writable, it is one of the inputs (a file named as a source, or an image inside a source folder), or another
  run is writing it now (a lock beside it, released by the system even if that run is killed). Rows go to a
  temporary file beside it (created during the check, so /proc or a read-only folder fail before the work),
  renamed into place when complete, with the permissions the umask gives. If the disk fills up or the file
  grows past a limit mid-run, the rows move to a file in the system's temporary folder and the run ends by
  naming it: the work is never thrown away. A character device or FIFO (/dev/null, a named pipe) is written
  in place: it is not a file to replace.
- s3://bucket/key: the bucket is checked first; rows go to a local temporary file, uploaded when complete with
  the format's content type; a refused upload names the local file it kept.
"""
from __future__ import annotations

import fcntl
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from batch_job.base import MAX_KEY_BYTES, DestinationError, Error, is_image_path, is_s3_url
from batch_job.formats import CSV, OutputFormat

PARTIAL = ".partial"  # what an interrupted run keeps: DEST.partial, its complete rows so far


def interrupted(error: BaseException) -> bool:
    """Ctrl-C, or a signal the command line turned into an exception (cli.Stopped has a signum)."""
    return isinstance(error, KeyboardInterrupt) or hasattr(error, "signum")


def _copy_into(sink, path: str) -> None:
    """An earlier partial output's text, streamed into the new output first (--resume)."""
    with open(path, encoding="utf-8", newline="") as earlier:
        while chunk := earlier.read(1 << 20):
            sink.write(chunk)


class OutputClosed(Error):
    """Standard output was closed by its reader (a broken pipe): nothing is wrong, nobody is listening."""


class SpillingFile:
    """A text sink over a file that, when a write fails (full disk, file too large), copies what was
    written so far to the system's temporary folder and carries on there.

    Text is gathered and written in chunks of CHUNK bytes (one system call each, not one per row); what is
    known to be on disk (`good`) only moves after a chunk is written and flushed, so a failure mid-chunk
    loses nothing: the chunk is still in memory and is written again into the spill file.
    """

    CHUNK = 256 * 1024

    def __init__(self, path: str, fd: int, suffix: str = ".csv"):
        self.path, self.suffix = path, suffix
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
        fd, fallback = tempfile.mkstemp(prefix="predictions-", suffix=self.suffix)
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


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Destination:
    """A checked DEST. Use `with destination.open() as out:`; the output appears only if the block completes.
    Interrupted (Ctrl-C, SIGTERM), the rows written so far are kept as DEST.partial (the exception carries
    `.partial`, where); `partial()` finds one for --resume, and `open(resume=path)` starts from its rows."""

    def __init__(self, dest: str, fmt: OutputFormat = CSV):
        self.dest, self.format = dest, fmt

    @contextmanager
    def open(self, resume: str | None = None) -> Iterator[IO[str]]:
        raise NotImplementedError

    def partial(self) -> str | None:
        """A local file holding an interrupted run's rows for this DEST, or None."""
        return None

    def forget_partial(self) -> None:
        """After a resumed run completes: the partial output is part of the output now."""

    def describe(self) -> str:
        return self.dest

    def close(self) -> None:
        """Remove whatever the check created if the CSV was never written (a fatal error came first)."""


class StdoutDestination(Destination):
    @contextmanager
    def open(self, resume: str | None = None) -> Iterator[IO[str]]:
        try:
            if resume:
                _copy_into(sys.stdout, resume)
            yield sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush does not complain
            raise OutputClosed() from None

    def describe(self) -> str:
        return "stdout"


UNWRITABLE_KINDS = {stat.S_IFSOCK: "a socket", stat.S_IFBLK: "a block device"}


def _is_input(target: str, sources: list[str]) -> bool:
    """Whether writing `target` would replace an input: a file named as a source, or an image inside a source
    folder (the walk would have scored it)."""
    for source in sources:
        if is_s3_url(source):
            continue
        real = os.path.realpath(source)
        if target == real:
            return True
        if os.path.isdir(real) and target.startswith(real.rstrip("/") + "/") and is_image_path(target):
            return True
    return False


class OutputLock:
    """An exclusive lock on `.<name>.lock` beside a local output: a second run writing the same file fails at
    once instead of silently replacing the first one's output. The system releases it if the run is killed."""

    def __init__(self, dest: str):
        folder, name = os.path.split(os.path.abspath(dest))
        self.path = os.path.join(folder, f".{name}.lock")
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DestinationError(f"another run is writing {dest} now; wait for it to finish or choose "
                                       "another output") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break  # still the file we locked (not one its previous holder removed and another made)
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


class LocalDestination(Destination):
    def __init__(self, dest: str, sources: list[str], fmt: OutputFormat = CSV):
        super().__init__(dest, fmt)
        try:
            info: os.stat_result | None = os.stat(dest)
        except FileNotFoundError:
            info = None
        except OSError as error:
            raise DestinationError(f"cannot write {dest}: {error.strerror or error}") from None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise DestinationError(f"output is a folder, not a file: {dest}")
        if info is not None and stat.S_IFMT(info.st_mode) in UNWRITABLE_KINDS:
            raise DestinationError(f"output {dest} is {UNWRITABLE_KINDS[stat.S_IFMT(info.st_mode)]}, not a file")
        self.in_place = info is not None and (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode))
        folder = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(folder):
            raise DestinationError(f"output folder does not exist: {folder}")
        if _is_input(os.path.realpath(dest), sources):
            raise DestinationError(f"output {dest} is one of the inputs: choose another output path")
        self.opened = False
        self.lock: OutputLock | None = None
        if self.in_place:
            return
        try:
            self.lock = OutputLock(dest)
            self.fd, self.tmp = tempfile.mkstemp(prefix=".predictions-", suffix=fmt.extension, dir=folder)
        except OSError as error:
            if self.lock:
                self.lock.release()
            raise DestinationError(f"cannot write to {folder}: {error.strerror or error}") from None

    def close(self) -> None:
        if not self.opened and not self.in_place:
            os.close(self.fd)
            os.unlink(self.tmp)
        self.opened = True
        if self.lock:
            self.lock.release()

    def partial(self) -> str | None:
        path = self.dest + PARTIAL
        return path if not self.in_place and os.path.isfile(path) else None

    def forget_partial(self) -> None:
        try:
            os.unlink(self.dest + PARTIAL)
        except OSError:
            pass

    @contextmanager
    def open(self, resume: str | None = None) -> Iterator[IO[str]]:
        if self.in_place:
            yield from self._open_in_place()
            return
        self.opened = True
        sink = SpillingFile(self.tmp, self.fd, self.format.extension)
        keep = False
        try:
            if resume:
                _copy_into(sink, resume)
            try:
                yield sink  # type: ignore[misc]  # a text sink: the format's writer only calls write()
            except BaseException as stop:
                if interrupted(stop):
                    keep = self._keep_partial(sink, stop)
                raise
            sink.close()
            if sink.spilled_to:
                keep = True
                raise DestinationError(f"cannot write {self.dest}: {sink.reason}; the complete output is at "
                                       f"{sink.spilled_to}")
            try:
                os.chmod(self.tmp, 0o666 & ~_umask())
                os.replace(self.tmp, self.dest)
            except OSError as error:
                keep = True
                raise DestinationError(f"cannot write {self.dest}: {error.strerror or error}; the complete "
                                       f"output is at {self.tmp}") from None
        finally:
            _finish(sink, keep, self.tmp)

    def _keep_partial(self, sink: SpillingFile, stop: BaseException) -> bool:
        """The rows written so far become DEST.partial (whole results only: each result is one write)."""
        try:
            sink.close()
            kept = sink.spilled_to or self.tmp
            os.chmod(kept, 0o666 & ~_umask())
            os.replace(kept, self.dest + PARTIAL)
            stop.partial = self.dest + PARTIAL  # type: ignore[attr-defined]
            return True
        except (OSError, DestinationError):
            return False

    def _open_in_place(self) -> Iterator[IO[str]]:
        """A character device or FIFO: written as it is, no temporary file, nothing to rename."""
        try:
            out = open(self.dest, "w", encoding="utf-8", newline="")
        except OSError as error:
            raise DestinationError(f"cannot write {self.dest}: {error.strerror or error}") from None
        try:
            yield out
            out.flush()
        except OSError as error:
            raise DestinationError(f"cannot write {self.dest}: {error.strerror or error}") from None
        finally:
            try:
                out.close()
            except OSError:
                pass


class S3Destination(Destination):
    def __init__(self, dest: str, fmt: OutputFormat = CSV):
        super().__init__(dest, fmt)
        from batch_job import s3

        self.bucket, self.key = s3.check_destination(dest)

    def partial(self) -> str | None:
        """s3://bucket/key.partial, downloaded to a temporary file (removed when this process ends)."""
        from batch_job import s3

        if not s3.exists(self.bucket, self.key + PARTIAL):
            return None
        fd, local = tempfile.mkstemp(prefix="partial-", suffix=self.format.extension)
        os.close(fd)
        s3.client().download_file(self.bucket, self.key + PARTIAL, local)
        import atexit

        atexit.register(_remove, local)
        return local

    def forget_partial(self) -> None:
        from batch_job import s3

        try:
            s3.client().delete_object(Bucket=self.bucket, Key=self.key + PARTIAL)
        except Exception as error:  # noqa: BLE001 - no s3:DeleteObject: say so, the output itself is complete
            print(f"warning: cannot delete {self.dest}{PARTIAL} ({s3.describe(error)}): delete it yourself",
                  file=sys.stderr)

    @contextmanager
    def open(self, resume: str | None = None) -> Iterator[IO[str]]:
        from batch_job import s3

        fd, tmp = tempfile.mkstemp(prefix="predictions-", suffix=self.format.extension)
        sink = SpillingFile(tmp, fd, self.format.extension)
        keep = False
        try:
            if resume:
                _copy_into(sink, resume)
            try:
                yield sink  # type: ignore[misc]
            except BaseException as stop:
                if interrupted(stop):  # SIGTERM from AWS Batch: the rows so far go up beside the output
                    try:
                        sink.close()
                        s3.upload_file(sink.spilled_to or tmp, self.dest + PARTIAL, self.format.content_type)
                        stop.partial = self.dest + PARTIAL  # type: ignore[attr-defined]
                    except (OSError, DestinationError):
                        pass
                raise
            sink.close()
            local = sink.spilled_to or tmp
            try:
                s3.upload_file(local, self.dest, self.format.content_type)
            except DestinationError as error:
                keep = True
                raise DestinationError(f"{error}; the complete output is kept at {local}") from None
        finally:
            _finish(sink, keep, tmp)


class SmallS3Destination(Destination):
    """An output known to be small (one SQS or bulk batch: kilobytes to a few MB), written to S3 in one
    PutObject when complete: no local file, no bucket check first (the put itself tells). The key must fit
    S3's limit: refused here, before the work, not by S3 after it."""

    def __init__(self, dest: str, fmt: OutputFormat = CSV):
        super().__init__(dest, fmt)
        from batch_job import s3

        self.bucket, self.key = s3.parse_url(dest)
        if not self.key or len(self.key.encode("utf-8")) > MAX_KEY_BYTES:
            raise DestinationError(f"output key empty or longer than S3's {MAX_KEY_BYTES} bytes: {dest[:80]}...")

    @contextmanager
    def open(self, resume: str | None = None) -> Iterator[IO[str]]:
        from batch_job import s3

        out = io.StringIO()
        yield out
        s3.put_text(self.bucket, self.key, out.getvalue(), self.format.content_type)


def open_destination(dest: str, sources: list[str] | None = None, fmt: OutputFormat = CSV,
                     small: bool = False) -> Destination:
    """The DEST of a run, checked now (before scoring): '-', a local path or s3://bucket/key. `small`: an S3
    output of one Lambda batch, written in one request."""
    if dest == "-":
        return StdoutDestination(dest, fmt)
    if is_s3_url(dest):
        return SmallS3Destination(dest, fmt) if small else S3Destination(dest, fmt)
    return LocalDestination(dest, sources or [], fmt)


__all__ = ["Destination", "OutputClosed", "open_destination"]
