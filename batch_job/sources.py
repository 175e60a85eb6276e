"""Where images come from: each input becomes an Item with a display path and a way to read its bytes."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from batch_job.preprocessing import is_image_path


class SourceError(RuntimeError):
    """A source that cannot be listed at all (missing folder, no permission): fatal for the run."""


@dataclass(frozen=True)
class Item:
    path: str  # what the CSV's path column shows
    read: Callable[[], bytes]


def _walk_sorted(folder: Path) -> Iterator[Path]:
    """Image files under folder, recursively, in a deterministic order (sorted names, depth first)."""
    def on_error(error: OSError) -> None:
        raise SourceError(f"cannot read folder {error.filename}: {error.strerror}")

    for root, dirs, files in os.walk(folder, onerror=on_error):
        dirs.sort()
        for name in sorted(files):
            if is_image_path(name):
                yield Path(root) / name


def local_items(source: str, prefix_with_source: bool = False) -> Iterator[Item]:
    """A folder (recursive) or one file. Paths are relative to the folder, or prefixed with it if asked."""
    path = Path(source)
    if path.is_file():
        yield Item(source, path.read_bytes)
    elif path.is_dir():
        for file in _walk_sorted(path):
            relative = file.relative_to(path).as_posix()
            yield Item(f"{source.rstrip('/')}/{relative}" if prefix_with_source else relative, file.read_bytes)
    else:
        raise SourceError(f"no such file or folder: {source}")


def items_for(sources: list[str]) -> Iterator[Item]:
    """Every input named on the command line, in order; several sources keep their own prefix.

    s3://bucket/prefix and s3://bucket/key.jpg are listed lazily by batch_job.s3 (imported only when used).
    """
    for source in sources:
        if source.startswith("s3://"):
            from batch_job.s3 import s3_items

            yield from s3_items(source, full_url=len(sources) > 1)
        else:
            yield from local_items(source, prefix_with_source=len(sources) > 1)


def non_empty(items: Iterable[Item]) -> Iterator[Item] | None:
    """The same items, or None when there are none: checked before any output is opened."""
    iterator = iter(items)
    first = next(iterator, None)
    return None if first is None else itertools.chain([first], iterator)
