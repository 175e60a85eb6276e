"""The Distributed Map batch handler (batch_job.bulk) and the run folder (batch_job.bulk_run) against moto's S3:
batches in the exact shape Step Functions sends, parts that retries overwrite, transient failures that are
retried instead of written down, the final _SUCCESS.json, and merge."""
from __future__ import annotations

import io
import json
import random

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError, ResponseStreamingError

from batch_job import bulk, bulk_run, s3
from batch_job.bulk import TransientS3Error, parse_batch, part_name
from batch_job.events import EventError, S3Object
from batch_job.formats import COLUMNS
from tests.cloud_helpers import CORRUPT_JPEG, all_keys, aws, deployed_buckets, get_text, image_bytes, read_csv  # noqa: F401

IN, OUT = "bulk-test-input", "bulk-test-output"
RUN = f"s3://{OUT}/runs/june/"
RAW_KEYS = ["photos/happy face.png", "photos/a+b=c&d.png", "photos/Zoë/élan vital 😀.jpg", "photos/100%.png"]


@pytest.fixture
def buckets(aws, tiny_model, monkeypatch):
    with deployed_buckets(monkeypatch, tiny_model, IN, OUT) as client:
        yield client


def sfn_item(client, key: str) -> dict:
    """One item as the Distributed Map's ListObjectsV2 reader passes it: the raw key, S3's quoted ETag."""
    head = client.head_object(Bucket=IN, Key=key)
    return {"Etag": head["ETag"], "Key": key, "LastModified": 1764100800, "Size": head["ContentLength"],
            "StorageClass": "STANDARD"}


def batch(items: list[dict], **settings) -> dict:
    return {"BatchInput": {"bucket": IN, "prefix": "photos/", "output": RUN, **settings}, "Items": items}


def put(client, keys, body=None) -> list[dict]:
    for i, key in enumerate(keys):
        client.put_object(Bucket=IN, Key=key, Body=image_bytes(i) if body is None else body)
    return [sfn_item(client, key) for key in keys]


def parts(client) -> list[str]:
    return all_keys(client, OUT, "runs/june/parts/")


def test_batch_with_raw_keys_scores_each_object_into_one_part(buckets):
    items = put(buckets, RAW_KEYS)
    items += put(buckets, ["photos/notes.txt", "photos/folder/"], b"x")  # not images: skipped, not scored

    result = bulk.handler(batch(items), None)

    [key] = parts(buckets)
    assert key.startswith("runs/june/parts/part-") and key.endswith(".csv")
    assert result == {"part": f"s3://{OUT}/{key}", "objects": 6, "rows": 4, "errors": 0, "skipped": 2}
    rows = read_csv(get_text(buckets, OUT, key))
    assert [row["path"] for row in rows] == RAW_KEYS  # raw: '+' stays '+', '%' stays '%', nothing unquoted
    assert all(row["emotion"] and not row["error"] for row in rows)


def test_a_retried_batch_overwrites_its_part(buckets):
    items = put(buckets, RAW_KEYS)
    first = bulk.handler(batch(items), None)
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    again = bulk.handler(json.loads(json.dumps(batch(shuffled))), None)  # at-least-once: the batch again
    assert first["part"] == again["part"] and len(parts(buckets)) == 1
    assert len(read_csv(get_text(buckets, OUT, parts(buckets)[0]))) == len(RAW_KEYS)


def test_part_name_is_stable_for_the_same_objects_and_differs_for_others():
    a, b = S3Object(IN, "photos/a b.png", "e1"), S3Object(IN, "photos/a+b.png", "e2")
    assert part_name([a, b]) == part_name([b, a]) == part_name([a, b, a])
    assert part_name([a]) != part_name([a, b]) != part_name([b])
    assert part_name([a]) != part_name([S3Object(IN, "photos/a b.png", "e3")])  # re-uploaded: new ETag
    assert part_name([a]) != part_name([S3Object("other-bucket", "photos/a b.png", "e1")])


