"""Where images come from: the one place that turns the SOURCEs of a run into Items.

A source is a local folder or file, s3://bucket/prefix or s3://bucket/key.jpg. open_sources() recognises the
scheme, drops sources that another source already covers (`run DIR DIR/a.jpg`, `run dir dir/`: each file is
scored once) and counts what it skipped; the CLI, the Lambda handler and Batch all go through it.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from batch_job.base import S3_SCHEME, Item, SourceError, is_input_path, is_s3_url  # noqa: F401 - Item, SourceError re-exported
from batch_job.local import WalkStats, local_items


def _is_single_s3_object(url: str) -> bool:
    key = url[len(S3_SCHEME):].partition("/")[2]
    return bool(key) and not key.endswith("/") and is_input_path(key)


def _covers(outer: str, inner: str) -> bool:
    """Whether every input of `inner` is also an input of `outer` (both already normalised)."""
    if is_s3_url(outer) != is_s3_url(inner):
        return False
    if is_s3_url(outer):
        return not _is_single_s3_object(outer) and inner.startswith(outer)
    return os.path.isdir(outer) and inner.startswith(outer.rstrip("/") + "/")


def _normalised(source: str) -> str:
    if is_s3_url(source):
        return source
    try:
        return os.path.realpath(source)
    except (OSError, ValueError):
        return source


@dataclass
class Sources:
    """The sources to read, after removing those that repeat another; `stats` counts what the walk skipped."""
    given: list[str]
    kept: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (source, the source that covers it)
    stats: WalkStats = field(default_factory=WalkStats)

    def items(self) -> Iterator[Item]:
        """Every input, in order; with several sources each path keeps its source as a prefix."""
        several = len(self.kept) > 1
        for source in self.kept:
            if is_s3_url(source):
                from batch_job.s3 import s3_items

                yield from s3_items(source, full_url=several, stats=self.stats)
            else:
                yield from local_items(source, prefix_with_source=several, stats=self.stats)


def open_sources(sources: list[str]) -> Sources:
    """Sources without repeats: a source equal to an earlier one, or inside another folder/prefix, is dropped."""
    result = Sources(list(sources))
    normal = [_normalised(source) for source in sources]
    for index, (source, key) in enumerate(zip(sources, normal, strict=True)):
        earlier = [sources[i] for i in range(index) if normal[i] == key]
        covering = [sources[i] for i, other in enumerate(normal) if i != index and other != key and _covers(other, key)]
        if earlier or covering:
            result.dropped.append((source, (earlier or covering)[0]))
        else:
            result.kept.append(source)
    return result


def items_for(sources: list[str]) -> Iterator[Item]:
    """Every input named on the command line, in order, each once (see open_sources)."""
    return open_sources(sources).items()


def non_empty(items: Iterable[Item]) -> Iterator[Item] | None:
    """The same items, or None when there are none: checked before any output is opened."""
    iterator = iter(items)
    first = next(iterator, None)
    return None if first is None else itertools.chain([first], iterator)
