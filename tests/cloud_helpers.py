"""Shared pieces for the S3 / Lambda tests: dummy AWS credentials, images as bytes, events in the exact
shapes AWS sends them, and a moto server on a free local port (for the CLI, run as a subprocess).

Import the fixtures into a test module (`from tests.cloud_helpers import aws, moto_server`) to use them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import quote_plus

import pytest

from batch_job import runtime, s3
from batch_job.formats import columns
from tests.conftest import face_like

CLOUD_COLUMNS = columns(versioned=True)  # the cloud paths' outputs carry source_version

REGION = "us-east-1"
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}


@contextmanager
def deployed_buckets(monkeypatch, model_path, input_bucket: str, output_bucket: str):
    """moto S3 with an input and an output bucket, and the function's environment as deployed."""
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("OUTPUT_BUCKET", output_bucket)
    monkeypatch.setenv("MODEL_PATH", str(model_path))
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=input_bucket)
        client.create_bucket(Bucket=output_bucket)
        yield client


def image_bytes(seed: int, fmt: str = "PNG", size: int = 48) -> bytes:
    out = io.BytesIO()
    face_like(seed, size).save(out, format=fmt)
    return out.getvalue()


CORRUPT_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64  # a JPEG header, then nothing decodable


def read_csv(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames in (CLOUD_COLUMNS, columns())  # the Lambda paths' outputs, or the CLI's
    return list(reader)


def get_text(client, bucket: str, key: str) -> str:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")


def all_keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [entry["Key"] for page in pages for entry in page.get("Contents", ())]


def put_many(client, bucket: str, objects: dict[str, bytes], threads: int = 32) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


def s3_record(bucket: str, key: str, body: bytes, sequencer: str, event_name: str = "ObjectCreated:Put") -> dict:
    """One record of an S3 event notification, as documented (notification-content-structure): the key is
    URL-encoded the way S3 does it ('+' for spaces, UTF-8 percent-escapes)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": "2026-11-25T20:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
        "requestParameters": {"sourceIPAddress": "205.255.255.255"},
        "responseElements": {"x-amz-request-id": "D82B88E5F771F645",
                             "x-amz-id-2": "vlR7PnpV2Ce81l0PRw6jlUpck7Jo5ZsQjryTjKlc5aLWGVHPZLj5NeC6qMa0emYBDXOo6QBU0Wo="},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "828aa6fc-f7b5-4305-8584-487c791949c1",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3I5XTEXAMAI3E"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": len(body),
                       "eTag": hashlib.md5(body).hexdigest(), "sequencer": sequencer},
        },
    }


def s3_event(*records: dict) -> dict:
    return {"Records": list(records)}


def sqs_record(body: str, message_id: str | None = None, queue: str = "emotion-uploads") -> dict:
    """One record of the event Lambda's SQS poller sends."""
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764100800000",
                       "SenderId": "AIDAIENQZJOLO23YVJ4VO", "ApproximateFirstReceiveTimestamp": "1764100800001"},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode("utf-8")).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:{queue}",
        "awsRegion": REGION,
    }


def sqs_event(*records: dict) -> dict:
    return {"Records": list(records)}


S3_TEST_EVENT_BODY = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-25T20:00:00.000Z",
                                 "Bucket": "emotion-input", "RequestId": "5582815E1AEA5ADF",
                                 "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"})


def _forget_process_state() -> None:
    s3.reset_client()
    runtime._scorers.clear()


@pytest.fixture
def aws(monkeypatch):
    """Dummy credentials and region for moto; no endpoint override, no leftover client or model."""
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "OUTPUT_BUCKET", "OUTPUT_PREFIX",
                 "MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    _forget_process_state()
    yield
    _forget_process_state()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_server():
    """A moto S3 server on 127.0.0.1: yields its endpoint URL. Each test uses its own bucket names."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def server_env(endpoint: str) -> dict[str, str]:
    """The environment for a CLI subprocess talking to the moto server (and to nothing else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(DUMMY_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    return env


def server_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(max_pool_connections=64))
