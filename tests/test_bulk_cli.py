"""submit, status and merge (batch_job.bulk_cli) through their own argparse registration: submit against
moto's Step Functions (which records executions, with real name idempotency, but runs nothing), status on
map-run progress as the Step Functions API returns it (botocore Stubber: moto has no map runs), merge on
moto's S3."""
from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from batch_job import bulk_cli
from batch_job.formats import COLUMNS, columns
from tests.bulk_map_sim import ASL
from tests.cloud_helpers import REGION, aws, get_text, read_csv  # noqa: F401

IN, OUT = "cli-bulk-input", "cli-bulk-output"
SM = f"arn:aws:states:{REGION}:123456789012:stateMachine:emotion-batch-bulk"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m batch_job")
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("sources", nargs="+")  # cli.py's own command: not ours
    bulk_cli.register(sub)
    return root


def cli(*argv: str) -> int | None:
    return bulk_cli.dispatch(parser().parse_args(list(argv)))


@pytest.fixture
def sfn(aws):
    """moto Step Functions with the real definition (its ${...} filled in as CloudFormation would)."""
    with mock_aws():
        client = boto3.client("stepfunctions")
        definition = ASL.read_text()
        for name, value in {"BulkScoringFunctionArn": f"arn:aws:lambda:{REGION}:123456789012:function:bulk",
                            "OutputBucket": OUT, "BulkMaxConcurrency": "20",
                            "BulkToleratedFailurePercentage": "0", "BulkItemsPerBatch": "675"}.items():
            definition = definition.replace("${" + name + "}", value)
        arn = client.create_state_machine(name="emotion-batch-bulk", definition=definition,
                                          roleArn="arn:aws:iam::123456789012:role/bulk")["stateMachineArn"]
        assert arn == SM
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=IN)
        s3.create_bucket(Bucket=OUT)
        yield client


def test_dispatch_leaves_other_commands_to_cli_py():
    assert cli("run", "photos/") is None


def test_submit_starts_one_execution_with_the_input_the_definition_reads(sfn, capsys):
    assert cli("submit", f"s3://{IN}/photos/", "--output", f"s3://{OUT}/runs/june", "--state-machine", SM) == 0
    arn = capsys.readouterr().out.strip()
    assert arn == SM.replace(":stateMachine:", ":execution:") + ":june"  # the name is the run folder's
    execution = sfn.describe_execution(executionArn=arn)
    assert json.loads(execution["input"]) == {
        "source": f"s3://{IN}/photos/", "bucket": IN, "prefix": "photos/", "output": f"s3://{OUT}/runs/june/",
        "output_bucket": OUT, "output_prefix": "runs/june/"}
    read = set(re.findall(r"(?<!\$)\$\.(\w+)", ASL.read_text())) - {"settings", "map", "Payload", "manifest"}
    assert read and read <= set(json.loads(execution["input"]))  # every input field the definition reads


def test_submitting_the_same_run_again_starts_nothing_new(sfn, capsys):
    args = ("submit", f"s3://{IN}/photos/", "--output", f"s3://{OUT}/runs/june/", "--state-machine", SM)
    assert cli(*args) == 0 and cli(*args) == 0
    assert "already submitted" in capsys.readouterr().err
    assert len(sfn.list_executions(stateMachineArn=SM)["executions"]) == 1


def test_a_name_already_used_by_another_run_is_refused(sfn, capsys):
    assert cli("submit", f"s3://{IN}/photos/", "--output", f"s3://{OUT}/runs/june/", "--state-machine", SM) == 0
    code = cli("submit", f"s3://{IN}/other/", "--output", f"s3://{OUT}/runs/june/", "--state-machine", SM)
    assert code == 1 and "already used by another run" in capsys.readouterr().err


def test_inventory_runs_name_the_manifest(sfn, capsys):
    manifest = f"s3://{OUT}/inventory/{IN}/all/2026-11-25T01-00Z/manifest.json"
    assert cli("submit", f"s3://{IN}/", "--output", f"s3://{OUT}/runs/all/", "--inventory", manifest,
               "--state-machine", SM) == 0
    execution = sfn.describe_execution(executionArn=capsys.readouterr().out.strip())
    assert json.loads(execution["input"])["manifest"] == {"bucket": OUT, "key": manifest.split("/", 3)[3]}


