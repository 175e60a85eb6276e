"""Lambda events -> the S3 objects to score. Plain functions over dicts: no AWS, no boto3, no model.

Three shapes reach the function (handler.py dispatches on event_kind()):
- an S3 event notification, sent to the function directly: {"Records": [{"eventSource": "aws:s3", ...}]}
- SQS messages whose bodies are S3 notifications (the deployed path: bucket -> queue -> function),
  including the one-off {"Event": "s3:TestEvent"} that S3 sends when the notification is configured;
- a direct invocation for a whole prefix: {"prefix": "s3://bucket/photos/", "output": "s3://out/x.csv"}.

Unusable SQS messages are data (Message.error), not exceptions: the handler reports them as batch item
failures and scores the rest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from batch_job.base import MAX_KEY_BYTES, S3_SCHEME, BatchJobError, is_s3_url

S3_TEST_EVENT = "s3:TestEvent"


class EventError(BatchJobError, ValueError):
    """An event, or an SQS message body, that is not something this function can score."""


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str  # decoded: notifications carry keys URL-encoded, '+' for spaces
    version: str = ""  # the record's sequencer (else versionId, eTag): tells two uploads of one key apart
    etag: str = field(default="", compare=False)  # the listed ETag: read with If-Match, so a change is seen


@dataclass(frozen=True)
class Message:
    """One SQS message: the objects its notification names, or why it cannot be used."""
    message_id: str
    objects: tuple[S3Object, ...] = ()  # empty and no error: nothing to score (test event, deletions)
    error: str = ""


def event_kind(event: object) -> str:
    """'sqs', 's3', 'prefix' or 'test' (an S3 test event); EventError for anything else."""
    if not isinstance(event, dict):
        raise EventError(f"event must be a JSON object, not {type(event).__name__}")
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict):
        source = records[0].get("eventSource")
        if source == "aws:sqs":
            return "sqs"
        if source == "aws:s3":
            return "s3"
        raise EventError(f"unsupported event source: {source!r}")
    if event.get("Event") == S3_TEST_EVENT:
        return "test"
    if "prefix" in event:
        return "prefix"
    raise EventError("unrecognised event: expected S3 or SQS Records, or {\"prefix\": \"s3://bucket/prefix/\"}")


def s3_objects(notification: object) -> list[S3Object]:
    """The objects created according to an S3 event notification, in record order.

    Other event types (deletions, restores) and console 'folder' markers (keys ending in '/') name no
    image and are skipped. A record without a bucket or key makes the whole notification unusable.
    """
    records = notification.get("Records") if isinstance(notification, dict) else None
    if not isinstance(records, list) or not records:
        raise EventError("not an S3 event notification (no Records)")
    objects = []
    for record in records:
        if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
            raise EventError("not an S3 event notification (a record's eventSource is not aws:s3)")
        name = record.get("eventName")
        if not isinstance(name, str) or not name:
            raise EventError("S3 record without an eventName")
        if not name.startswith("ObjectCreated:"):
            continue
        try:
            bucket = record["s3"]["bucket"]["name"]
            entry = record["s3"]["object"]
            key = unquote_plus(entry["key"])
        except (KeyError, TypeError):
            raise EventError("S3 record without s3.bucket.name or s3.object.key") from None
        if not isinstance(bucket, str) or not bucket or not key:
            raise EventError("S3 record with an empty bucket name or object key")
        if key.endswith("/"):
            continue
        version = entry.get("sequencer") or entry.get("versionId") or entry.get("eTag") or ""
        objects.append(S3Object(bucket, key, str(version)))
    return objects


def sqs_message(record: dict) -> Message:
    """One SQS record -> Message. The body is an S3 notification (or one wrapped in an SNS envelope)."""
    message_id = record["messageId"]
    try:
        body = json.loads(record.get("body") or "")
    except (TypeError, ValueError) as error:
        return Message(message_id, error=f"body is not JSON: {error}")
    if isinstance(body, dict) and body.get("Type") == "Notification" and isinstance(body.get("Message"), str):
        try:  # S3 -> SNS -> SQS: the notification is the SNS message
            body = json.loads(body["Message"])
        except ValueError as error:
            return Message(message_id, error=f"SNS message is not JSON: {error}")
    if isinstance(body, dict) and body.get("Event") == S3_TEST_EVENT:
        return Message(message_id)
    try:
        return Message(message_id, tuple(s3_objects(body)))
    except EventError as error:
        return Message(message_id, error=str(error))


def sqs_messages(event: dict) -> list[Message]:
    """Every message of an SQS batch, usable or not, in order."""
    records = event.get("Records")
    if not isinstance(records, list) or not all(isinstance(r, dict) and r.get("messageId") for r in records):
        raise EventError("SQS event whose records lack a messageId")
    return [sqs_message(record) for record in records]


def prefix_request(event: dict, output_bucket: str = "", output_prefix: str = "") -> tuple[str, str | None]:
    """{"prefix": "s3://bucket/prefix/", "output": "s3://bucket/key.csv"?} -> (prefix URL, output URL or None).

    An output is only accepted inside the function's own output area (s3://OUTPUT_BUCKET/OUTPUT_PREFIX...),
    without '.' or '..' segments: whoever may invoke the function must not make it write anywhere its role
    reaches.
    """
    source, output = event.get("prefix"), event.get("output")
    if not isinstance(source, str) or not is_s3_url(source) or len(source) <= len(S3_SCHEME) \
            or source[len(S3_SCHEME):].startswith("/"):
        raise EventError(f"'prefix' must be an s3://bucket/prefix URL, not {source!r}")
    if output is not None:
        if not isinstance(output, str) or not is_s3_url(output) or output.endswith("/"):
            raise EventError(f"'output' must be an s3://bucket/key.csv URL, not {output!r}")
        segments = output[len(S3_SCHEME):].split("/")
        if any(segment in (".", "..") for segment in segments):
            raise EventError(f"'output' must not contain '.' or '..' segments: {output!r}")
        allowed = f"s3://{output_bucket}/{output_prefix}"
        if output_bucket and not output.startswith(allowed):
            raise EventError(f"'output' must be inside {allowed} (the function's output area), not {output!r}")
    return source, output


def output_name(objects: list[S3Object] | tuple[S3Object, ...], prefix: str = "", extension: str = ".csv") -> str:
    """A CSV name that depends only on which uploads are scored: a retried or redelivered event gets the
    same name (its CSV is overwritten, never duplicated); a new upload of the same key gets a new one.

    One object: '<bucket>/<key>.<id><extension>' (found by listing '<bucket>/<key>.'); several:
    'batch-<id><extension>'. When `prefix` + that name would pass S3's 1,024-byte key limit, the key part is
    cut (at a character boundary) and the id, which depends on the whole key, keeps names apart.
    """
    identity = sorted({(o.bucket, o.key, o.version) for o in objects})
    if not identity:
        raise ValueError("no objects to name an output after")
    digest = hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode("utf-8")).hexdigest()
    if len(identity) == 1:
        bucket, key, _ = identity[0]
        name = f"{bucket}/{key}.{digest[:12]}{extension}"
        room = MAX_KEY_BYTES - len(prefix.encode("utf-8")) - len(f"{bucket}/.{digest[:12]}{extension}".encode())
        if len((prefix + name).encode("utf-8")) > MAX_KEY_BYTES and room > 0:
            short = key.encode("utf-8")[:room].decode("utf-8", errors="ignore")
            name = f"{bucket}/{short}.{digest[:12]}{extension}"
        return name
    return f"batch-{digest[:20]}{extension}"
