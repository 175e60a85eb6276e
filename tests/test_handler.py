"""The Lambda handler against moto's S3 and SQS (in process): events in the shapes AWS sends them, one row
per object, partial batch failures, idempotent outputs, whole-prefix runs. Plus events.py without AWS."""
from __future__ import annotations

import json

import boto3
import pytest

from batch_job import events
from batch_job import handler as handler_module
from batch_job.events import EventError, S3Object
from batch_job.handler import ConfigError, handler
from batch_job.sources import SourceError
from tests.cloud_helpers import (  # noqa: F401
    CORRUPT_JPEG,
    S3_TEST_EVENT_BODY,
    all_keys,
    aws,
    deployed_buckets,
    get_text,
    image_bytes,
    read_csv,
    s3_event,
    s3_record,
    sqs_event,
    sqs_record,
)
from tests.conftest import needs_photos

IN, OUT = "emotion-test-input", "emotion-test-output"
ODD_KEYS = ["uploads/happy face.png", "uploads/Zoë/élan vital 😀.jpg", "uploads/a+b=c&d.png"]


@pytest.fixture
def buckets(aws, tiny_model, monkeypatch):
    """moto S3 with an input and an output bucket; the function's environment as deployed."""
    with deployed_buckets(monkeypatch, tiny_model, IN, OUT) as client:
        yield client


def upload(client, key: str, body: bytes, sequencer: str = "0055AED6DCD90281E5") -> dict:
    """Put an object and return the S3 notification record AWS would send for it."""
    client.put_object(Bucket=IN, Key=key, Body=body)
    return s3_record(IN, key, body, sequencer)


def only_csv(client) -> tuple[str, list[dict]]:
    keys = all_keys(client, OUT)
    assert len(keys) == 1, keys
    return keys[0], read_csv(get_text(client, OUT, keys[0]))


def test_s3_put_event_with_encoded_keys_writes_one_row_per_object_to_the_output_bucket(buckets):
    records = [upload(buckets, key, image_bytes(i, "JPEG" if key.endswith(".jpg") else "PNG"), f"00{i}A")
               for i, key in enumerate(ODD_KEYS)]
    assert records[0]["s3"]["object"]["key"] == "uploads/happy+face.png"  # as S3 sends it

    result = handler(s3_event(*records), None)

    key, rows = only_csv(buckets)
    assert key.startswith("predictions/batch-") and key.endswith(".csv")
    assert result == {"output": f"s3://{OUT}/{key}", "images": 3, "faces": 3, "no_face": 0, "errors": 0, "skipped": 0,
                      "rows": 3}
    assert [row["path"] for row in rows] == [f"s3://{IN}/{key}" for key in ODD_KEYS]  # bucket and key, decoded
    assert all(row["error"] == "" and row["emotion"] for row in rows)
    assert all_keys(buckets, IN) == sorted(ODD_KEYS)  # nothing written back to the input bucket


def test_single_object_event_names_its_csv_after_the_bucket_and_key(buckets):
    record = upload(buckets, "uploads/happy face.png", image_bytes(1))
    result = handler(s3_event(record), None)
    key, rows = only_csv(buckets)
    assert key.startswith(f"predictions/{IN}/uploads/happy face.png.") and result["images"] == 1
    assert [row["path"] for row in rows] == [f"s3://{IN}/uploads/happy face.png"]


def test_corrupt_and_missing_objects_get_error_rows_and_the_rest_are_scored(buckets):
    good = upload(buckets, "uploads/good.png", image_bytes(1))
    corrupt = upload(buckets, "uploads/corrupt.jpg", CORRUPT_JPEG)
    empty = upload(buckets, "uploads/empty.png", b"")
    gone = upload(buckets, "uploads/deleted before scoring.png", image_bytes(2))
    buckets.delete_object(Bucket=IN, Key="uploads/deleted before scoring.png")

    result = handler(s3_event(good, corrupt, empty, gone), None)

    _, rows = only_csv(buckets)
    assert result["images"] == 4 and result["errors"] == 3
    by_path = {row["path"].removeprefix(f"s3://{IN}/"): row for row in rows}
    assert by_path["uploads/good.png"]["error"] == "" and by_path["uploads/good.png"]["emotion"]
    assert by_path["uploads/corrupt.jpg"]["error"] and by_path["uploads/corrupt.jpg"]["emotion"] == ""
    assert by_path["uploads/empty.png"]["error"] == "empty file (0 bytes)"
    assert "NoSuchKey" in by_path["uploads/deleted before scoring.png"]["error"]


