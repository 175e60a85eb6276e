"""What every Lambda entry point shares (the upload handler, the bulk batch handler): the function's settings,
parsed once per container, one Scorer per container, JSON logs with the request id, and the one way they
write an output.

Environment: OUTPUT_BUCKET (required), OUTPUT_PREFIX (default 'predictions/'), and the scoring settings of
batch_job.settings (FACES, PRECISION, OUTPUT_FORMAT, MODEL_PATH, DETECTOR_PATH, DECODE_BUDGET_MB). A bad value
fails every invocation with a message that names it (ConfigError), before any model loads.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from batch_job.base import ConfigError, UsageError, is_s3_url
from batch_job.destinations import open_destination
from batch_job.events import S3Object
from batch_job.results import ImageResult, Totals
from batch_job.settings import Settings

DEFAULT_OUTPUT_PREFIX = "predictions/"
LAMBDA_WORKERS = 32  # fetch threads: S3 requests wait on the network
log = logging.getLogger("batch_job")

_scorers: dict[Settings, object] = {}  # one Scorer per container (per settings), kept across invocations


@dataclass(frozen=True)
class Config:
    output_bucket: str
    output_prefix: str = DEFAULT_OUTPUT_PREFIX
    settings: Settings = field(default_factory=lambda: Settings(workers=LAMBDA_WORKERS))

    @property
    def output_format(self):
        return self.settings.output_format

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        bucket = env.get("OUTPUT_BUCKET", "").strip()
        if not bucket:
            raise ConfigError("OUTPUT_BUCKET is not set: the function needs a bucket to write its outputs to")
        if is_s3_url(bucket) or "/" in bucket:
            raise ConfigError(f"OUTPUT_BUCKET must be a bucket name, not a URL or path: {bucket!r}")
        from batch_job.sizing import lambda_decode_budget

        try:  # the decode budget follows the function's memory unless DECODE_BUDGET_MB says otherwise
            settings = Settings.from_env(env, workers=LAMBDA_WORKERS, decode_budget_mb=None if env.get(
                "DECODE_BUDGET_MB") else lambda_decode_budget(env))
        except UsageError as error:
            raise ConfigError(f"the function's environment: {error}") from None
        return cls(bucket, env.get("OUTPUT_PREFIX", DEFAULT_OUTPUT_PREFIX), settings)


def scorer(config: Config):
    """The container's Scorer for these settings: the models load on the first invocation and serve every
    later one."""
    if config.settings not in _scorers:
        from batch_job.api import Scorer

        _scorers[config.settings] = Scorer(settings=config.settings)
    return _scorers[config.settings]


def score_objects(objects: Iterable[S3Object], config: Config, full_url: bool = True) -> list[ImageResult]:
    """One result per object, in order, each carrying the object's version. Fetches run concurrently inside the
    pipeline's thread pool. full_url: paths are s3://bucket/key (else the key alone)."""
    from batch_job import s3

    items = [s3.object_item(o.bucket, o.key, f"s3://{o.bucket}/{o.key}" if full_url else None, o.version, o.etag)
             for o in objects]
    return list(scorer(config).score_items(items)) if items else []


def write(results: Iterable[ImageResult], url: str, config: Config, classes: tuple[str, ...],
          versioned: bool = True) -> Totals:
    """One small output (an SQS batch's, a bulk batch's) in one request, through the one destination opener."""
    from batch_job import formats

    destination = open_destination(url, fmt=config.output_format, small=True)
    try:
        with destination.open() as out:
            return formats.write(results, out, config.output_format, classes, versioned=versioned)
    finally:
        destination.close()


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


formatter = JsonLines()


class _Stdout(logging.StreamHandler):
    """Lambda sends stdout to CloudWatch; looked up at each record, so a replaced sys.stdout is honoured."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(context: object = None) -> None:
    """JSON logs on stdout (once per container), the invocation's request id in each."""
    if not any(getattr(h, "formatter", None) is formatter for h in log.handlers):
        stream = _Stdout()
        stream.setFormatter(formatter)
        log.addHandler(stream)
        log.setLevel(logging.INFO)
        log.propagate = False
    if context is not None:
        formatter.request_id = getattr(context, "aws_request_id", "")


def log_json(level: str = "info", **fields: object) -> None:
    """One JSON line per fact (through logging, with the request id): Logs Insights can filter and count."""
    setup_logging()
    message = str(fields.pop("error", "") or fields.get("event", ""))
    log.log(logging.getLevelName(level.upper()), message, extra={"fields": fields})


def host_setup() -> None:
    """A Lambda container is this package's own process: Pillow's pixel limit is set to ours (the library never
    changes it on import)."""
    from PIL import Image

    from batch_job.preprocessing import MAX_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    import warnings

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # such images get an error row
