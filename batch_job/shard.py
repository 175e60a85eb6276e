"""Shard i of N: which inputs one child of an AWS Batch array job (or one local process) scores.

A stable hash of each item's path decides its shard, so N children that list the same source each score a
disjoint part of it and together score all of it, whatever order the listing comes in. Python's hash() is
salted per process and cannot be used: sha256 of the UTF-8 path is the same on every machine.

`--shard array/N` takes i from AWS_BATCH_JOB_ARRAY_INDEX, which AWS Batch sets in each child of an array
job (a job's command cannot expand environment variables itself).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

ARRAY_INDEX_VARIABLE = "AWS_BATCH_JOB_ARRAY_INDEX"
MAX_SHARDS = 10_000  # AWS Batch's largest array job

T = TypeVar("T")


class ShardError(ValueError):
    """A --shard value that names no shard (the CLI turns it into a usage error)."""


def parse_shard(text: str, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """'3/16' -> (3, 16): shard 3 of 16, counted from 0. 'array/16' reads the index from AWS Batch."""
    index_text, slash, count_text = str(text).strip().partition("/")
    if not slash:
        raise ShardError(f"--shard must be INDEX/COUNT, e.g. 3/16 (shard 3 of 16, counted from 0), not {text!r}")
    try:
        count = int(count_text)
    except ValueError:
        raise ShardError(f"shard count must be an integer: {text!r}") from None
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"shard count must be 1 to {MAX_SHARDS}: {text!r}")
    if index_text == "array":
        index_text = env.get(ARRAY_INDEX_VARIABLE, "")
        if not index_text:
            raise ShardError(f"--shard {text}: {ARRAY_INDEX_VARIABLE} is not set (not a child of an AWS Batch "
                             "array job); give the index, e.g. --shard 0/" + count_text)
    try:
        index = int(index_text)
    except ValueError:
        raise ShardError(f"shard index must be an integer or 'array': {text!r}") from None
    if not 0 <= index < count:
        raise ShardError(f"shard index must be 0 to {count - 1} for {count} shards, not {index} "
                         f"(an array job of size {count} numbers its children 0 to {count - 1})")
    return index, count


def shard_argument(text: str) -> tuple[int, int]:
    """parse_shard for argparse (type=shard_argument): a bad --shard is a usage error (exit status 2)."""
    import argparse

    try:
        return parse_shard(text)
    except ShardError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def shard_of(path: str, count: int) -> int:
    """The shard (0 to count-1) that scores `path`: the same answer on every machine and every run."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(items: Iterable[T], index: int, count: int) -> Iterator[T]:
    """The items of shard `index` of `count`, lazily, in their original order. Items are strings (keys,
    paths) or objects with a `.path` (batch_job.sources.Item)."""
    if not 0 <= index < count:
        raise ShardError(f"shard index must be 0 to {count - 1}, not {index}")
    if count == 1:
        yield from items
        return
    for item in items:
        if shard_of(item if isinstance(item, str) else getattr(item, "path"), count) == index:  # noqa: B009
            yield item


def part_name(index: int, count: int, extension: str = ".csv") -> str:
    """The part a shard writes: sorts in shard order and says how many shards the run had."""
    return f"part-shard-{index:05d}-of-{count:05d}{extension}"


def output_for(dest: str, index: int, count: int, extension: str = ".csv") -> str:
    """Where shard i of N writes. A folder (a destination ending in '/', local or s3://) gets the run layout
    the bulk path uses, <dest>parts/part-shard-<i>-of-<N>.csv, which `merge` and Athena read; a file name is
    used as given (the caller chose it)."""
    if dest.endswith("/"):
        return posixpath.join(dest, "parts", part_name(index, count, extension))
    return dest
