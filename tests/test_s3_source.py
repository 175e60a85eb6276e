"""S3 sources and destinations: the CLI as a subprocess against a moto server (AWS_ENDPOINT_URL), listing
past one page, lazy listing, error rows and fatal errors; the client's configuration."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from batch_job import s3
from batch_job.base import DestinationError
from batch_job.sources import SourceError, items_for
from tests.cloud_helpers import (  # noqa: F401
    CORRUPT_JPEG,
    all_keys,
    aws,
    get_text,
    image_bytes,
    moto_server,
    put_many,
    read_csv,
    server_client,
    server_env,
)
from tests.conftest import REPO, face_like

MANY = 1050  # more than one ListObjectsV2 page (1,000 keys)


def run_cli(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_job", "run", *args], cwd=REPO, capture_output=True,
                          text=True, env=server_env(endpoint), timeout=300)


@pytest.fixture(scope="module")
def many(moto_server):
    """A bucket with MANY tiny PNGs under big/ (uploaded concurrently), plus keys that are not images."""
    client = server_client(moto_server)
    client.create_bucket(Bucket="many")
    put_many(client, "many", {f"big/{i:05d}.png": image_bytes(i % 7) for i in range(MANY)})
    put_many(client, "many", {"big/notes.txt": b"skip me", "big/folder/": b""})
    return client


@pytest.fixture
def buckets(moto_server):
    """Fresh input and output buckets for one test: (client, input bucket, output bucket)."""
    client = server_client(moto_server)
    name = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=f"{name}-in")
    client.create_bucket(Bucket=f"{name}-out")
    return client, f"{name}-in", f"{name}-out"


def test_cli_scores_a_prefix_of_more_than_one_page_into_an_s3_csv(moto_server, many, tiny_model):
    result = run_cli(moto_server, "s3://many/big/", "-o", "s3://many/out/all.csv", "--model", str(tiny_model))

    assert result.returncode == 0, result.stderr
    assert f"scored {MANY} images, {MANY} faces, 0 without a face, 0 errors" in result.stderr and "s3://many/out/all.csv" in result.stderr
    rows = read_csv(get_text(many, "many", "out/all.csv"))
    assert [row["path"] for row in rows] == [f"big/{i:05d}.png" for i in range(MANY)]  # listing order, each once
    assert all(row["emotion"] and row["error"] == "" for row in rows)


def test_listing_is_lazy_one_page_at_a_time(moto_server, many, monkeypatch, aws):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    calls = []
    s3.client().meta.events.register("before-call.s3.ListObjectsV2", lambda **kwargs: calls.append(1))
    items = items_for(["s3://many/big/"])
    first = next(items)
    assert first.path == "big/00000.png" and len(calls) == 1
    assert first.read() == image_bytes(0)
    assert sum(1 for _ in items) == MANY - 1 and len(calls) == 2


def test_aws_endpoint_url_and_retry_settings_reach_the_client(monkeypatch, aws):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    client = s3.client()
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}  # max_attempts=10 retries
    assert client.meta.config.max_pool_connections == 64
    assert s3.client() is client  # one client per process


def test_cli_mixes_local_folders_single_objects_and_local_output(moto_server, buckets, tiny_model, tmp_path):
    client, bucket_in, _ = buckets
    client.put_object(Bucket=bucket_in, Key="one/face 1.png", Body=image_bytes(1))
    client.put_object(Bucket=bucket_in, Key="two/a.png", Body=image_bytes(2))
    client.put_object(Bucket=bucket_in, Key="two/b.jpg", Body=image_bytes(3, "JPEG"))
    local = tmp_path / "local"
    local.mkdir()
    face_like(4).save(local / "c.png")
    out = tmp_path / "mixed.csv"

    result = run_cli(moto_server, f"s3://{bucket_in}/one/face 1.png", str(local), f"s3://{bucket_in}/two/",
                     "-o", str(out), "--model", str(tiny_model))

    assert result.returncode == 0, result.stderr
    assert [row["path"] for row in read_csv(out.read_text())] == [
        f"s3://{bucket_in}/one/face 1.png", f"{local}/c.png", f"s3://{bucket_in}/two/a.png",
        f"s3://{bucket_in}/two/b.jpg"]


def test_cli_corrupt_object_gets_an_error_row_and_exit_status_3(moto_server, buckets, tiny_model):
    client, bucket_in, bucket_out = buckets
    client.put_object(Bucket=bucket_in, Key="p/good.png", Body=image_bytes(1))
    client.put_object(Bucket=bucket_in, Key="p/bad.jpg", Body=CORRUPT_JPEG)

    result = run_cli(moto_server, f"s3://{bucket_in}/p/", "-o", f"s3://{bucket_out}/r.csv", "--model", str(tiny_model))

    assert result.returncode == 3, result.stderr
    rows = read_csv(get_text(client, bucket_out, "r.csv"))
    assert [(row["path"], bool(row["error"])) for row in rows] == [("p/bad.jpg", True), ("p/good.png", False)]


@pytest.mark.parametrize("source", ["s3://no-such-bucket-anywhere/photos/", "s3://{in}/missing.png"])
def test_cli_unreadable_source_is_fatal_with_one_line(moto_server, buckets, tiny_model, source):
    _, bucket_in, bucket_out = buckets
    result = run_cli(moto_server, source.format(**{"in": bucket_in}), "-o", f"s3://{bucket_out}/r.csv",
                     "--model", str(tiny_model))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "NoSuchBucket" in result.stderr or "404" in result.stderr


def test_cli_missing_output_bucket_fails_before_scoring(moto_server, buckets, tiny_model):
    client, bucket_in, _ = buckets
    client.put_object(Bucket=bucket_in, Key="p/good.png", Body=image_bytes(1))
    result = run_cli(moto_server, f"s3://{bucket_in}/p/", "-o", "s3://no-such-output-bucket/r.csv",
                     "--model", str(tiny_model))
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot write to s3://no-such-output-bucket/") and "scored" not in result.stderr


def test_cli_empty_prefix_is_fatal_and_writes_nothing(moto_server, buckets, tiny_model):
    client, bucket_in, bucket_out = buckets
    result = run_cli(moto_server, f"s3://{bucket_in}/nothing/", "-o", f"s3://{bucket_out}/r.csv",
                     "--model", str(tiny_model))
    assert result.returncode == 1 and "no image or video files" in result.stderr
    assert all_keys(client, bucket_out) == []


def test_s3_prefix_skips_non_image_keys_and_folder_markers(moto_server, many, monkeypatch, aws):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    keys = list(s3.list_keys("many", "big/"))
    assert len(keys) == MANY and "big/notes.txt" not in keys and "big/folder/" not in keys


def test_destination_must_name_an_object(aws):
    from batch_job.destinations import open_destination

    with pytest.raises(DestinationError, match="object key"):
        open_destination("s3://bucket/folder/")
    with pytest.raises(DestinationError, match="1024"):
        open_destination("s3://bucket/" + "k" * 1025 + ".csv")


def test_bad_s3_url_is_a_source_error(aws):
    with pytest.raises(SourceError):
        list(items_for(["s3:///no-bucket"]))


def test_access_denied_when_listing_is_a_source_error(aws):
    from botocore.stub import Stubber

    with Stubber(s3.client()) as stub:
        stub.add_client_error("list_objects_v2", service_error_code="AccessDenied", service_message="Access Denied",
                              http_status_code=403)
        with pytest.raises(SourceError, match=r"^cannot list s3://locked/photos/: AccessDenied: Access Denied$"):
            list(items_for(["s3://locked/photos/"]))
