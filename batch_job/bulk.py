"""Step Functions Distributed Map: the Lambda that scores one ItemBatcher batch (image CMD override
batch_job.bulk.handler; the state machine is infra/bulk.asl.json, the run layout bulk_run.py).

A batch arrives as Step Functions builds it from ListObjectsV2 (or an S3 Inventory manifest):
    {"BatchInput": {"bucket": "in", "prefix": "photos/", "output": "s3://out/runs/june/"},
     "Items": [{"Key": "photos/a b.jpg", "Etag": "\\"9b2c...\\"", "Size": 1234, "LastModified": "...", ...}]}
ListObjectsV2 keys come raw (a space is a space, '+' is '+'): they are used as they are. Inventory CSVs
carry URL-encoded keys: that reader sets "key_encoding": "url" and only then are keys decoded.

The batch becomes one CSV, <output>parts/part-<hash>.csv, named after (bucket, key, etag) of the objects it
scores: EXPRESS child executions run at least once, and a retry of the same batch overwrites its part
instead of adding rows. The function returns {"part", "objects", "rows", "errors", "skipped"}.

Failures: an unreadable or corrupt object is an error row, as everywhere else. A transient S3 failure
(throttling, 5xx, a dropped connection) that outlived boto3's own retries is not an answer about the object:
the batch raises TransientS3Error, writes nothing, and the state machine retries it later with backoff.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote_plus

from batch_job import bulk_run, s3
from batch_job.base import Error, is_image_path
from batch_job.events import EventError, S3Object
from batch_job.runtime import Config, host_setup, log_json, score_objects, scorer, setup_logging, write


class TransientS3Error(Error):
    """S3 said 'later' (throttling, 5xx, connection lost) after boto3's retries: the whole batch is retried.
    The state machine's Retry matches this class name (Lambda reports it as the errorType)."""


@dataclass(frozen=True)
class Batch:
    """One ItemBatcher batch: the image objects to score and where its part goes."""
    objects: tuple[S3Object, ...]
    output: str  # the run folder, s3://bucket/prefix/
    skipped: tuple[str, ...] = ()  # keys that name no image (folders, other files, outside the prefix)
    raw: dict = field(default_factory=dict)  # object -> its key as the inventory gave it, where decoding changed it


def parse_batch(event: object) -> Batch:
    """The Distributed Map batch event -> Batch. Malformed events raise EventError (not retried)."""
    if not isinstance(event, dict) or not isinstance(event.get("Items"), list):
        raise EventError("not a Distributed Map batch: expected {\"BatchInput\": {...}, \"Items\": [...]}")
    settings = event.get("BatchInput")
    if not isinstance(settings, dict):
        raise EventError("batch without BatchInput (bucket, output): check the state machine's ItemBatcher")
    bucket, output = settings.get("bucket"), settings.get("output")
    prefix = settings.get("prefix") or ""
    if not isinstance(bucket, str) or not bucket:
        raise EventError(f"BatchInput.bucket must be the source bucket's name, not {bucket!r}")
    bulk_run.split_run_url(output)  # raises EventError for anything but s3://bucket/prefix/
    assert isinstance(output, str)
    decode = settings.get("key_encoding") == "url"
    objects, skipped, raw = [], [], {}
    for item in event["Items"]:
        if not isinstance(item, dict) or not isinstance(item.get("Key"), str) or not item["Key"]:
            raise EventError(f"batch item without a Key: {item!r:.200}")
        key = unquote_plus(item["Key"]) if decode else item["Key"]
        if key.endswith("/") or not key.startswith(prefix) or not is_image_path(key):
            skipped.append(key)
            continue
        found = S3Object(str(item.get("Bucket") or bucket), key, _version(item), _etag(item))
        objects.append(found)
        if decode and key != item["Key"]:
            raw[found] = item["Key"]
    return Batch(tuple(dict.fromkeys(objects)), output, tuple(skipped), raw)


