"""A simulated Distributed Map run in moto (tests/bulk_map_sim.py says what it does and does not cover):
2,600 objects listed, batched by both ItemBatcher limits of infra/bulk.asl.json, scored batch by batch in
shuffled order, some batches twice and one after a transient failure; the parts together hold exactly one
row per object."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from botocore.exceptions import ClientError

from batch_job import bulk, s3
from tests.bulk_map_sim import batcher, cut_batches, event_bytes, listing_items, retry_policy, simulate_map
from tests.cloud_helpers import aws, deployed_buckets, get_text, image_bytes, put_many, read_csv  # noqa: F401

IN, OUT = "map-sim-input", "map-sim-output"
RUN = f"s3://{OUT}/runs/sim/"
ODD = ["photos/odd/happy face.png", "photos/odd/a+b=c&d.png", "photos/odd/Zoë/élan vital 😀.jpg",
       "photos/odd/100% sure.png", "photos/odd/tab\tand\"quote\".png"]
# 2,000 short keys (the item limit closes their batches) and 600 long ones (the byte limit closes theirs)
SHORT = [f"photos/short/{i:05d}.png" for i in range(2000)]
LONG = [f"photos/long/{'deep-folder-name/' * 24}{i:05d}.png" for i in range(600)]
IMAGES = ODD + SHORT + LONG
NOT_IMAGES = ["photos/readme.txt", "photos/empty-folder/"]


@pytest.fixture
def listed(aws, tiny_model, monkeypatch):
    with deployed_buckets(monkeypatch, tiny_model, IN, OUT) as client:
        bodies = [image_bytes(i, size=24) for i in range(16)]
        put_many(client, IN, {key: bodies[i % len(bodies)] for i, key in enumerate(IMAGES)})
        put_many(client, IN, {NOT_IMAGES[0]: b"not an image", NOT_IMAGES[1]: b""})
        yield client, listing_items(client, IN, "photos/")


def test_itembatcher_simulation_respects_both_limits_of_the_definition(listed):
    _, items = listed
    limits = batcher()
    batches = cut_batches(items, {"bucket": IN, "prefix": "photos/", "output": RUN},
                          limits["MaxItemsPerBatch"], limits["MaxInputBytesPerBatch"])
    assert [item for b in batches for item in b["Items"]] == items  # nothing lost, nothing reordered
    assert all(len(b["Items"]) <= limits["MaxItemsPerBatch"] for b in batches)
    assert all(event_bytes(b) <= limits["MaxInputBytesPerBatch"] for b in batches)
    full_by_count = [b for b in batches if len(b["Items"]) == limits["MaxItemsPerBatch"]]
    full_by_bytes = [b for b in batches if len(b["Items"]) < limits["MaxItemsPerBatch"] and b is not batches[-1]]
    assert full_by_count and full_by_bytes  # both limits were what closed some batch
    for b in full_by_bytes:  # greedy: the next item would not have fitted
        following = items[items.index(b["Items"][-1]) + 1]
        assert event_bytes(b) + 1 + event_bytes(following) > limits["MaxInputBytesPerBatch"]


def test_simulated_map_run_writes_exactly_one_row_per_object(listed, monkeypatch, capsys):
    client, items = listed
    assert len(items) == len(IMAGES) + len(NOT_IMAGES) >= 2500
    assert {item["Key"] for item in items} >= set(ODD)  # raw keys, exactly as uploaded
    limits = batcher()
    batches = cut_batches(items, {"bucket": IN, "prefix": "photos/", "output": RUN},
                          limits["MaxItemsPerBatch"], limits["MaxInputBytesPerBatch"])

    # one GetObject in the middle of the run fails as S3 does under load once boto3's retries are spent
    s3.reset_client()
    real, flaky_key, gets = s3.client().get_object, LONG[300], Counter()

    def get_object(**kwargs):
        gets[kwargs["Key"]] += 1
        if kwargs["Key"] == flaky_key and gets[flaky_key] == 1:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
        return real(**kwargs)

    monkeypatch.setattr(s3.client(), "get_object", get_object)
    started = time.perf_counter()
    run = simulate_map(batches, bulk.handler, retry_policy(), seed=11, duplicates=3)
    seconds = time.perf_counter() - started

    flaky_batch = next(i for i, b in enumerate(batches) if any(item["Key"] == flaky_key for item in b["Items"]))
    assert run.retried == [(flaky_batch, "TransientS3Error")] and run.failed == []
    assert sorted(i for i, n in run.calls.items() if n > 1) != [] and set(run.calls) == set(range(len(batches)))

    part_keys = sorted(e["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=OUT, Prefix="runs/sim/parts/") for e in page.get("Contents", ()))
    assert len(part_keys) == len(batches)  # retries and duplicates overwrote their parts
    rows = [row for key in part_keys for row in read_csv(get_text(client, OUT, key))]
    assert Counter(row["path"] for row in rows) == Counter(IMAGES)  # exactly one row per object
    assert all(row["error"] == "" for row in rows)  # the SlowDown became a retry, not an error row
    rows_by_part = {o["part"]: o["rows"] for o in run.outputs}  # what the children returned, per part
    assert set(rows_by_part) == {f"s3://{OUT}/{key}" for key in part_keys}
    assert sum(rows_by_part.values()) == len(IMAGES)
    assert sum(o["skipped"] for o in {o["part"]: o for o in run.outputs}.values()) == 2  # readme.txt, folder
    with capsys.disabled():
        print(f"\nsimulated map run: {len(items)} objects, {len(batches)} batches (+{sum(run.calls.values()) - len(batches)}"
              f" repeated calls), {seconds:.1f} s, {len(items) / seconds:.0f} objects/s (tiny model, moto in process)")
