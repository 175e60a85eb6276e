"""--shard i/N: N children that list the same source score disjoint parts that together are all of it."""
from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from batch_job.shard import ShardError, in_shard, output_for, parse_shard, shard_argument, shard_of
from batch_job.sources import Item
from tests.conftest import REPO

KEYS = ([f"photos/{i:05d}.jpg" for i in range(3000)]
        + ["photos/happy face.png", "photos/a+b=c&d.png", "photos/Zoë/élan vital 😀.jpg", "photos/x/"])


@pytest.mark.parametrize("count", range(1, 9))
def test_shards_partition_a_listing_exactly_no_key_twice_none_missing(count):
    shards = [list(in_shard(KEYS, index, count)) for index in range(count)]
    seen = Counter(key for shard in shards for key in shard)
    assert set(seen) == set(KEYS) and max(seen.values()) == 1
    if count > 1:  # a hash, not a range: no shard is empty or takes nearly everything
        assert all(0.5 * len(KEYS) / count < len(shard) < 1.5 * len(KEYS) / count for shard in shards)


def test_shard_membership_does_not_depend_on_listing_order():
    shuffled = KEYS[:]
    random.Random(7).shuffle(shuffled)
    for index in range(5):
        assert set(in_shard(shuffled, index, 5)) == set(in_shard(KEYS, index, 5))
    assert list(in_shard(KEYS, 2, 5)) == [k for k in KEYS if k in set(in_shard(KEYS, 2, 5))]  # order kept


def test_items_are_sharded_by_their_path_like_plain_keys():
    items = [Item(key, lambda: b"") for key in KEYS]
    assert [item.path for item in in_shard(items, 1, 3)] == list(in_shard(KEYS, 1, 3))


def test_shard_of_is_the_same_in_another_process():
    """sha256, not Python's per-process salted hash(): every Batch child agrees on every key."""
    code = ("from batch_job.shard import shard_of; "
            "print([shard_of(k, 16) for k in ['photos/00001.jpg', 'photos/Zoë/élan vital 😀.jpg', 'a']])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123"}, cwd=REPO)
    assert other.stdout.strip() == str([shard_of(k, 16) for k in ["photos/00001.jpg", "photos/Zoë/élan vital 😀.jpg", "a"]])


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("3/16", (3, 16)), (" 15/16 ", (15, 16)),
                                            ("9999/10000", (9999, 10000))])
def test_parse_shard_reads_index_and_count(text, expected):
    assert parse_shard(text, env={}) == expected


@pytest.mark.parametrize("text, message", [
    ("3", "INDEX/COUNT"), ("3-16", "INDEX/COUNT"), ("a/16", "index must be an integer"),
    ("3/x", "count must be an integer"), ("16/16", "0 to 15"), ("-1/4", "0 to 3"), ("0/0", "1 to 10000"),
    ("0/10001", "1 to 10000"), ("", "INDEX/COUNT"),
])
def test_parse_shard_rejects_what_names_no_shard_with_a_clear_message(text, message):
    with pytest.raises(ShardError, match=message):
        parse_shard(text, env={})


def test_array_index_comes_from_aws_batch():
    assert parse_shard("array/16", env={"AWS_BATCH_JOB_ARRAY_INDEX": "7"}) == (7, 16)
    with pytest.raises(ShardError, match="AWS_BATCH_JOB_ARRAY_INDEX is not set"):
        parse_shard("array/16", env={})
    with pytest.raises(ShardError, match="0 to 7"):  # array size 16, but the job said 8 shards
        parse_shard("array/8", env={"AWS_BATCH_JOB_ARRAY_INDEX": "12"})


def test_a_folder_destination_gets_the_run_layout_and_a_file_is_kept():
    assert output_for("s3://out/runs/june/", 3, 16) == "s3://out/runs/june/parts/part-shard-00003-of-00016.csv"
    assert output_for("results/", 0, 2) == "results/parts/part-shard-00000-of-00002.csv"
    assert output_for("s3://out/x.csv", 3, 16) == "s3://out/x.csv"
    names = [output_for("r/", i, 12) for i in range(12)]
    assert names == sorted(names) and len(set(names)) == 12


def test_a_bad_shard_on_the_command_line_is_a_usage_error(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--shard", type=shard_argument)
    assert parser.parse_args(["--shard", "3/16"]).shard == (3, 16)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--shard", "16/16"])
    assert exit_.value.code == 2 and "0 to 15" in capsys.readouterr().err


def test_run_with_shards_partitions_a_folder_exactly_through_the_cli(tmp_path, tiny_model):
    """`run DIR --shard i/N -o OUT/` for i = 0..N-1: the parts together hold every image once; an empty
    shard still writes its header-only part (a Batch child with nothing to do succeeds)."""
    import csv as csv_module

    from batch_job.cli import main
    from tests.conftest import face_like

    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        face_like(i).save(images / f"{i:02d}.png")
    out = tmp_path / "run"
    for index in range(4):
        assert main(["run", str(images), "--shard", f"{index}/4", "--model", str(tiny_model), "-o",
                     f"{out}/", "--faces", "whole"]) == 0
    parts = sorted((out / "parts").glob("*.csv"))
    assert len(parts) == 4
    paths = [row["path"] for part in parts for row in csv_module.DictReader(part.open())]
    assert sorted(paths) == [f"{i:02d}.png" for i in range(12)]
    one = tmp_path / "one"
    one.mkdir()
    face_like(0).save(one / "only.png")
    empty_shard = next(i for i in range(2) if shard_of("only.png", 2) != i)
    assert main(["run", str(one), "--shard", f"{empty_shard}/2", "--model", str(tiny_model), "-o",
                 f"{tmp_path}/single/"]) == 0
    (part,) = (tmp_path / "single" / "parts").glob("*.csv")
    assert part.read_text().count("\n") == 1  # the header alone
