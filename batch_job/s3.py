"""S3 as a source (s3://bucket/prefix, s3://bucket/key.jpg) and as a destination (s3://bucket/key.csv).

One boto3 client per process (clients are thread-safe once made): adaptive retries for throttling, a
connection pool big enough for the fetch threads. Listing is lazy, page by page (1,000 keys a request),
so 100k objects cost no more memory than 1,000. Fetching happens in pipeline.decoded()'s thread pool,
which is why S3 sources get more workers by default. AWS_ENDPOINT_URL (moto, MinIO, LocalStack) is
honoured by boto3 itself.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

from batch_job.base import (  # noqa: F401
    MAX_KEY_BYTES,
    S3_SCHEME,
    DestinationError,
    Item,
    ReadError,
    SourceError,
    is_input_path,
    is_s3_url,
)
from batch_job.budget import READS
from batch_job.local import MAX_INPUT_BYTES, WalkStats

SCHEME = S3_SCHEME
S3_WORKERS = 32  # fetch threads for S3 sources: requests are latency-bound, not CPU-bound
MAX_POOL_CONNECTIONS = 64
MAX_OBJECT_BYTES = MAX_INPUT_BYTES  # the same cap as local files; larger objects become error rows
# What S3 says when it means "later" (after botocore's own retries), rather than something about the object.
TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeoutException",
                   "PriorRequestNotComplete", "Throttling", "ThrottlingException", "TooManyRequestsException",
                   "RequestLimitExceeded", "BandwidthLimitExceeded", "500", "502", "503", "504"}

_client = None
_client_lock = threading.Lock()


def parse_url(url: str) -> tuple[str, str]:
    """'s3://bucket/some/key' -> ('bucket', 'some/key'); the key may be empty (whole bucket)."""
    if not is_s3_url(url):
        raise ValueError(f"not an s3:// URL: {url}")
    bucket, _, key = url[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url}")
    return bucket, key


def client():
    """The process-wide S3 client (created on first use, then reused by every thread)."""
    global _client
    with _client_lock:
        if _client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "adaptive", "max_attempts": 10},
                            max_pool_connections=MAX_POOL_CONNECTIONS)
            _client = boto3.client("s3", config=config)
        return _client


def reset_client() -> None:
    """Forget the client (tests switch endpoints and credentials between cases)."""
    global _client
    with _client_lock:
        _client = None


def describe(error: Exception) -> str:
    """A one-line reason for a boto3/botocore error: 'NoSuchBucket: The specified bucket does not exist'."""
    response = getattr(error, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        code = response["Error"].get("Code", "")
        message = response["Error"].get("Message", "")
        if code == "404" and not message:
            message = "Not Found"
        if code == "403" and not message:
            message = "Forbidden"
        return f"{code}: {message}" if message else str(code)
    return str(error) or type(error).__name__


def is_transient(error: Exception) -> bool:
    """Whether S3 said 'later' (throttling, 5xx, a lost connection) rather than something about the object,
    once boto3's own retries are spent."""
    from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError, ResponseStreamingError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(error, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ResponseStreamingError,
                          ConnectionError, TimeoutError)):
        return True  # the connection, not the object: lost, reset, timed out, cut mid-body
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.response.get("Error", {}).get("Code") in TRANSIENT_CODES or status == 429 or status >= 500
    return False


def read_object(bucket: str, key: str, if_match: str = "") -> bytes:
    """The object's bytes, held in the read budget until the pipeline is done with them. Failures raise
    ReadError (transient when S3 may answer later), which the pipeline turns into the row's error. if_match: the
    ETag the object was listed with; an object overwritten since then is an error row, not scored under the
    listed identity."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        extra = {"IfMatch": f'"{if_match.strip(chr(34))}"'} if if_match else {}
        response = client().get_object(Bucket=bucket, Key=key, **extra)
        size = response.get("ContentLength", 0)
        if size > MAX_OBJECT_BYTES:
            response["Body"].close()
            raise ReadError(f"object too large ({size} bytes, limit {MAX_OBJECT_BYTES})")
        READS.reserve_for_thread(size)
        data = response["Body"].read(MAX_OBJECT_BYTES + 1)
        if len(data) > MAX_OBJECT_BYTES:
            raise ReadError(f"object too large (more than {MAX_OBJECT_BYTES} bytes)")
        return data
    except (ClientError, BotoCoreError, ConnectionError, TimeoutError) as error:
        if if_match and error_code(error) in ("PreconditionFailed", "412"):
            raise ReadError(f"changed after it was listed (ETag {if_match} no longer matches): not scored under the "
                            "listed identity; score it again in a new run") from None
        raise ReadError(describe(error), transient=is_transient(error)) from None


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def exists(bucket: str, key: str) -> bool | None:
    """Whether the object exists (HEAD): True, False (404), or None when S3 does not say (403, errors)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        return False if error_code(error) in ("404", "NoSuchKey", "NotFound") else None
    except BotoCoreError:
        return None