def test_corrupt_and_vanished_objects_are_error_rows_in_the_part(buckets):
    items = put(buckets, ["photos/good.png"]) + put(buckets, ["photos/corrupt.jpg"], CORRUPT_JPEG)
    items += put(buckets, ["photos/gone.png"])
    buckets.delete_object(Bucket=IN, Key="photos/gone.png")  # deleted between listing and scoring

    result = bulk.handler(batch(items), None)

    assert result["rows"] == 3 and result["errors"] == 2
    by_path = {row["path"]: row for row in read_csv(get_text(buckets, OUT, parts(buckets)[0]))}
    assert "NoSuchKey" in by_path["photos/gone.png"]["error"] and by_path["photos/good.png"]["emotion"]


def fail_get_once(monkeypatch, key: str, error: Exception) -> list[str]:
    """Make the process's S3 client fail one GetObject the way S3 does when boto3's retries run out."""
    client, calls = s3.client(), []
    real = client.get_object

    def get_object(**kwargs):
        calls.append(kwargs["Key"])
        if kwargs["Key"] == key and calls.count(key) == 1:
            raise error
        return real(**kwargs)

    monkeypatch.setattr(client, "get_object", get_object)
    return calls


SLOW_DOWN = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                         "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")


@pytest.mark.parametrize("error", [SLOW_DOWN, EndpointConnectionError(endpoint_url="https://s3.amazonaws.com")])
def test_transient_s3_failure_raises_the_retryable_error_and_writes_nothing(buckets, monkeypatch, error):
    items = put(buckets, RAW_KEYS)
    fail_get_once(monkeypatch, RAW_KEYS[1], error)

    with pytest.raises(TransientS3Error, match="1 of 4 objects"):
        bulk.handler(batch(items), None)
    assert parts(buckets) == []  # no part with a 'SlowDown' row: the retry scores the object

    result = bulk.handler(batch(items), None)  # the state machine's Retry: the same batch later
    assert result["rows"] == 4 and result["errors"] == 0 and len(parts(buckets)) == 1


