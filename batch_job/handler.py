"""AWS Lambda entry point: a thin adapter from events (events.py) to the scoring pipeline.

Environment: OUTPUT_BUCKET (required), OUTPUT_PREFIX (default 'predictions/') and the scoring settings
(FACES, PRECISION, OUTPUT_FORMAT, ...: batch_job.runtime). The models are loaded once per container, on the
first invocation, and reused by every later one.

Outputs, always at least one CSV row per scored object (a row per face found; unreadable or corrupt objects
get error rows, images without a face a 'no face found' row):
- SQS batch (the deployed path) or an S3 notification sent straight to the function: one CSV per invocation,
  named after the uploads it scores (bucket, key, sequencer; events.output_name): a retried invocation
  overwrites its CSV instead of adding one. One upload: <OUTPUT_PREFIX><bucket>/<key>.<id>.csv; several:
  <OUTPUT_PREFIX>batch-<id>.csv (.jsonl with OUTPUT_FORMAT=jsonl). Paths are s3://bucket/key, and each row
  carries source_version (the event's sequencer): S3 delivers events at least once, and SQS may redeliver a
  message into another batch, so an image can appear in two outputs; (path, source_version) identifies the
  upload, and docs/cloud.md shows the query that keeps one copy. SQS messages that are not S3 notifications come back as
  {"batchItemFailures": [...]} (retried, then dead-lettered); the others are scored.
- {"prefix": "s3://bucket/photos/", "output": "s3://bucket/key.csv"}: one CSV for every image under the
  prefix (output defaults to s3://$OUTPUT_BUCKET/$OUTPUT_PREFIX<bucket>/<prefix>predictions.csv).
  Bound by Lambda's 15 minutes: use AWS Batch (docs/cloud.md) for big folders.
"""
from __future__ import annotations

from itertools import chain

from batch_job import s3
from batch_job.base import BatchJobError, ConfigError, is_image_path  # noqa: F401 - ConfigError: callers catch it
from batch_job.destinations import open_destination
from batch_job.events import EventError, S3Object, event_kind, output_name, prefix_request, s3_objects, sqs_messages
from batch_job.results import ImageResult, Totals
from batch_job.runtime import Config, host_setup, log_json, score_objects, scorer, setup_logging, write
from batch_job.sources import non_empty, open_sources


class BatchFailed(BatchJobError):
    """Every message of an SQS batch failed: raised (as Powertools does) so Lambda's error metrics and
    alarms see it; the queue retries the whole batch."""


def output_url(config: Config, objects: list[S3Object]) -> str:
    key = config.output_prefix + output_name(objects, config.output_prefix, config.output_format.extension)
    return f"s3://{config.output_bucket}/{key}"


def _summary(output: str | None, results: list[ImageResult], skipped: int = 0) -> dict:
    totals = Totals.of(results)
    totals.skipped = skipped
    return {"output": output, **fields(totals)}


def fields(totals: Totals) -> dict:
    """The totals a function reports (the functions take no videos: they count as skipped keys)."""
    return {key: value for key, value in vars(totals).items() if key != "skipped_videos"} | {"rows": totals.rows}


def images_only(objects: list[S3Object]) -> tuple[list[S3Object], int]:
    """The objects whose keys are image names, and how many others there were: the rule of the command line and
    the bulk path (a notes.txt upload is skipped and counted, not an error row)."""
    images = [o for o in objects if is_image_path(o.key)]
    return images, len(objects) - len(images)


def handle_s3_event(event: dict, config: Config) -> dict:
    """An S3 notification invoking the function directly: one CSV for all its objects. A transient S3 failure
    fails the invocation, so Lambda's own retry of the asynchronous event scores it again."""
    objects, skipped = images_only(list(dict.fromkeys(s3_objects(event))))
    if not objects:
        return _summary(None, [], skipped)
    predictions = score_objects(objects, config)
    later = [p.path for p in predictions if p.transient]
    if later:
        raise BatchFailed(f"{len(later)} objects met a transient S3 error (first: {later[0]}); retry the event")
    url = output_url(config, objects)
    write(predictions, url, config, scorer(config).classes)
    return _summary(url, predictions, skipped)


