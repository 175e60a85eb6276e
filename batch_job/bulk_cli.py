"""python -m batch_job submit | status | merge: start a Distributed Map run, follow it, merge a small one.

    python -m batch_job submit s3://in/photos/ --output s3://out/runs/june/ [--name june] [--wait]
    python -m batch_job status june [--wait]
    python -m batch_job merge s3://out/runs/june/ -o june.csv

cli.py adds these commands with register(subparsers) and runs them with dispatch(args). The state machine
is found from --state-machine, else from the CloudFormation stack's outputs (--stack, default emotion-batch),
which also lets submit check the buckets before starting anything. Step Functions and CloudFormation calls go
through boto3 with adaptive retries (throttling is normal when many runs are followed at once).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

from batch_job import bulk_run, s3
from batch_job.base import BatchJobError
from batch_job.events import EventError

DEFAULT_STACK = "emotion-batch"
COMMANDS = ("submit", "status", "merge")
EXIT_OK, EXIT_FATAL, EXIT_SOME_ERRORS = 0, 1, 3
NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")  # Step Functions execution names (ASCII, so they show in CloudWatch)
DONE = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


class BulkError(BatchJobError):
    """Stops a submit/status/merge with exit status 1 and a one-line message."""


# ---- argparse ----

def register(subparsers) -> None:
    """Add submit, status and merge to the CLI's subparsers."""
    submit = subparsers.add_parser("submit", help="score a whole prefix with the Step Functions bulk path")
    submit.add_argument("source", type=_source_url, help="s3://bucket/prefix/ to score (every image under it)")
    submit.add_argument("--output", required=True, type=_run_url,
                        help="run folder, s3://output-bucket/runs/NAME/: parts/*.csv and _SUCCESS.json go there")
    submit.add_argument("--name", type=_name, help="execution name (default: the run folder's name); submitting "
                                                   "the same name and input again starts nothing new")
    submit.add_argument("--inventory", type=_manifest_url,
                        help="s3://.../manifest.json of an S3 Inventory (CSV) of the source bucket: read it "
                             "instead of listing the prefix (for 100M+ objects)")
    submit.add_argument("--wait", action="store_true", help="follow the run to its end (progress bar)")
    submit.add_argument("--replace", action="store_true",
                        help="delete what an earlier run left in the run folder (parts/, _map/, _SUCCESS.json) first; "
                             "without it, a run folder that is not empty is refused")
    status = subparsers.add_parser("status", help="progress of a bulk run (items done/failed), its totals when done")
    status.add_argument("name", help="the run's execution name (or its execution ARN)")
    status.add_argument("--wait", action="store_true", help="follow the run to its end (progress bar)")
    for parser in (submit, status):
        parser.add_argument("--stack", default=DEFAULT_STACK, help=f"CloudFormation stack (default {DEFAULT_STACK})")
        parser.add_argument("--state-machine", help="state machine ARN (default: the stack's BulkStateMachineArn)")
        parser.add_argument("--region", help="AWS region (default: the AWS CLI's)")
        parser.add_argument("--interval", type=float, default=10.0, help="seconds between polls with --wait")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    merge = subparsers.add_parser("merge", help="one CSV from the parts of a run (for runs small enough to want one)")
    merge.add_argument("run", help="run folder: s3://bucket/runs/NAME/ or a local folder holding parts/")
    merge.add_argument("-o", "--output", default="-",
                       help="file to write (.csv or .jsonl), s3://bucket/key.csv, or '-' (default)")
    merge.add_argument("--format", choices=("csv", "jsonl"),
                       help="output format (default: from the output's extension, else the parts'); with --athena: "
                            "the format the run's parts were written in (OutputFormat; default csv)")
    merge.add_argument("--athena", metavar="TABLE", help="print an Athena CREATE EXTERNAL TABLE over the run's "
                                                         "parts/ instead of merging (any size of run)")


def dispatch(args: argparse.Namespace) -> int | None:
    """Run submit/status/merge; None when args.command is not one of them (cli.py handles it)."""
    if getattr(args, "command", None) not in COMMANDS:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return {"submit": submit, "status": status, "merge": merge}[args.command](args)
    except (BulkError, bulk_run.MergeError, EventError) as error:
        print(f"error: {error}", file=sys.stderr)
    except (ClientError, BotoCoreError) as error:
        print(f"error: {s3.describe(error)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted (the run itself goes on: python -m batch_job status NAME)", file=sys.stderr)
    return EXIT_FATAL


def _source_url(text: str) -> str:
    if not s3.is_s3_url(text) or len(text) <= len(s3.SCHEME):
        raise argparse.ArgumentTypeError(f"source must be s3://bucket/prefix/, not {text!r}")
    return text


def _run_url(text: str) -> str:
    url = text if text.endswith("/") else text + "/"
    if not s3.is_s3_url(url) or not s3.parse_url(url)[1].strip("/"):
        raise argparse.ArgumentTypeError(f"--output must be a folder in the output bucket, "
                                         f"s3://bucket/runs/NAME/, not {text!r}")
    return url