def test_submit_checks_the_buckets_against_the_stack_before_starting(sfn, monkeypatch, capsys):
    outputs = {"BulkStateMachineArn": SM, "InputBucketName": IN, "OutputBucketName": OUT}
    monkeypatch.setattr(bulk_cli, "stack_outputs", lambda stack, region: outputs)
    assert cli("submit", "s3://someone-elses-bucket/photos/", "--output", f"s3://{OUT}/runs/x/") == 1
    assert "can only use 'cli-bulk-input'" in capsys.readouterr().err
    assert cli("submit", f"s3://{IN}/photos/", "--output", f"s3://{IN}/runs/x/") == 1
    assert "OutputBucketName" in capsys.readouterr().err
    assert sfn.list_executions(stateMachineArn=SM)["executions"] == []
    assert cli("submit", f"s3://{IN}/photos/", "--output", f"s3://{OUT}/runs/x/") == 0


@pytest.mark.parametrize("argv", [
    ("submit", "photos/", "--output", f"s3://{OUT}/runs/x/"),
    ("submit", f"s3://{IN}/photos/", "--output", f"s3://{OUT}/"),  # no run folder
    ("submit", f"s3://{IN}/photos/", "--output", f"s3://{OUT}/runs/x/", "--name", "june 2026"),
    ("submit", f"s3://{IN}/photos/", "--output", f"s3://{OUT}/runs/x/", "--inventory", f"s3://{OUT}/inv.csv"),
    ("submit", f"s3://{IN}/photos/"),
])
def test_submit_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(*argv)
    assert exit_.value.code == 2


# ---- status: map-run progress as the API returns it ----

EXECUTION = SM.replace(":stateMachine:", ":execution:") + ":june"
MAP_RUN = f"arn:aws:states:{REGION}:123456789012:mapRun:emotion-batch-bulk/june:0b1c"
START = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)


def described(state: str, **extra) -> dict:
    return {"executionArn": EXECUTION, "stateMachineArn": SM, "name": "june", "status": state, "startDate": START,
            "input": json.dumps({"source": f"s3://{IN}/photos/", "output": f"s3://{OUT}/runs/june/"}), **extra}


def counts(total: int, succeeded: int, failed: int = 0, running: int = 0) -> dict:
    return {"pending": total - succeeded - failed - running, "running": running, "succeeded": succeeded,
            "failed": failed, "timedOut": 0, "aborted": 0, "total": total, "resultsWritten": succeeded}


def stub_poll(stubber: Stubber, state: str, item_counts: dict, **extra) -> None:
    stubber.add_response("describe_execution", described(state, **extra), {"executionArn": EXECUTION})
    stubber.add_response("list_map_runs", {"mapRuns": [{"executionArn": EXECUTION, "mapRunArn": MAP_RUN,
                                                        "stateMachineArn": SM, "startDate": START}]},
                         {"executionArn": EXECUTION})
    stubber.add_response("describe_map_run", {
        "mapRunArn": MAP_RUN, "executionArn": EXECUTION, "status": "RUNNING", "startDate": START,
        "maxConcurrency": 20, "toleratedFailurePercentage": 0.0, "toleratedFailureCount": 0,
        "itemCounts": item_counts, "executionCounts": item_counts}, {"mapRunArn": MAP_RUN})


@pytest.fixture
def stubbed(sfn, monkeypatch):
    client = boto3.client("stepfunctions", region_name=REGION)
    stubber = Stubber(client)
    monkeypatch.setattr(bulk_cli, "aws_client", lambda service, region=None: client)
    with stubber:
        yield stubber
    stubber.assert_no_pending_responses()


def test_status_shows_items_done_and_failed_from_the_map_run(stubbed, capsys):
    stub_poll(stubbed, "RUNNING", counts(1_000_000, 120_000, failed=1_000, running=20_000))
    assert cli("status", "june", "--state-machine", SM) == 0
    assert capsys.readouterr().out.strip() == "june: RUNNING, 120,000 of 1,000,000 items done, 1,000 failed, 20,000 running"