def handle_sqs_event(event: dict, config: Config) -> dict:
    """An SQS batch: the objects of all usable messages are scored into one CSV; the messages that cannot be
    used (or all of them, if the CSV could not be written) are reported back to the queue for a retry."""
    from botocore.exceptions import BotoCoreError, ClientError

    messages = sqs_messages(event)
    failed = []
    for message in messages:
        if message.error:
            failed.append(message.message_id)
            log_json(level="warning", messageId=message.message_id, error=message.error)
    usable = [m for m in messages if m.objects and not m.error]
    # S3 may deliver one twice; keys that are no image names are skipped and counted
    objects, skipped = images_only(list(dict.fromkeys(chain.from_iterable(m.objects for m in usable))))
    output = None
    predictions: list[ImageResult] = []
    if objects:
        scored = dict(zip(objects, score_objects(objects, config), strict=True))
        # A message with an object S3 could not serve just now goes back to the queue, whole; its objects
        # stay out of this CSV (the retry writes them), so no permanent error row is written for them.
        later = {m.message_id for m in usable if any(o in scored and scored[o].transient for o in m.objects)}
        for message_id in later:
            log_json(level="warning", messageId=message_id, error="transient S3 error: returned to the queue")
        failed.extend(sorted(later))
        usable = [m for m in usable if m.message_id not in later]
        objects = [o for o in dict.fromkeys(chain.from_iterable(m.objects for m in usable)) if o in scored]
        predictions = [scored[o] for o in objects]
    if objects:
        url = output_url(config, objects)
        try:
            write(predictions, url, config, scorer(config).classes)
            output = url
        except (ClientError, BotoCoreError, BatchJobError) as error:
            failed.extend(m.message_id for m in usable)
            log_json(level="error", error=f"cannot write {url}: {s3.describe(error)}")
    log_json(level="info", event="sqs", messages=len(messages), failed=len(failed),
             **_summary(output, predictions, skipped))
    if messages and len(set(failed)) == len(messages):
        raise BatchFailed(f"all {len(messages)} messages of the batch failed (first: {failed[0]})")
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


def handle_prefix_event(event: dict, config: Config) -> dict:
    """{"prefix": "s3://bucket/photos/", "output": ...}: every image under the prefix into one file."""
    from batch_job import formats

    source, output = prefix_request(event, config.output_bucket, config.output_prefix)
    bucket, prefix = s3.parse_url(source)
    if output:  # an explicit output's extension decides its format, as on the command line
        fmt, _ = formats.for_destination(output)
    else:
        fmt = config.output_format
        output = f"s3://{config.output_bucket}/{config.output_prefix}{bucket}/{prefix}{fmt.named('predictions')}"
    destination = open_destination(output, fmt=fmt)
    try:
        opened = open_sources([source])
        items = non_empty(opened.items())
        if items is None:
            raise EventError(f"no image files found under {source}")
        scoring = scorer(config)
        with destination.open() as out:
            totals = formats.write(scoring.score_items(items), out, fmt, scoring.classes)
        totals.skipped = opened.stats.skipped
    finally:
        destination.close()
    return {"output": output, **fields(totals)}


HANDLERS = {"s3": handle_s3_event, "sqs": handle_sqs_event, "prefix": handle_prefix_event}


def handler(event: dict, context: object = None) -> dict:
    """The Lambda entry point (image CMD: batch_job.handler.handler)."""
    setup_logging(context)
    host_setup()
    kind = event_kind(event)
    if kind == "test":
        return {"ignored": "s3:TestEvent"}
    config = Config.from_env()
    result = HANDLERS[kind](event, config)
    if kind != "sqs":
        log_json(level="info", event=kind, **result)
    return result