def test_transient_failure_writing_the_part_is_retryable_and_a_denied_write_is_not(buckets, monkeypatch):
    items = put(buckets, RAW_KEYS[:1])
    client = s3.client()
    monkeypatch.setattr(client, "put_object", lambda **kw: (_ for _ in ()).throw(ClientError(
        {"Error": {"Code": "InternalError", "Message": "We encountered an internal error."},
         "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutObject")))
    with pytest.raises(TransientS3Error, match="cannot write"):
        bulk.handler(batch(items), None)
    monkeypatch.setattr(client, "put_object", lambda **kw: (_ for _ in ()).throw(ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
         "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")))
    with pytest.raises(ClientError, match="AccessDenied") as denied:
        bulk.handler(batch(items), None)
    assert not isinstance(denied.value, TransientS3Error)


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize("error, expected", [
    (client_error("SlowDown", 503), True),
    (client_error("InternalError", 500), True),
    (client_error("ServiceUnavailable", 503), True),
    (client_error("ThrottlingException", 400), True),
    (client_error("Whatever", 429), True),
    (EndpointConnectionError(endpoint_url="https://b.s3.amazonaws.com/k"), True),
    (ReadTimeoutError(endpoint_url="None"), True),
    (ResponseStreamingError(error="Connection broken"), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (client_error("NoSuchKey", 404), False),
    (client_error("AccessDenied", 403), False),
    (ValueError("image file is truncated"), False),
])
def test_s3_tells_saying_later_from_a_bad_object(error, expected):
    assert s3.is_transient(error) is expected


def test_inventory_batches_decode_keys_and_keep_to_the_prefix(buckets):
    put(buckets, ["photos/happy face.png", "other/x.png"])
    items = [{"Bucket": IN, "Key": "photos/happy+face.png", "Size": "10", "LastModifiedDate": "2026-11-25T00:00:00Z"},
             {"Bucket": IN, "Key": "other/x.png", "Size": "10", "LastModifiedDate": "2026-11-25T00:00:00Z"}]
    result = bulk.handler(batch(items, key_encoding="url"), None)
    assert result["rows"] == 1 and result["skipped"] == 1 and result["errors"] == 0
    assert [row["path"] for row in read_csv(get_text(buckets, OUT, parts(buckets)[0]))] == ["photos/happy face.png"]


def test_a_batch_of_nothing_to_score_writes_no_part(buckets):
    items = put(buckets, ["photos/readme.md"], b"# hello")
    assert bulk.handler(batch(items), None) == {"part": None, "objects": 1, "rows": 0, "errors": 0, "skipped": 1}
    assert parts(buckets) == []


@pytest.mark.parametrize("event", [
    {}, {"Items": "x"}, {"Items": []},
    {"BatchInput": {"bucket": IN, "output": "s3://out/run"}, "Items": []},  # a file, not a run folder
    {"BatchInput": {"bucket": "", "output": RUN}, "Items": []},
    {"BatchInput": {"bucket": IN, "output": RUN}, "Items": [{"Size": 3}]},
])
def test_malformed_batches_are_rejected_with_a_reason(event):
    with pytest.raises(EventError):
        parse_batch(event)


def test_a_batch_counts_a_row_per_face_and_no_face_rows_are_not_errors():
    import numpy as np

    from batch_job.pipeline import FaceResult, ImageResult
    from batch_job.results import NO_FACE, Totals

    face = FaceResult(1, (0, 0, 1, 1), 0.9, np.full(4, 0.25))
    totals = Totals.of([ImageResult("a.png", (face, face)), ImageResult("b.png", error="broken"),
                        ImageResult("c.png", error=NO_FACE)])
    assert (totals.rows, totals.errors) == (4, 1)


# ---- the final step and merge ----

def write_results(client, successes: list[dict], failures: list[dict] = ()) -> dict:
    """A ResultWriter export as Step Functions lays it out: COMPACT JSON Lines for successes, failed children
    unchanged (Input/Output as JSON strings), and manifest.json naming the files."""
    prefix = "runs/june/_map/6c1f9e2e-0a4b-3c2d-9e8f-1a2b3c4d5e6f"
    succeeded = "\n".join(json.dumps(s) for s in successes) + "\n"
    client.put_object(Bucket=OUT, Key=f"{prefix}/SUCCEEDED_0.json", Body=succeeded.encode())
    files = {"SUCCEEDED": [{"Key": f"{prefix}/SUCCEEDED_0.json", "Size": len(succeeded)}], "FAILED": [], "PENDING": []}
    if failures:
        body = json.dumps([{"ExecutionArn": "arn:aws:states:us-east-1:123456789012:express:x:y:z",
                            "Input": json.dumps(f), "Status": "FAILED", "Error": "TransientS3Error"} for f in failures])
        client.put_object(Bucket=OUT, Key=f"{prefix}/FAILED_0.json", Body=body.encode())
        files["FAILED"].append({"Key": f"{prefix}/FAILED_0.json", "Size": len(body)})
    manifest = {"DestinationBucket": OUT, "MapRunArn": "arn:aws:states:us-east-1:123456789012:mapRun:bulk/Score:1",
                "ResultFiles": files}
    client.put_object(Bucket=OUT, Key=f"{prefix}/manifest.json", Body=json.dumps(manifest).encode())
    return {"Bucket": OUT, "Key": f"{prefix}/manifest.json"}


def test_final_step_adds_up_the_map_run_into_success_json(buckets):
    results = write_results(buckets, [
        {"part": f"{RUN}parts/part-a.csv", "objects": 1000, "rows": 998, "errors": 3, "skipped": 2},
        {"part": f"{RUN}parts/part-b.csv", "objects": 500, "rows": 500, "errors": 0, "skipped": 0},
        {"part": None, "objects": 7, "rows": 0, "errors": 0, "skipped": 7},
    ], failures=[{"BatchInput": {}, "Items": [{"Key": "photos/x.png"}] * 40}])

    summary = bulk.handler({"summary": {"output": RUN, "results": results, "source": f"s3://{IN}/photos/",
                                        "started": "2026-11-25T20:00:00.000Z", "execution": "arn:...:june"}}, None)

    written = json.loads(get_text(buckets, OUT, "runs/june/_SUCCESS.json"))
    assert written == summary
    assert {k: summary[k] for k in ("objects", "rows", "errors", "skipped", "parts", "failed_batches",
                                    "failed_objects")} == {"objects": 1507, "rows": 1498, "errors": 3, "skipped": 9,
                                                           "parts": 2, "failed_batches": 1, "failed_objects": 40}
    assert summary["seconds"] > 0 and summary["results"] == f"s3://{OUT}/{results['Key']}"
    assert bulk_run.read_summary(RUN) == summary


def test_results_in_none_transformation_json_arrays_are_read_too():
    record = {"ExecutionArn": "x", "Output": json.dumps({"part": "p", "objects": 3, "rows": 3, "errors": 1,
                                                         "skipped": 0}), "Status": "SUCCEEDED"}
    manifest = {"DestinationBucket": "b", "ResultFiles": {"SUCCEEDED": [{"Key": "k"}]}}
    sums = bulk_run.totals(manifest, lambda bucket, key: json.dumps([record, record], indent=1).splitlines(True))
    assert sums["rows"] == 6 and sums["errors"] == 2 and sums["parts"] == 2


def test_read_summary_is_none_while_the_run_is_not_finished(buckets):
    assert bulk_run.read_summary(RUN) is None


def csv_of(rows: list[dict]) -> str:
    out = io.StringIO()
    out.write(",".join(COLUMNS) + "\n")
    for row in rows:
        out.write(",".join(row.get(c, "") for c in COLUMNS) + "\n")
    return out.getvalue()


def test_merge_puts_every_part_under_one_header_sorted_by_path(buckets):
    buckets.put_object(Bucket=OUT, Key="runs/june/parts/part-b.csv",
                       Body=csv_of([{"path": "photos/c.png", "emotion": "sad"}, {"path": "photos/a.png"}]).encode())
    buckets.put_object(Bucket=OUT, Key="runs/june/parts/part-a.csv",
                       Body=csv_of([{"path": "photos/b.png", "error": "empty file (0 bytes)"}]).encode())
    buckets.put_object(Bucket=OUT, Key="runs/june/_SUCCESS.json", Body=b"{}")
    out = io.StringIO()
    assert bulk_run.merge(bulk_run.part_texts(RUN), out) == (2, 3)
    rows = read_csv(out.getvalue())
    assert [row["path"] for row in rows] == ["photos/a.png", "photos/b.png", "photos/c.png"]
    assert rows[1]["error"] == "empty file (0 bytes)" and rows[2]["emotion"] == "sad"


def test_merge_refuses_parts_with_different_columns_and_runs_without_parts(tmp_path):
    (tmp_path / "parts").mkdir()
    with pytest.raises(bulk_run.MergeError, match="no parts"):
        bulk_run.merge(bulk_run.part_texts(str(tmp_path)), io.StringIO())
    (tmp_path / "parts" / "part-shard-00000-of-00002.csv").write_text(csv_of([{"path": "a.png"}]))
    (tmp_path / "parts" / "part-shard-00001-of-00002.csv").write_text("path,emotion\nb.png,happy\n")
    with pytest.raises(bulk_run.MergeError, match="columns"):
        bulk_run.merge(bulk_run.part_texts(str(tmp_path)), io.StringIO())
