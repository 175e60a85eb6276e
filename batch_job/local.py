"""Local files and folders as inputs.

The walk is lazy and sorted (names, files before sub-folders, depth first) and never fails the run: a folder
it cannot read (no permission, deleted mid-run, path too long) becomes an input whose row carries the reason;
a symlinked folder is followed once (a link back to a folder already walked is reported, not looped);
files without an image extension are counted as skipped. Reading opens regular files only (a FIFO or
/dev/zero named x.jpg gets an error row instead of hanging the run) and stops at MAX_INPUT_BYTES.

Names that are not UTF-8 are shown git-style: in double quotes, each byte that is not UTF-8 as \\xNN and
backslash and double quote escaped (`"caf\\xe9.jpg"` is the file named b'caf\\xe9.jpg'); the CSV stays
UTF-8 and the original name can be recovered exactly (display_name / original_name).
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from batch_job.base import Item, ReadError, is_input_path
from batch_job.budget import READS

MAX_INPUT_BYTES = 64 * 1024 * 1024  # far beyond any photo of faces; larger files get an error row
FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


@dataclass
class WalkStats:
    """What the walk left out, for the summary line."""
    skipped: int = 0  # files without an image extension


def display_name(path: str) -> str:
    """A path for the CSV: itself when it is valid UTF-8 (and does not start with a double quote), else quoted."""
    try:
        path.encode("utf-8")
        if not path.startswith('"'):
            return path
    except UnicodeEncodeError:
        pass
    raw = os.fsencode(path)
    text = raw.decode("utf-8", errors="surrogateescape").replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c for c in text) + '"'


def original_name(shown: str) -> bytes:
    """The file name's bytes from what display_name showed (its inverse)."""
    if not (len(shown) >= 2 and shown.startswith('"') and shown.endswith('"')):
        return shown.encode("utf-8")
    out = bytearray()
    for match in re.finditer(r'\\x([0-9a-f]{2})|\\(["\\])|([^\\]+)', shown[1:-1], flags=re.S):
        byte, escaped, plain = match.groups()
        out += bytes([int(byte, 16)]) if byte else (escaped or plain).encode("utf-8")
    return bytes(out)


def read_file(path: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """A regular file's bytes; ReadError for anything else (never blocks on a FIFO, never reads /dev/zero)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as error:
        raise ReadError(f"cannot read: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError(f"not a regular file ({FILE_KINDS.get(stat.S_IFMT(info.st_mode), 'special file')})")
        if info.st_size > limit:
            raise ReadError(f"file too large ({info.st_size} bytes, limit {limit})")
        READS.reserve_for_thread(info.st_size)  # held until the pipeline has analysed these bytes
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise ReadError(f"file too large (more than {limit} bytes)")
        return b"".join(chunks)
    except OSError as error:
        raise ReadError(f"cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)


def _reader(path: str) -> Callable[[], bytes]:
    return lambda: read_file(path)


def _failing(message: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise ReadError(message)
    return read


def walk(folder: str, stats: WalkStats | None = None) -> Iterator[tuple[str, str | None]]:
    """(path, None) for each image file under folder, (path, reason) for each folder that cannot be walked."""
    stats = stats if stats is not None else WalkStats()
    visited: set[tuple[int, int]] = set()
    try:
        info = os.stat(folder)
        visited.add((info.st_dev, info.st_ino))
    except OSError as error:
        yield folder, f"cannot read folder: {error.strerror or error}"
        return
    yield from _walk(folder, visited, stats)


def _walk(folder: str, visited: set[tuple[int, int]], stats: WalkStats) -> Iterator[tuple[str, str | None]]:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        yield folder, f"cannot read folder: {error.strerror or error}"
        return
    folders = []
    for entry in entries:
        try:
            is_folder = entry.is_dir()  # follows symlinks: a linked folder is walked like a real one
        except OSError:
            is_folder = False
        if is_folder:
            folders.append(entry.path)
        elif is_input_path(entry.name):
            yield entry.path, None
        else:
            stats.skipped += 1
    for path in folders:
        try:
            info = os.stat(path)
        except OSError as error:
            yield path, f"cannot read folder: {error.strerror or error}"
            continue
        key = (info.st_dev, info.st_ino)
        if key in visited:
            yield path, "not followed: a link to a folder already walked (a symlink loop)"
            continue
        visited.add(key)
        yield from _walk(path, visited, stats)


def local_items(source: str, prefix_with_source: bool = False, stats: WalkStats | None = None) -> Iterator[Item]:
    """A folder (recursive) or one file. Paths are relative to the folder, or prefixed with it if asked."""
    from batch_job.base import SourceError

    try:
        is_folder = os.path.isdir(source)
        exists = is_folder or os.path.lexists(source)
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot read {display_name(source)}: {error}") from None
    if not exists:
        raise SourceError(f"no such file or folder: {display_name(source)}")
    if not is_folder:
        yield Item(display_name(source), lambda: read_file(source), local=source)
        return
    root = source.rstrip("/") or "/"
    for path, problem in walk(source, stats):
        relative = path[len(root):].lstrip("/") if path.startswith(root) else path
        shown = display_name(f"{root}/{relative}" if prefix_with_source else relative or path)
        yield Item(shown, _failing(problem) if problem else _reader(path), local=None if problem else path)
