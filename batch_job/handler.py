"""AWS Lambda entry point: a thin adapter from events (events.py) to the scoring pipeline.

Environment: OUTPUT_BUCKET (required), OUTPUT_PREFIX (default 'predictions/'), FACES (auto, detect or whole;
default auto, as on the command line), MODEL_PATH (default: the model baked into the image,
models/emotion.onnx). The models are loaded once per container, on the first invocation, and reused by every
later one.

Outputs, always at least one CSV row per scored object (a row per face found; unreadable or corrupt objects
get error rows, images without a face a 'no face found' row):
- SQS batch (the deployed path) or an S3 notification sent straight to the function: one CSV per invocation,
  named after the uploads it scores (bucket, key, sequencer; events.output_name): a retried invocation
  overwrites its CSV instead of adding one. One upload: <OUTPUT_PREFIX><bucket>/<key>.<id>.csv; several:
  <OUTPUT_PREFIX>batch-<id>.csv. SQS messages that are not S3 notifications come back as
  {"batchItemFailures": [...]} (retried, then dead-lettered); the others are scored.
- {"prefix": "s3://bucket/photos/", "output": "s3://bucket/key.csv"}: one CSV for every image under the
  prefix (output defaults to s3://$OUTPUT_BUCKET/$OUTPUT_PREFIX<bucket>/<prefix>predictions.csv).
  Bound by Lambda's 15 minutes: use AWS Batch (docs/cloud.md) for big folders.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain

from batch_job import s3
from batch_job.analysis import DEFAULT_FACE_MODE, FACE_MODES
from batch_job.api import Scorer
from batch_job.base import ConfigError, is_s3_url
from batch_job.csv_output import FORMATS, Totals, format_for, write_all
from batch_job.destinations import open_destination
from batch_job.events import EventError, S3Object, event_kind, output_name, prefix_request, s3_objects, sqs_messages
from batch_job.faces import FaceDetector, default_detector_path
from batch_job.model import EmotionModel, default_model_path
from batch_job.pipeline import ImageResult
from batch_job.precision import choose
from batch_job.sources import non_empty, open_sources

DEFAULT_OUTPUT_PREFIX = "predictions/"
log = logging.getLogger("batch_job")

_model: EmotionModel | None = None
_detector: FaceDetector | None = None


class BatchFailed(RuntimeError):
    """Every message of an SQS batch failed: raised (as Powertools does) so Lambda's error metrics and
    alarms see it; the queue retries the whole batch."""


class JsonLines(logging.Formatter):
    """One JSON object per log record, with the request id and, for failures, the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.request_id = ""

    def format(self, record: logging.LogRecord) -> str:
        fields = {"level": record.levelname.lower(), "message": record.getMessage(), "request_id": self.request_id,
                  "logger": record.name, **getattr(record, "fields", {})}
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False, default=str)


_formatter = JsonLines()


class _Stdout(logging.StreamHandler):
    """Lambda sends stdout to CloudWatch; looked up at each record, so a replaced sys.stdout is honoured."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging() -> None:
    if not any(getattr(h, "formatter", None) is _formatter for h in log.handlers):
        stream = _Stdout()
        stream.setFormatter(_formatter)
        log.addHandler(stream)
        log.setLevel(logging.INFO)
        log.propagate = False


@dataclass(frozen=True)
class Config:
    output_bucket: str
    output_prefix: str = DEFAULT_OUTPUT_PREFIX
    batch_size: int = 256
    workers: int = s3.S3_WORKERS
    faces: str = DEFAULT_FACE_MODE
    output_format: str = "csv"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        bucket = env.get("OUTPUT_BUCKET", "").strip()
        if not bucket:
            raise ConfigError("OUTPUT_BUCKET is not set: the function needs a bucket to write its CSVs to")
        if is_s3_url(bucket) or "/" in bucket:
            raise ConfigError(f"OUTPUT_BUCKET must be a bucket name, not a URL or path: {bucket!r}")
        faces = env.get("FACES", "").strip().lower() or DEFAULT_FACE_MODE
        if faces not in FACE_MODES:
            raise ConfigError(f"FACES must be one of {', '.join(FACE_MODES)}, not {faces!r}")
        output_format = env.get("OUTPUT_FORMAT", "").strip().lower() or "csv"
        if output_format not in FORMATS:
            raise ConfigError(f"OUTPUT_FORMAT must be one of {', '.join(FORMATS)}, not {output_format!r}")
        return cls(bucket, env.get("OUTPUT_PREFIX", DEFAULT_OUTPUT_PREFIX), faces=faces, output_format=output_format)


def get_model() -> EmotionModel:
    """The container's model: loaded on first use, then kept for every later invocation."""
    global _model
    if _model is None:  # $PRECISION (fp32, int8, auto) picks the graph, as on the command line
        _model = EmotionModel(choose(None, default_model_path()))
    return _model


def get_detector(config: Config) -> FaceDetector | None:
    """The container's face detector (when the face mode needs one): loaded once, like the model."""
    global _detector
    if config.faces == "whole":
        return None
    if _detector is None:
        _detector = FaceDetector(choose(None, default_detector_path(), required=False))
    return _detector


def scorer(model: EmotionModel, config: Config) -> Scorer:
    """The library API over the container's models: the same path as the command line."""
    return Scorer.from_loaded(model, get_detector(config), config.faces, config.batch_size, config.workers)


def score_objects(objects: Iterable[S3Object], model: EmotionModel, config: Config) -> list[ImageResult]:
    """One result per object, in order. Fetches run concurrently inside the pipeline's thread pool."""
    items = [s3.object_item(o.bucket, o.key) for o in objects]
    return list(scorer(model, config).score_items(items)) if items else []