def _manifest_url(text: str) -> str:
    if not s3.is_s3_url(text) or not text.endswith("manifest.json"):
        raise argparse.ArgumentTypeError(f"--inventory must be an S3 Inventory's s3://.../manifest.json, not {text!r}")
    return text


def _name(text: str) -> str:
    if not NAME.match(text):
        raise argparse.ArgumentTypeError(f"--name must be 1-80 letters, digits, '-' or '_', not {text!r}")
    return text


# ---- AWS ----

def aws_client(service: str, region: str | None = None):
    """A boto3 client with botocore's adaptive retries (backs off on throttling by itself)."""
    import boto3
    from botocore.config import Config

    return boto3.client(service, region_name=region, config=Config(retries={"mode": "adaptive", "max_attempts": 10}))


def stack_outputs(stack: str, region: str | None) -> dict[str, str]:
    described = aws_client("cloudformation", region).describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def resolve(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """(state machine ARN, stack outputs or {} when the ARN was given)."""
    if args.state_machine:
        return args.state_machine, {}
    outputs = stack_outputs(args.stack, args.region)
    if "BulkStateMachineArn" not in outputs:
        raise BulkError(f"stack {args.stack} has no BulkStateMachineArn output: deploy the bulk path "
                        "(make deploy) or give --state-machine")
    return outputs["BulkStateMachineArn"], outputs


def execution_arn(state_machine: str, name: str) -> str:
    """arn:...:stateMachine:SM + NAME -> arn:...:execution:SM:NAME (a full execution ARN is kept)."""
    if name.startswith("arn:"):
        return name
    return state_machine.replace(":stateMachine:", ":execution:", 1) + ":" + name


def run_input(source: str, output: str, inventory: str | None) -> dict:
    """The execution input infra/bulk.asl.json reads."""
    bucket, prefix = s3.parse_url(source)
    out_bucket, out_prefix = bulk_run.split_run_url(output)
    request: dict[str, object] = {"source": source, "bucket": bucket, "prefix": prefix, "output": output, "output_bucket": out_bucket,
               "output_prefix": out_prefix}
    if inventory:
        manifest_bucket, manifest_key = s3.parse_url(inventory)
        request["manifest"] = {"bucket": manifest_bucket, "key": manifest_key}
    return request


def check_buckets(request: dict, outputs: dict[str, str]) -> None:
    """The deployed roles may only list/read the input bucket and write the output bucket: say so now,
    not as AccessDenied in every batch."""
    expected = {"bucket": outputs.get("InputBucketName"), "output_bucket": outputs.get("OutputBucketName")}
    for field, bucket in expected.items():
        if bucket and request[field] != bucket:
            which = "source" if field == "bucket" else "--output"
            raise BulkError(f"{which} is in bucket {request[field]!r}, but this stack's bulk path can only use "
                            f"{bucket!r} (its {'InputBucketName' if field == 'bucket' else 'OutputBucketName'})")


# ---- commands ----

def submit(args: argparse.Namespace) -> int:
    """Start the run (or find it already started with the same input) and print how to follow it."""
    state_machine, outputs = resolve(args)
    request = run_input(args.source, args.output, args.inventory)
    check_buckets(request, outputs)
    name = args.name or request["output_prefix"].rstrip("/").rsplit("/", 1)[-1]
    if not NAME.match(name):
        raise BulkError(f"the run folder's name {name!r} is not a valid execution name: give --name")
    sfn = aws_client("stepfunctions", args.region)
    arn = execution_arn(state_machine, name)
    existing = _existing(sfn, arn)
    if existing is None:
        left = bulk_run.run_files(args.output)
        if left and not args.replace:
            raise BulkError(f"{args.output} already holds {left} files of an earlier run (parts/, _map/, "
                            f"{bulk_run.SUCCESS}): its parts would mix with this run's. Choose another --output, or "
                            "--replace to delete them first")
        if left:
            print(f"deleted {bulk_run.delete_run_files(args.output)} files of an earlier run in {args.output}",
                  file=sys.stderr)
        # StartExecution is idempotent itself for a running execution with the same name and input
        arn = sfn.start_execution(stateMachineArn=state_machine, name=name,
                                  input=json.dumps(request, sort_keys=True))["executionArn"]
        print(f"submitted {name}: {args.source} -> {args.output}", file=sys.stderr)
    else:
        before = json.loads(existing.get("input") or "{}")
        if before != request:
            raise BulkError(f"execution name {name!r} is already used by another run ({before.get('source')} -> "
                            f"{before.get('output')}): choose another --name")
        print(f"{name} was already submitted with this input ({existing['status']}): nothing new started",
              file=sys.stderr)
    print(arn)
    if args.wait:
        return follow(sfn, arn, args)
    print(f"follow it with: python -m batch_job status {name} --wait", file=sys.stderr)
    return EXIT_OK


def _existing(sfn, arn: str) -> dict | None:
    """The execution of that name, or None: names are unique per state machine for 90 days."""
    try:
        return sfn.describe_execution(executionArn=arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        return None


def status(args: argparse.Namespace) -> int:
    state_machine = args.state_machine or ("" if args.name.startswith("arn:") else resolve(args)[0])
    sfn = aws_client("stepfunctions", args.region)
    arn = execution_arn(state_machine, args.name)
    if args.wait:
        return follow(sfn, arn, args)
    execution = sfn.describe_execution(executionArn=arn)
    counts = map_counts(sfn, arn)
    print(progress_line(execution, counts))
    return finished(execution) if execution["status"] in DONE else EXIT_OK


def map_counts(sfn, arn: str) -> dict:
    """Items counted by the execution's (latest) map run: total, succeeded, failed, ... ({} before it starts)."""
    runs = sfn.list_map_runs(executionArn=arn).get("mapRuns", [])
    if not runs:
        return {}
    latest = max(runs, key=lambda run: run["startDate"])
    return sfn.describe_map_run(mapRunArn=latest["mapRunArn"]).get("itemCounts", {})


def progress_line(execution: dict, counts: dict) -> str:
    name, state = execution.get("name", "?"), execution["status"]
    if not counts:
        return f"{name}: {state}, listing not started yet" if state == "RUNNING" else f"{name}: {state}"
    failed = counts.get("failed", 0) + counts.get("timedOut", 0) + counts.get("aborted", 0)
    return (f"{name}: {state}, {counts.get('succeeded', 0):,} of {counts.get('total', 0):,} items done, "
            f"{failed:,} failed, {counts.get('running', 0):,} running")


def follow(sfn, arn: str, args: argparse.Namespace) -> int:
    """Poll until the execution ends, with a progress bar of the map run's items on a terminal."""
    from tqdm import tqdm

    bar = tqdm(unit="item", file=sys.stderr, disable=args.no_progress or not sys.stderr.isatty(), dynamic_ncols=True)
    try:
        while True:
            execution = sfn.describe_execution(executionArn=arn)
            counts = map_counts(sfn, arn)
            done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("timedOut", 0)
            bar.total = max(counts.get("total", 0), done) or None
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{counts.get('failed', 0)} failed" if counts else execution["status"].lower())
            if execution["status"] in DONE:
                break
            if bar.disable:
                print(progress_line(execution, counts), file=sys.stderr)
            time.sleep(args.interval)
    finally:
        bar.close()
    print(progress_line(execution, counts))
    return finished(execution)


def finished(execution: dict) -> int:
    """Print how an ended run went: its _SUCCESS.json totals, or why it failed and how to redrive it."""
    if execution["status"] != "SUCCEEDED":
        cause = execution.get("error") or execution["status"]
        print(f"error: run {execution['status']}: {cause}: {execution.get('cause', '')[:300]}".rstrip(": "),
              file=sys.stderr)
        print(f"retry only what failed with: aws stepfunctions redrive-execution --execution-arn "
              f"{execution['executionArn']}", file=sys.stderr)
        return EXIT_FATAL
    output = json.loads(execution.get("input") or "{}").get("output")
    summary = bulk_run.read_summary(output) if output else None
    if summary is None:
        raise BulkError(f"the run succeeded but {output}{bulk_run.SUCCESS} cannot be found")
    print(f"{summary['objects']:,} objects, {summary['rows']:,} rows ({summary['errors']:,} errors, "
          f"{summary['skipped']:,} skipped) in {summary['parts']:,} parts, {summary.get('seconds') or 0:.0f} s; "
          f"{summary['failed_batches']:,} batches failed -> {output}parts/")
    return EXIT_SOME_ERRORS if summary["errors"] or summary["failed_batches"] else EXIT_OK


def merge(args: argparse.Namespace) -> int:
    """Concatenate a run's parts into one CSV, through the one destination opener (temp file, then rename
    or upload)."""
    from batch_job import formats
    from batch_job.destinations import open_destination

    if args.athena:
        print(bulk_run.athena_ddl(args.athena, args.run if args.run.endswith("/") else args.run + "/",
                                  args.format or "csv"))
        return EXIT_OK
    if s3.is_s3_url(args.run):
        run = args.run if args.run.endswith("/") else args.run + "/"
        if bulk_run.read_summary(run) is None:
            print(f"warning: {run}{bulk_run.SUCCESS} not found: a bulk run that has not finished (the CSV may miss "
                  "parts); Batch array runs write none: check that every child succeeded", file=sys.stderr)
    else:
        run = args.run
    try:
        named = formats.of_name(args.output) if args.output != "-" else None
        fmt = formats.get(args.format) if args.format else named
        destination = open_destination(args.output, fmt=fmt or formats.CSV)
        try:
            with destination.open() as out:
                parts, rows = bulk_run.merge(bulk_run.part_texts(run), out, fmt.name if fmt else None)
        finally:
            destination.close()
    except BatchJobError as error:
        raise BulkError(str(error)) from None
    where = "stdout" if args.output == "-" else args.output
    print(f"merged {parts} parts, {rows} rows -> {where}", file=sys.stderr)
    return EXIT_OK