def success_json(errors: int = 0) -> bytes:
    return json.dumps({"objects": 2500, "rows": 2498, "errors": errors, "skipped": 2, "parts": 3, "failed_batches": 0,
                       "failed_objects": 0, "seconds": 61.5}).encode()


def test_status_wait_polls_to_the_end_and_prints_the_totals(stubbed, capsys):
    stub_poll(stubbed, "RUNNING", counts(2500, 1000, running=1000))
    stub_poll(stubbed, "SUCCEEDED", counts(2500, 2500), stopDate=START)
    boto3.client("s3").put_object(Bucket=OUT, Key="runs/june/_SUCCESS.json", Body=success_json())
    assert cli("status", "june", "--wait", "--interval", "0", "--state-machine", SM) == 0
    out = capsys.readouterr().out
    assert "2,500 of 2,500 items done" in out and "2,500 objects, 2,498 rows (0 errors, 2 skipped) in 3 parts" in out


def test_status_exit_3_when_rows_carry_errors_as_run_does(stubbed):
    stub_poll(stubbed, "SUCCEEDED", counts(2500, 2500), stopDate=START)
    boto3.client("s3").put_object(Bucket=OUT, Key="runs/june/_SUCCESS.json", Body=success_json(errors=4))
    assert cli("status", "june", "--state-machine", SM) == 3


def test_a_failed_run_exits_1_and_says_how_to_redrive(stubbed, capsys):
    stub_poll(stubbed, "FAILED", counts(2500, 2400, failed=100), stopDate=START, error="States.ExceedToleratedFailureThreshold",
              cause="The specified tolerated failure threshold was exceeded")
    assert cli("status", "june", "--state-machine", SM) == 1
    err = capsys.readouterr().err
    assert "ExceedToleratedFailureThreshold" in err and f"redrive-execution --execution-arn {EXECUTION}" in err


# ---- merge ----

def test_merge_writes_one_csv_from_a_runs_parts_and_warns_when_unfinished(sfn, tmp_path, capsys):
    s3 = boto3.client("s3")
    header = ",".join(COLUMNS)
    blank = "," * (len(COLUMNS) - 2)
    s3.put_object(Bucket=OUT, Key="runs/june/parts/part-2.csv", Body=f"{header}\nb.png{blank},x\n".encode())
    s3.put_object(Bucket=OUT, Key="runs/june/parts/part-1.csv", Body=f"{header}\na.png{blank},y\n".encode())
    target = tmp_path / "june.csv"
    assert cli("merge", f"s3://{OUT}/runs/june/", "-o", str(target)) == 0
    assert [row["path"] for row in read_csv(target.read_text())] == ["a.png", "b.png"]
    err = capsys.readouterr().err
    assert "has not finished" in err and "merged 2 parts, 2 rows" in err
    s3.put_object(Bucket=OUT, Key="runs/june/_SUCCESS.json", Body=success_json())
    assert cli("merge", f"s3://{OUT}/runs/june/", "-o", f"s3://{OUT}/runs/june.csv") == 0
    assert "has not finished" not in capsys.readouterr().err
    assert len(read_csv(get_text(s3, OUT, "runs/june.csv"))) == 2


def test_merge_of_a_folder_without_parts_is_a_one_line_error(tmp_path, capsys):
    assert cli("merge", str(tmp_path), "-o", str(tmp_path / "x.csv")) == 1
    assert capsys.readouterr().err.startswith("error: no parts found")


def test_athena_ddl_reads_the_parts_folder_with_todays_columns(capsys):
    assert cli("merge", f"s3://{OUT}/runs/june", "--athena", "june_2026") == 0
    ddl = capsys.readouterr().out
    assert ddl.startswith("CREATE EXTERNAL TABLE june_2026 (") and f"LOCATION 's3://{OUT}/runs/june/parts/'" in ddl
    assert re.findall(r"`(\w+)` string", ddl) == columns(versioned=True)  # the parts' columns, in order
    assert "'skip.header.line.count'='1'" in ddl
    assert cli("merge", f"s3://{OUT}/runs/june/", "--athena", "June-2026") == 1
    assert "lowercase" in capsys.readouterr().err