def object_item(bucket: str, key: str, path: str | None = None, version: str = "", if_match: str = "") -> Item:
    """One object as a pipeline item; nothing is fetched until the pipeline calls read()."""
    return Item(key if path is None else path, lambda: read_object(bucket, key, if_match), version=version)


def list_keys(bucket: str, prefix: str, stats: WalkStats | None = None) -> Iterator[str]:
    """Image keys under prefix in listing order (S3 lists keys sorted), one page at a time; other keys
    (folder markers aside) are counted in stats.skipped."""
    from botocore.exceptions import BotoCoreError, ClientError

    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        for page in pages:
            for entry in page.get("Contents", ()):
                key = entry["Key"]
                if not key.endswith("/") and is_input_path(key):
                    yield key
                elif not key.endswith("/") and stats is not None:
                    stats.skipped += 1
    except (ClientError, BotoCoreError) as error:
        raise SourceError(f"cannot list s3://{bucket}/{prefix}: {describe(error)}") from None


def s3_items(url: str, full_url: bool = False, stats: WalkStats | None = None) -> Iterator[Item]:
    """s3://bucket/key.jpg (one object) or s3://bucket/prefix (every image key starting with prefix).

    The CSV path is the full object key, or s3://bucket/key when `full_url` (several sources in one run).
    A prefix means S3's prefix: s3://b/photos also lists photos-old/...; end it with '/' for one folder.
    """
    try:
        bucket, key = parse_url(url)
    except ValueError as error:
        raise SourceError(str(error)) from None
    if key and not key.endswith("/") and is_input_path(key):
        _check_object(bucket, key)
        keys: Iterator[str] = iter([key])
    else:
        keys = list_keys(bucket, key, stats)
    for found in keys:
        yield object_item(bucket, found, f"{SCHEME}{bucket}/{found}" if full_url else found)


def _check_object(bucket: str, key: str) -> None:
    """A single object named on the command line must exist, like a local file (else exit status 1)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client().head_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as error:
        raise SourceError(f"cannot read s3://{bucket}/{key}: {describe(error)}") from None


def check_destination(url: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// CSV destination, checked before scoring: the key names an object and the
    bucket exists. A 403 is let through: a writer may have PutObject without ListBucket, and the upload
    itself will tell."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket, key = parse_url(url)
    except ValueError as error:
        raise DestinationError(str(error)) from None
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise DestinationError(f"output key longer than S3's {MAX_KEY_BYTES} bytes: {url[:80]}...")
    if not key or key.endswith("/"):
        raise DestinationError(f"output needs an object key, e.g. s3://{bucket}/{key}predictions.csv")
    try:
        client().head_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("403", "AccessDenied", "Forbidden"):
            return bucket, key
        raise DestinationError(f"cannot write to s3://{bucket}/: {describe(error)}") from None
    except BotoCoreError as error:
        raise DestinationError(f"cannot write to s3://{bucket}/: {describe(error)}") from None
    return bucket, key


def upload_file(path: str, url: str, content_type: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_url(url)
    try:
        client().upload_file(path, bucket, key, ExtraArgs={"ContentType": content_type})
    except (ClientError, BotoCoreError) as error:
        raise DestinationError(f"cannot upload {url}: {describe(error)}") from None


def put_text(bucket: str, key: str, text: str, content_type: str) -> None:
    """Write a small output file in one request (the Lambda upload path's and bulk batches' outputs)."""
    client().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)