def test_retried_s3_event_overwrites_its_csv_instead_of_adding_rows(buckets):
    event = s3_event(upload(buckets, "uploads/a.png", image_bytes(1), "00A1"),
                     upload(buckets, "uploads/b.png", image_bytes(2), "00B1"))
    first = handler(event, None)
    second = handler(json.loads(json.dumps(event)), None)  # Lambda's async retry: the same event again
    key, rows = only_csv(buckets)
    assert first["output"] == second["output"] == f"s3://{OUT}/{key}"
    assert len(rows) == 2


def test_a_new_upload_of_the_same_key_gets_its_own_csv(buckets):
    handler(s3_event(upload(buckets, "uploads/a.png", image_bytes(1), "00A1")), None)
    handler(s3_event(upload(buckets, "uploads/a.png", image_bytes(2), "00A2")), None)  # overwritten object
    assert len(all_keys(buckets, OUT)) == 2


def test_sqs_batch_reports_exactly_the_malformed_message_and_scores_the_others(buckets):
    first = sqs_record(json.dumps(s3_event(upload(buckets, "uploads/happy face.png", image_bytes(1), "01"))), "m-1")
    broken = sqs_record('{"Records": [', "m-2")
    test_event = sqs_record(S3_TEST_EVENT_BODY, "m-3")
    second = sqs_record(json.dumps(s3_event(upload(buckets, "uploads/Zoë.png", image_bytes(2), "02"))), "m-4")

    result = handler(sqs_event(first, broken, test_event, second), None)

    assert result == {"batchItemFailures": [{"itemIdentifier": "m-2"}]}
    key, rows = only_csv(buckets)  # one CSV for the invocation; nothing from the test event
    assert key.startswith("predictions/batch-")
    assert [row["path"] for row in rows] == [f"s3://{IN}/uploads/happy face.png", f"s3://{IN}/uploads/Zoë.png"]


@pytest.mark.parametrize("body", ['{"hello": "world"}', "[1, 2]", "", '{"Records": [{"eventSource": "aws:s3"}]}',
                                  '{"Records": [{"eventSource": "aws:sns"}]}'])