def csv_text(results: Iterable[ImageResult], fmt: str = "csv") -> str:
    """The output file's text, CSV or JSON Lines (OUTPUT_FORMAT)."""
    out = io.StringIO()
    write_all(results, out, fmt=fmt)
    return out.getvalue()


def named(name: str, fmt: str) -> str:
    """An output name with the format's extension ('x.csv' -> 'x.jsonl' for JSON Lines)."""
    return name[: -len(".csv")] + ".jsonl" if fmt == "jsonl" and name.endswith(".csv") else name


def _summary(output: str | None, results: list[ImageResult]) -> dict:
    return {"output": output, **vars(Totals.of(results))}


def handle_s3_event(event: dict, model: EmotionModel, config: Config) -> dict:
    """An S3 notification invoking the function directly: one CSV for all its objects. A transient S3 failure
    fails the invocation, so Lambda's own retry of the asynchronous event scores it again."""
    objects = list(dict.fromkeys(s3_objects(event)))
    if not objects:
        return _summary(None, [])
    predictions = score_objects(objects, model, config)
    later = [p.path for p in predictions if p.transient]
    if later:
        raise BatchFailed(f"{len(later)} objects met a transient S3 error (first: {later[0]}); retry the event")
    key = named(config.output_prefix + output_name(objects, config.output_prefix), config.output_format)
    s3.put_text(config.output_bucket, key, csv_text(predictions, config.output_format))
    return _summary(f"s3://{config.output_bucket}/{key}", predictions)


def handle_sqs_event(event: dict, model: EmotionModel, config: Config) -> dict:
    """An SQS batch: the objects of all usable messages are scored into one CSV; the messages that cannot be
    used (or all of them, if the CSV could not be written) are reported back to the queue for a retry."""
    from botocore.exceptions import BotoCoreError, ClientError

    messages = sqs_messages(event)
    failed = []
    for message in messages:
        if message.error:
            failed.append(message.message_id)
            _log(level="warning", messageId=message.message_id, error=message.error)
    usable = [m for m in messages if m.objects and not m.error]
    objects = list(dict.fromkeys(chain.from_iterable(m.objects for m in usable)))  # S3 may deliver one twice
    output = None
    predictions: list[ImageResult] = []
    if objects:
        scored = dict(zip(objects, score_objects(objects, model, config), strict=True))
        # A message with an object S3 could not serve just now goes back to the queue, whole; its objects
        # stay out of this CSV (the retry writes them), so no permanent error row is written for them.
        later = {m.message_id for m in usable if any(scored[o].transient for o in m.objects)}
        for message_id in later:
            _log(level="warning", messageId=message_id, error="transient S3 error: returned to the queue")
        failed.extend(sorted(later))
        usable = [m for m in usable if m.message_id not in later]
        objects = list(dict.fromkeys(chain.from_iterable(m.objects for m in usable)))
        predictions = [scored[o] for o in objects]
    if objects:
        key = named(config.output_prefix + output_name(objects, config.output_prefix), config.output_format)
        try:
            s3.put_text(config.output_bucket, key, csv_text(predictions, config.output_format))
            output = f"s3://{config.output_bucket}/{key}"
        except (ClientError, BotoCoreError) as error:
            failed.extend(m.message_id for m in usable)
            _log(level="error", error=f"cannot write CSV s3://{config.output_bucket}/{key}: {s3.describe(error)}")
    _log(level="info", event="sqs", messages=len(messages), failed=len(failed), **_summary(output, predictions))
    if messages and len(set(failed)) == len(messages):
        raise BatchFailed(f"all {len(messages)} messages of the batch failed (first: {failed[0]})")
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


def handle_prefix_event(event: dict, model: EmotionModel, config: Config) -> dict:
    """{"prefix": "s3://bucket/photos/", "output": ...}: every image under the prefix into one CSV."""
    source, output = prefix_request(event, config.output_bucket, config.output_prefix)
    bucket, prefix = s3.parse_url(source)
    output = output or named(f"s3://{config.output_bucket}/{config.output_prefix}{bucket}/{prefix}predictions.csv",
                             config.output_format)
    destination = open_destination(output)
    try:
        opened = open_sources([source])
        items = non_empty(opened.items())
        if items is None:
            raise EventError(f"no image files found under {source}")
        with destination.open() as out:
            totals = write_all(scorer(model, config).score_items(items), out,
                               fmt=format_for(output, config.output_format if not event.get("output") else None))
        totals.skipped = opened.stats.skipped
    finally:
        destination.close()
    return {"output": output, **vars(totals)}


HANDLERS = {"s3": handle_s3_event, "sqs": handle_sqs_event, "prefix": handle_prefix_event}


def handler(event: dict, context: object = None) -> dict:
    """The Lambda entry point (image CMD: batch_job.handler.handler)."""
    _setup_logging()
    _formatter.request_id = getattr(context, "aws_request_id", "")
    kind = event_kind(event)
    if kind == "test":
        return {"ignored": "s3:TestEvent"}
    config = Config.from_env()
    result = HANDLERS[kind](event, get_model(), config)
    if kind != "sqs":
        _log(level="info", event=kind, **result)
    return result


def _log(level: str = "info", **fields: object) -> None:
    """One JSON line per fact (through logging, with the request id): Logs Insights can filter and count."""
    _setup_logging()
    message = str(fields.pop("error", "") or fields.get("event", ""))
    log.log(logging.getLevelName(level.upper()), message, extra={"fields": fields})
