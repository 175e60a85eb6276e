"""A Distributed Map run, simulated against moto's S3, because moto cannot run one (moto 5's Step Functions
rejects ItemBatcher and has no ItemReader or ResultWriter).

What it covers, with the real code: listing a prefix with ListObjectsV2 and turning each entry into the
item Step Functions passes (raw Key, quoted Etag, Size, LastModified, StorageClass); cutting the items into
batches greedily by both ItemBatcher limits read from infra/bulk.asl.json; the batch handler
(batch_job.bulk.handler) on every batch, in shuffled order, some twice (EXPRESS children are at-least-once),
with the Retry policy of the definition applied to the errors it raises; the parts it writes.

What it does not cover: Step Functions itself (its scheduler, MaxConcurrency, how it really measures
MaxInputBytesPerBatch, ResultWriter's files, IAM), real S3 latency and throttling, Lambda cold starts.
Batches run one after another in this process, so objects/s here is one worker's rate on this machine.

    python -m tests.bulk_map_sim --objects 5000   # measure: prints one JSON line
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO

ASL = REPO / "infra" / "bulk.asl.json"


def definition() -> dict:
    return json.loads(ASL.read_text())


def batcher(state: str = "ScoreListing", memory_mb: int = 2048) -> dict:
    """The state's ItemBatcher with MaxItemsPerBatchPath resolved as the deployed stack resolves it: the Sizing
    mapping's value for the function's memory (the template's default, 2,048 MB)."""
    from batch_job.sizing import for_memory

    limits = dict(definition()["States"][state]["ItemBatcher"])
    assert limits.pop("MaxItemsPerBatchPath") == "$.settings.items_per_batch"
    return {**limits, "MaxItemsPerBatch": for_memory(memory_mb).batch_items}


def retry_policy(state: str = "ScoreListing") -> list[dict]:
    return definition()["States"][state]["ItemProcessor"]["States"]["ScoreBatch"]["Retry"]


def listing_items(client, bucket: str, prefix: str) -> list[dict]:
    """What the ItemReader (arn:aws:states:::s3:listObjectsV2) makes of a prefix: one item per object."""
    items = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", ()):
            items.append({"Etag": entry["ETag"], "Key": entry["Key"],
                          "LastModified": int(entry["LastModified"].timestamp()), "Size": entry["Size"],
                          "StorageClass": entry.get("StorageClass", "STANDARD")})
    return items


def event_bytes(event: dict) -> int:
    return len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def cut_batches(items: list[dict], batch_input: dict, max_items: int, max_bytes: int) -> list[dict]:
    """ItemBatcher, greedily: a batch closes when one more item would pass either limit. Bytes are those of
    the whole event the child gets ({"BatchInput": ..., "Items": [...]}, compact JSON)."""
    batches: list[dict] = []
    current: list[dict] = []
    size = event_bytes({"BatchInput": batch_input, "Items": []})
    for item in items:
        extra = event_bytes(item) + (1 if current else 0)
        if current and (len(current) == max_items or size + extra > max_bytes):
            batches.append({"BatchInput": batch_input, "Items": current})
            current, size = [], event_bytes({"BatchInput": batch_input, "Items": []})
            extra = event_bytes(item)
        current.append(item)
        size += extra
    if current:
        batches.append({"BatchInput": batch_input, "Items": current})
    return batches


@dataclass
class MapRun:
    """What the simulated map did: calls per batch, retries, failures, and the children's outputs."""
    calls: dict[int, int] = field(default_factory=dict)
    retried: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def run_child(index: int, batch: dict, invoke: Callable[[dict], dict], retry: list[dict], run: MapRun) -> None:
    """One child execution: invoke, and on an error retry as the definition's Retry list says (no sleeping)."""
    attempts: dict[int, int] = {}
    while True:
        run.calls[index] = run.calls.get(index, 0) + 1
        try:
            run.outputs.append(invoke(json.loads(json.dumps(batch))))  # a fresh copy, as the service sends
            return
        except Exception as error:  # noqa: BLE001 - the service matches errors by name
            name = type(error).__name__
            rule = next((i for i, r in enumerate(retry) if name in r["ErrorEquals"] or "States.ALL" in r["ErrorEquals"]),
                        None)
            if rule is None or attempts.get(rule, 0) >= retry[rule].get("MaxAttempts", 3):
                run.failed.append((index, name))
                return
            attempts[rule] = attempts.get(rule, 0) + 1
            run.retried.append((index, name))


def simulate_map(batches: list[dict], invoke: Callable[[dict], dict], retry: list[dict], seed: int = 0,
                 duplicates: int = 2) -> MapRun:
    """Every batch once, in shuffled order, and `duplicates` of them a second time (at-least-once)."""
    rng = random.Random(seed)
    order = list(range(len(batches)))
    rng.shuffle(order)
    order += rng.sample(range(len(batches)), min(duplicates, len(batches)))
    run = MapRun()
    started = time.perf_counter()
    for index in order:
        run_child(index, batches[index], invoke, retry, run)
    run.seconds = time.perf_counter() - started
    return run


def main(argv: list[str] | None = None) -> None:
    """Measure a simulated run: N objects (dataset JPEGs when there, else generated PNGs), the given model."""
    import boto3
    from moto import mock_aws

    from batch_job import bulk, runtime, s3
    from tests.cloud_helpers import DUMMY_CREDENTIALS, image_bytes, put_many
    from tests.conftest import SHARED_DATA, SHIPPED_MODEL

    parser = argparse.ArgumentParser(prog="python -m tests.bulk_map_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    args = parser.parse_args(argv)

    import os
    os.environ.update(DUMMY_CREDENTIALS, OUTPUT_BUCKET="sim-output", MODEL_PATH=args.model)
    images = sorted((SHARED_DATA / "test").glob("*/*.jpg")) + sorted((SHARED_DATA / "validation").glob("*/*.jpg"))
    bodies = [p.read_bytes() for p in images[:2000]] or [image_bytes(i, "JPEG") for i in range(500)]
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="sim-input")
        client.create_bucket(Bucket="sim-output")
        put_many(client, "sim-input", {f"photos/{i // 1000:04d}/face {i}.jpg": bodies[i % len(bodies)]
                                       for i in range(args.objects)})
        s3.reset_client()
        runtime.scorer(runtime.Config.from_env())  # a warm container: the model load is not part of the rate
        settings = batcher()
        started = time.perf_counter()
        items = listing_items(client, "sim-input", "photos/")
        batches = cut_batches(items, {"bucket": "sim-input", "prefix": "photos/", "output": "s3://sim-output/run/"},
                              settings["MaxItemsPerBatch"], settings["MaxInputBytesPerBatch"])
        run = simulate_map(batches, bulk.handler, retry_policy(), duplicates=0)
        seconds = time.perf_counter() - started
    rows = sum(o["rows"] for o in run.outputs)
    print(json.dumps({"objects": len(items), "batches": len(batches), "rows": rows, "seconds": round(seconds, 2),
                      "objects_per_s": round(len(items) / seconds, 1), "model": Path(args.model).name,
                      "dataset_images": bool(images), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