def test_sqs_message_that_is_not_an_s3_notification_is_a_batch_item_failure(buckets, body):
    good = sqs_record(json.dumps(s3_event(upload(buckets, "uploads/a.png", image_bytes(1)))), "good")
    result = handler(sqs_event(good, sqs_record(body, "bad")), None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert len(all_keys(buckets, OUT)) == 1


def test_retried_sqs_batch_overwrites_its_csv_even_with_new_message_ids(buckets):
    bodies = [json.dumps(s3_event(upload(buckets, f"uploads/{name}.png", image_bytes(i), f"0{i}")))
              for i, name in enumerate("abc")]
    first = handler(sqs_event(*[sqs_record(body, f"first-{i}") for i, body in enumerate(bodies)]), None)
    # the same notifications received again (after a timeout), in another order, as new deliveries
    again = handler(sqs_event(*[sqs_record(body, f"again-{i}") for i, body in enumerate(reversed(bodies))]), None)
    assert first == again == {"batchItemFailures": []}
    _, rows = only_csv(buckets)
    assert sorted(row["path"] for row in rows) == [f"s3://{IN}/uploads/{n}.png" for n in "abc"]


def test_notification_delivered_twice_in_one_batch_gets_one_row(buckets):
    body = json.dumps(s3_event(upload(buckets, "uploads/a.png", image_bytes(1))))
    other = json.dumps(s3_event(upload(buckets, "uploads/b.png", image_bytes(2), "00B")))
    handler(sqs_event(sqs_record(body, "m-1"), sqs_record(other, "m-2"), sqs_record(body, "m-3")), None)
    _, rows = only_csv(buckets)
    assert [row["path"] for row in rows] == [f"s3://{IN}/uploads/a.png", f"s3://{IN}/uploads/b.png"]


def test_sqs_messages_whose_csv_cannot_be_written_are_reported_for_retry(buckets):
    body = json.dumps(s3_event(upload(buckets, "uploads/a.png", image_bytes(1))))
    test_event = sqs_record(S3_TEST_EVENT_BODY, "m-3")
    buckets.delete_bucket(Bucket=OUT)
    result = handler(sqs_event(sqs_record(body, "m-1"), sqs_record("not json", "m-2"), test_event), None)
    assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == ["m-1", "m-2"]


def test_notifications_generated_by_moto_through_a_real_queue_are_scored(buckets):
    """S3 -> SQS as configured by the template: moto sends the test event and one message per upload."""
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="uploads")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    buckets.put_bucket_notification_configuration(
        Bucket=IN, NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    for i, key in enumerate(ODD_KEYS):
        buckets.put_object(Bucket=IN, Key=key, Body=image_bytes(i))
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 4  # s3:TestEvent + three uploads

    result = handler(sqs_event(*[sqs_record(m["Body"], m["MessageId"]) for m in messages]), None)

    assert result == {"batchItemFailures": []}
    paths = sorted(row["path"] for key in all_keys(buckets, OUT) for row in read_csv(get_text(buckets, OUT, key)))
    assert paths == sorted(f"s3://{IN}/{key}" for key in ODD_KEYS)


def test_prefix_invocation_scores_every_image_under_it_into_one_csv(buckets):
    for i in range(5):
        buckets.put_object(Bucket=IN, Key=f"photos/{i}.png", Body=image_bytes(i))
    buckets.put_object(Bucket=IN, Key="photos/readme.txt", Body=b"not an image name: skipped")
    buckets.put_object(Bucket=IN, Key="other/9.png", Body=image_bytes(9))

    result = handler({"prefix": f"s3://{IN}/photos/"}, None)

    expected = f"s3://{OUT}/predictions/{IN}/photos/predictions.csv"
    assert result == {"output": expected, "images": 5, "faces": 5, "no_face": 0, "errors": 0, "skipped": 1, "rows": 5}
    rows = read_csv(get_text(buckets, OUT, f"predictions/{IN}/photos/predictions.csv"))
    assert [row["path"] for row in rows] == [f"photos/{i}.png" for i in range(5)]

    result = handler({"prefix": f"s3://{IN}/photos/", "output": f"s3://{OUT}/predictions/june.csv"}, None)
    assert result["output"] == f"s3://{OUT}/predictions/june.csv" and result["images"] == 5
    assert len(read_csv(get_text(buckets, OUT, "predictions/june.csv"))) == 5


@pytest.mark.parametrize("output", [f"s3://{OUT}/reports/june.csv", "s3://someone-elses-bucket/predictions/x.csv",
                                    f"s3://{OUT}/predictions/../reports/x.csv", f"s3://{OUT}/predictions/./x.csv"])
def test_prefix_invocation_refuses_an_output_outside_the_functions_output_area(buckets, output):
    buckets.put_object(Bucket=IN, Key="photos/1.png", Body=image_bytes(1))
    with pytest.raises(EventError, match="output"):
        handler({"prefix": f"s3://{IN}/photos/", "output": output}, None)
    assert all_keys(buckets, OUT) == []


def test_prefix_invocation_fails_loudly_for_a_missing_bucket_or_an_empty_prefix(buckets):
    with pytest.raises(SourceError, match="NoSuchBucket"):
        handler({"prefix": "s3://no-such-bucket-here/photos/"}, None)
    with pytest.raises(EventError, match="no image files"):
        handler({"prefix": f"s3://{IN}/nothing-here/"}, None)
    assert all_keys(buckets, OUT) == []


def test_model_is_loaded_once_per_container_not_per_invocation(buckets, monkeypatch):
    from batch_job import api

    loads = []
    real = api.load_models
    monkeypatch.setattr(api, "load_models", lambda settings: loads.append(settings) or real(settings))
    for i in range(3):
        handler(s3_event(upload(buckets, f"uploads/{i}.png", image_bytes(i), f"0{i}")), None)
    assert len(loads) == 1


def test_missing_output_bucket_setting_is_a_clear_error(buckets, monkeypatch):
    monkeypatch.delenv("OUTPUT_BUCKET")
    with pytest.raises(ConfigError, match="OUTPUT_BUCKET is not set"):
        handler(s3_event(upload(buckets, "uploads/a.png", image_bytes(1))), None)


def test_output_prefix_setting_places_the_csvs(buckets, monkeypatch):
    monkeypatch.setenv("OUTPUT_PREFIX", "scores/2026/")
    handler(s3_event(upload(buckets, "uploads/a.png", image_bytes(1))), None)
    assert all_keys(buckets, OUT)[0].startswith(f"scores/2026/{IN}/uploads/a.png.")


def test_s3_test_event_sent_directly_is_ignored_without_settings(aws):
    assert handler(json.loads(S3_TEST_EVENT_BODY), None) == {"ignored": "s3:TestEvent"}


# ---- events.py: plain functions, no AWS ----

def test_keys_are_url_decoded_plus_is_a_space():
    record = s3_record("b", "x", b"", "1")
    record["s3"]["object"]["key"] = "uploads/happy+face+%2B1%3D%C3%A9.png"
    assert events.s3_objects(s3_event(record)) == [S3Object("b", "uploads/happy face +1=é.png", "1")]


def test_deletions_and_folder_markers_name_nothing_to_score():
    removed = s3_record("b", "a.png", b"", "1", event_name="ObjectRemoved:Delete")
    folder = s3_record("b", "new folder/", b"", "2")
    created = s3_record("b", "a.png", b"", "3", event_name="ObjectCreated:CompleteMultipartUpload")
    assert events.s3_objects(s3_event(removed, folder, created)) == [S3Object("b", "a.png", "3")]


def test_sns_wrapped_notification_in_sqs_is_understood():
    inner = json.dumps(s3_event(s3_record("b", "a b.png", b"x", "7")))
    body = json.dumps({"Type": "Notification", "MessageId": "n", "Message": inner})
    assert events.sqs_message(sqs_record(body, "m")) == events.Message("m", (S3Object("b", "a b.png", "7"),))


@pytest.mark.parametrize("event, kind", [
    (sqs_event(sqs_record("{}")), "sqs"),
    (s3_event(s3_record("b", "k.png", b"", "1")), "s3"),
    ({"prefix": "s3://b/p/"}, "prefix"),
    (json.loads(S3_TEST_EVENT_BODY), "test"),
])
def test_event_kind_recognises_each_supported_shape(event, kind):
    assert events.event_kind(event) == kind


@pytest.mark.parametrize("event", [{}, [], {"Records": [{"eventSource": "aws:dynamodb"}]}, {"detail": {}}])
def test_unsupported_events_are_rejected(event):
    with pytest.raises(EventError):
        events.event_kind(event)


@pytest.mark.parametrize("event", [{"prefix": "photos/"}, {"prefix": "s3://"}, {"prefix": 3},
                                   {"prefix": "s3://b/p/", "output": "s3://b/dir/"},
                                   {"prefix": "s3://b/p/", "output": "/tmp/x.csv"}])
def test_prefix_request_must_use_s3_urls(event):
    with pytest.raises(EventError):
        events.prefix_request(event)


def test_output_name_depends_only_on_which_uploads_are_scored():
    a, b = S3Object("in", "x/a.png", "01"), S3Object("in", "x/b.png", "02")
    assert events.output_name([a, b]) == events.output_name([b, a]) == events.output_name([a, b, a])
    assert events.output_name([a]) != events.output_name([S3Object("in", "x/a.png", "03")])
    assert events.output_name([a]).startswith("in/x/a.png.") and events.output_name([a, b]).startswith("batch-")


@needs_photos
def test_s3_event_with_a_two_face_photo_writes_a_row_per_face(buckets):
    import io

    from tests.test_faces import canvas, head

    picture = canvas((1200, 700))
    picture.paste(head(0.6), (80, 100))
    picture.paste(head(1.2), (600, 300))
    body = io.BytesIO()
    picture.save(body, "JPEG", quality=92)

    result = handler(s3_event(upload(buckets, "uploads/two people.jpg", body.getvalue())), None)

    _, rows = only_csv(buckets)
    assert [(row["path"], row["face"]) for row in rows] == [(f"s3://{IN}/uploads/two people.jpg", "1"),
                                                             (f"s3://{IN}/uploads/two people.jpg", "2")]
    assert all(row["emotion"] and float(row["face_score"]) > 0.6 for row in rows)
    assert int(rows[0]["width"]) > int(rows[1]["width"])
    assert result["images"] == 1 and result["faces"] == 2 and result["errors"] == 0


def test_a_transient_s3_failure_returns_its_message_to_the_queue_without_an_error_row(buckets, monkeypatch):
    from batch_job import s3
    from batch_job.base import ReadError

    real_read = s3.read_object

    def flaky(bucket, key, if_match=""):
        if key == "uploads/b.png":
            raise ReadError("SlowDown: Please reduce your request rate.", transient=True)
        return real_read(bucket, key, if_match)
    monkeypatch.setattr(s3, "read_object", flaky)
    records = [sqs_record(json.dumps(s3_event(upload(buckets, f"uploads/{n}.png", image_bytes(i), f"0{i}"))),
                          f"m-{n}") for i, n in enumerate("abc")]
    buckets.put_object(Bucket=IN, Key="uploads/gone.png", Body=b"x")
    buckets.delete_object(Bucket=IN, Key="uploads/gone.png")
    missing = sqs_record(json.dumps(s3_event(s3_record(IN, "uploads/gone.png", b"x", "0F"))), "m-gone")

    result = handler(sqs_event(*records, missing), None)

    assert result == {"batchItemFailures": [{"itemIdentifier": "m-b"}]}  # retried later, not written down
    _, rows = only_csv(buckets)
    assert [row["path"] for row in rows] == [f"s3://{IN}/uploads/{n}.png" for n in ("a", "c", "gone")]
    assert rows[-1]["error"] and "NoSuchKey" in rows[-1]["error"]  # permanent: an error row, message done


def test_a_batch_whose_every_message_failed_raises_so_lambda_metrics_see_it(buckets):
    with pytest.raises(handler_module.BatchFailed, match="all 2 messages"):
        handler(sqs_event(sqs_record("not json", "m-1"), sqs_record("[]", "m-2")), None)


def test_output_names_past_s3s_key_limit_are_shortened_and_stay_distinct():
    long_a, long_b = "k/" + "é" * 600 + "a.png", "k/" + "é" * 600 + "b.png"
    names = [events.output_name([S3Object("bucket", key, "v1")], "predictions/") for key in (long_a, long_b)]
    for name in names:
        assert len(("predictions/" + name).encode("utf-8")) <= 1024 and name.endswith(".csv")
        name.encode("utf-8").decode("utf-8")  # cut at a character boundary
    assert names[0] != names[1]


def test_logs_are_json_lines_with_the_request_id_and_tracebacks_of_unexpected_errors(buckets, monkeypatch, capsys):
    from types import SimpleNamespace

    from batch_job import analysis

    def explode(*args, **kwargs):
        raise RuntimeError("a bug in a codec")
    monkeypatch.setattr(analysis, "open_image", explode)
    handler(s3_event(upload(buckets, "uploads/a.png", image_bytes(1))), SimpleNamespace(aws_request_id="req-42"))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines and all(line["request_id"] == "req-42" for line in lines)
    (problem,) = [line for line in lines if line["level"] == "warning"]
    assert "uploads/a.png" in problem["message"] and "RuntimeError: a bug in a codec" in problem["traceback"]
    _, rows = only_csv(buckets)
    assert rows[0]["error"] == "RuntimeError: a bug in a codec"
