"""Issue 19's correctness points against moto: an object overwritten after listing, one rule for non-image
uploads, inventory keys whether or not Step Functions decoded them, and a run folder an earlier run left."""
from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest

from batch_job import bulk
from batch_job.handler import handler
from tests.cloud_helpers import (  # noqa: F401 - aws: a fixture
    all_keys,
    aws,
    deployed_buckets,
    get_text,
    image_bytes,
    read_csv,
    s3_event,
    s3_record,
)
from tests.test_bulk import IN, OUT, RUN, batch, put

TRICKY = ["photos/a+b.png", "photos/100%25 real.png", "photos/plain.png"]  # '+' and '%' in the keys themselves


@pytest.fixture
def buckets(aws, tiny_model, monkeypatch):  # noqa: F811
    with deployed_buckets(monkeypatch, tiny_model, IN, OUT) as client:
        yield client


def rows_of_run(client) -> list[dict]:
    return [row for key in all_keys(client, OUT, "runs/june/parts/") for row in read_csv(get_text(client, OUT, key))]


def test_5_an_object_overwritten_after_listing_is_reported_not_scored_under_the_old_etag(buckets):
    items = put(buckets, ["photos/a.png", "photos/b.png"])
    buckets.put_object(Bucket=IN, Key="photos/b.png", Body=image_bytes(99))  # overwritten after the listing
    result = bulk.handler(batch(items), None)
    rows = {row["path"]: row for row in rows_of_run(buckets)}
    assert rows["photos/a.png"]["emotion"] and not rows["photos/a.png"]["error"]
    assert "changed after it was listed" in rows["photos/b.png"]["error"] and not rows["photos/b.png"]["emotion"]
    assert result["errors"] == 1
    assert rows["photos/b.png"]["source_version"] == items[1]["Etag"].strip('"')  # the listed identity


def test_6_non_image_uploads_are_skipped_and_counted_on_the_upload_path_as_everywhere(buckets, monkeypatch):
    monkeypatch.setenv("OUTPUT_BUCKET", OUT)
    records = []
    for i, key in enumerate(["uploads/a.png", "uploads/notes.txt"]):
        body = image_bytes(i) if key.endswith(".png") else b"not an image"
        buckets.put_object(Bucket=IN, Key=key, Body=body)
        records.append(s3_record(IN, key, body, f"0{i}"))
    result = handler(s3_event(*records), None)
    assert result["images"] == 1 and result["skipped"] == 1 and result["errors"] == 0
    [key] = all_keys(buckets, OUT)
    assert [row["path"] for row in read_csv(get_text(buckets, OUT, key))] == [f"s3://{IN}/uploads/a.png"]
    only_text = handler(s3_event(s3_record(IN, "uploads/notes.txt", b"not an image", "09")), None)
    assert only_text["output"] is None and only_text["skipped"] == 1


@pytest.mark.parametrize("step_functions_decodes", [False, True])
def test_7_inventory_keys_with_plus_and_percent_are_read_right_either_way(buckets, step_functions_decodes):
    put(buckets, TRICKY)
    # S3 Inventory CSVs carry URL-encoded keys; Step Functions may hand them on as they are or decoded
    given = TRICKY if step_functions_decodes else [quote_plus(key, safe="/") for key in TRICKY]
    items = [{"Bucket": IN, "Key": key, "Size": "100", "LastModifiedDate": "2026-11-25T01:00:00.000Z"}
             for key in given]
    result = bulk.handler(batch(items, key_encoding="url"), None)
    rows = rows_of_run(buckets)
    assert sorted(row["path"] for row in rows) == sorted(TRICKY)
    assert result["errors"] == 0 and all(row["emotion"] for row in rows)


def test_6_a_run_folder_an_earlier_run_left_is_refused_unless_replaced(buckets, capsys):
    import boto3

    from tests.test_bulk_cli import ASL, SM, cli

    buckets.put_object(Bucket=OUT, Key="runs/june/parts/part-old.csv", Body=b"path\n")
    buckets.put_object(Bucket=OUT, Key="runs/june/_SUCCESS.json", Body=b"{}")
    client = boto3.client("stepfunctions")  # moto's, like the buckets
    definition = ASL.read_text()
    for name, value in {"BulkScoringFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:bulk",
                        "OutputBucket": OUT, "BulkMaxConcurrency": "20", "BulkToleratedFailurePercentage": "0",
                        "BulkItemsPerBatch": "675"}.items():
        definition = definition.replace("${" + name + "}", value)
    client.create_state_machine(name="emotion-batch-bulk", definition=definition,
                                roleArn="arn:aws:iam::123456789012:role/bulk")
    args = ("submit", f"s3://{IN}/photos/", "--output", RUN, "--state-machine", SM)
    assert cli(*args) == 1
    assert "already holds 2 files of an earlier run" in capsys.readouterr().err
    assert client.list_executions(stateMachineArn=SM)["executions"] == []
    assert cli(*args, "--replace") == 0
    assert "deleted 2 files" in capsys.readouterr().err
    assert all_keys(buckets, OUT, "runs/june/") == []
    assert len(client.list_executions(stateMachineArn=SM)["executions"]) == 1
    assert json.loads(client.describe_execution(executionArn=client.list_executions(
        stateMachineArn=SM)["executions"][0]["executionArn"])["input"])["output"] == RUN