def decoded_keys(batch: Batch) -> Batch:
    """Inventory keys are URL-encoded in the inventory's files; whether Step Functions hands them on encoded or
    already decoded is not documented. One HEAD per batch (only when decoding changed a key) tells: if the
    decoded key is missing and the key as given exists, the keys came decoded, and decoding them again would
    corrupt every key with '+' or '%'; the batch then uses them as given."""
    probe = next(iter(batch.raw), None)
    if probe is None or s3.exists(probe.bucket, probe.key) is not False:
        return batch
    if not s3.exists(probe.bucket, batch.raw[probe]):
        return batch  # neither exists (deleted since the inventory): keep the decoded reading
    objects = tuple(replace(o, key=batch.raw.get(o, o.key)) for o in batch.objects)
    return replace(batch, objects=objects, raw={})


def _etag(item: Mapping) -> str:
    return str(item.get("Etag") or item.get("ETag") or "").strip('"')


def _version(item: Mapping) -> str:
    """What tells two uploads of one key apart: the ETag (ListObjectsV2 says 'Etag', inventories 'ETag'),
    else size and time (inventories without the ETag field)."""
    etag = item.get("Etag") or item.get("ETag")
    if etag:
        return str(etag).strip('"')
    return f"{item.get('Size', '')}@{item.get('LastModified') or item.get('LastModifiedDate') or ''}"


def part_name(objects: Iterable[S3Object], extension: str = ".csv") -> str:
    """'part-<hash>.csv' (or .jsonl) from (bucket, key, etag) of the objects, in any order: a retried batch gets
    the same name, a different set of objects (or a re-uploaded one) a different one."""
    identity = sorted({(o.bucket, o.key, o.version) for o in objects})
    if not identity:
        raise ValueError("no objects to name a part after")
    digest = hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"part-{digest[:24]}{extension}"


def score_batch(event: dict, config: Config) -> dict:
    """Score one batch into its part. Returns the part's URL (None when nothing in it was an image)."""
    from botocore.exceptions import BotoCoreError, ClientError

    batch = parse_batch(event)
    if batch.raw:
        batch = decoded_keys(batch)
    result = {"part": None, "objects": len(batch.objects) + len(batch.skipped), "rows": 0, "errors": 0,
              "skipped": len(batch.skipped)}
    if not batch.objects:
        return result
    out_bucket, out_prefix = bulk_run.split_run_url(batch.output)
    config = replace(config, output_bucket=out_bucket, output_prefix=out_prefix + bulk_run.PARTS)
    predictions = score_objects(batch.objects, config, full_url=False)
    later = [(p.path, p.error) for p in predictions if p.transient]
    if later:
        raise TransientS3Error(f"{len(later)} of {len(batch.objects)} objects met a transient S3 error "
                               f"(first: {later[0][0]}: {later[0][1]}); the batch is retried whole")
    key = config.output_prefix + part_name(batch.objects, config.output_format.extension)
    try:
        totals = write(predictions, f"s3://{out_bucket}/{key}", config, scorer(config).classes)
    except (ClientError, BotoCoreError) as error:
        if s3.is_transient(error):
            raise TransientS3Error(f"cannot write s3://{out_bucket}/{key}: {s3.describe(error)}") from None
        raise
    # an image without a face is a row, not an error
    return {**result, "part": f"s3://{out_bucket}/{key}", "rows": totals.rows, "errors": totals.errors}


def handler(event: dict, context: object = None) -> dict:
    """The BulkScoringFunction's entry point: a batch to score, or the run's final summary step."""
    setup_logging(context)
    host_setup()
    if isinstance(event, dict) and "summary" in event:
        result = bulk_run.write_summary(event["summary"])
        log_json(event="summary", **result, **bulk_run.failed_batches_metric(result))
        return result
    result = score_batch(event, Config.from_env())
    log_json(event="batch", **result)
    return result
