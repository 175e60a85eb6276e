"""The folder of a bulk run, and the two things done with it once the map is over: add it up, merge it.

    s3://out/runs/june/
      parts/part-<hash>.csv      one per Distributed Map batch (or part-shard-<i>-of-<N>.csv per Batch child)
      _map/<map run id>/...      Step Functions' ResultWriter: manifest.json, SUCCEEDED_*, FAILED_*, PENDING_*
      _SUCCESS.json              written last, by the state machine's final step: the run's totals

There is deliberately no single merged CSV at this scale: Athena reads parts/ as one table (athena_ddl;
`python -m batch_job merge RUN --athena TABLE` prints it). `python -m batch_job merge` concatenates the parts
of a run small enough to want one file.
"""
from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from batch_job import s3
from batch_job.base import BatchJobError
from batch_job.events import EventError

PARTS = "parts/"
RESULTS = "_map"
SUCCESS = "_SUCCESS.json"


def split_run_url(url: object) -> tuple[str, str]:
    """'s3://out/runs/june/' -> ('out', 'runs/june/'). A run is a folder: the URL must end with '/'."""
    if not isinstance(url, str) or not s3.is_s3_url(url) or not url.endswith("/"):
        raise EventError(f"a run's output must be an s3://bucket/folder/ URL ending with '/', not {url!r}")
    bucket, prefix = s3.parse_url(url)
    return bucket, prefix


# ---- the final step: ResultWriter's manifest -> totals -> _SUCCESS.json ----

def result_records(lines: Iterable[str]) -> Iterator[dict]:
    """The records of one ResultWriter file, read line by line: JSON Lines (what the definition asks for;
    a run of 1B images has a million of them) or, for a JSON array, the whole file at once."""
    lines = iter(lines)
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        return
    if first.lstrip().startswith("["):
        yield from json.loads(first + "".join(lines))
        return
    yield json.loads(first)
    for line in lines:
        if line.strip():
            yield json.loads(line)


def batch_output(record: dict) -> dict:
    """A child's return value: COMPACT results are the output itself; NONE (and failed children, always
    written unchanged) wrap it as a JSON string under 'Output'."""
    output = record.get("Output", record) if isinstance(record, dict) else {}
    return json.loads(output) if isinstance(output, str) else output


def batch_items(record: dict) -> int:
    """How many items a failed or pending child was given (its Input is the batch, as a JSON string)."""
    try:
        batch = json.loads(record.get("Input") or "{}")
    except (TypeError, ValueError):
        return 0
    return len(batch.get("Items", ())) if isinstance(batch, dict) else 0


def totals(manifest: dict, read_lines: Callable[[str, str], Iterable[str]]) -> dict:
    """Add up a map run from its ResultWriter manifest; read_lines(bucket, key) streams each results file."""
    bucket = str(manifest.get("DestinationBucket") or "")
    files = manifest.get("ResultFiles", {})
    sums = {"objects": 0, "rows": 0, "errors": 0, "skipped": 0, "parts": 0,
            "failed_batches": 0, "failed_objects": 0, "pending_batches": 0}
    for entry in files.get("SUCCEEDED", ()):
        for record in result_records(read_lines(bucket, entry["Key"])):
            output = batch_output(record)
            for name in ("objects", "rows", "errors", "skipped"):
                sums[name] += int(output.get(name) or 0)
            sums["parts"] += bool(output.get("part"))
    for status, name in (("FAILED", "failed"), ("PENDING", "pending")):
        for entry in files.get(status, ()):
            for record in result_records(read_lines(bucket, entry["Key"])):
                sums[f"{name}_batches"] += 1
                if name == "failed":
                    sums["failed_objects"] += batch_items(record)
    return sums


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def write_summary(request: dict, now: datetime | None = None) -> dict:
    """{"output", "results": {"Bucket", "Key"}, "started", ...} -> <output>_SUCCESS.json; returns its content."""
    if not isinstance(request, dict) or not isinstance(request.get("results"), dict):
        raise EventError("summary request without the map's ResultWriterDetails ('results')")
    bucket, prefix = split_run_url(request.get("output"))
    results = request["results"]
    manifest = json.loads(_read_text(results["Bucket"], results["Key"]))
    summary = totals(manifest, _read_lines)
    finished = now or datetime.now(UTC)
    started = request.get("started")
    summary["seconds"] = round((finished - _parse_time(started)).total_seconds(), 3) if started else None
    summary.update(source=request.get("source"), output=request["output"], started=started,
                   finished=finished.isoformat().replace("+00:00", "Z"), execution=request.get("execution"),
                   map_run=request.get("map_run"), results=f"s3://{results['Bucket']}/{results['Key']}")
    body = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    s3.client().put_object(Bucket=bucket, Key=prefix + SUCCESS, Body=body.encode("utf-8"),
                           ContentType="application/json")
    return summary


FAILED_BATCHES_METRIC = ("EmotionBatch", "FailedBatches")  # (namespace, name): template.yaml's alarm watches it


def failed_batches_metric(summary: dict, timestamp_ms: int | None = None) -> dict:
    """The CloudWatch Embedded Metric Format fields for a run's failed batches: logged by the final step, they
    become a metric (no API call, no permission) that BulkRunsPartlyFailedAlarm watches. A run within its
    tolerated failure percentage succeeds: this metric is how anyone hears of its failed batches."""
    import time

    namespace, name = FAILED_BATCHES_METRIC
    return {"_aws": {"Timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
                     "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [[]],
                                            "Metrics": [{"Name": name, "Unit": "Count"}]}]},
            name: int(summary.get("failed_batches") or 0)}


def _read_text(bucket: str, key: str) -> str:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")


def _read_lines(bucket: str, key: str) -> Iterator[str]:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"]
    for line in body.iter_lines(keepends=True):
        yield line.decode("utf-8")


def read_summary(run: str) -> dict | None:
    """The run's _SUCCESS.json, or None while the run has not finished (or failed)."""
    from botocore.exceptions import ClientError

    bucket, prefix = split_run_url(run)
    try:
        return json.loads(_read_text(bucket, prefix + SUCCESS))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


# ---- one table from the parts: Athena over parts/, or merge into one CSV (small runs) ----

def athena_ddl(table: str, run: str, fmt: str = "csv", versioned: bool = True) -> str:
    """CREATE EXTERNAL TABLE over <run>parts/ in the parts' format (--format of the run: csv or jsonl), with
    today's columns (bulk parts carry source_version). CSV: all strings (the CSV SerDe reads text; cast in
    queries, e.g. CAST(confidence AS double)); JSON Lines: typed."""
    from batch_job import formats

    bucket, prefix = split_run_url(run)
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,254}", table):
        raise MergeError(f"Athena table names are lowercase letters, digits and '_': {table!r}")
    return formats.get(fmt).athena_table(table, f"s3://{bucket}/{prefix}{PARTS}", formats.columns(versioned=versioned))


def part_texts(run: str) -> Iterator[tuple[str, str]]:
    """(name, text) of every part of a run folder, s3://bucket/run/ or a local folder, in name order: files of
    any output format (part-*.csv, part-*.jsonl)."""
    from batch_job import formats

    if s3.is_s3_url(run):
        bucket, prefix = split_run_url(run if run.endswith("/") else run + "/")
        for key in sorted(_keys(bucket, prefix + PARTS)):
            if formats.of_name(key):
                yield f"s3://{bucket}/{key}", _read_text(bucket, key)
        return
    folder = Path(run) / PARTS
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if path.is_file() and formats.of_name(path.name):
            yield str(path), path.read_text(encoding="utf-8")


def _run_keys(run: str) -> Iterator[str]:
    bucket, prefix = split_run_url(run)
    for folder in (PARTS, RESULTS + "/"):
        yield from _keys(bucket, prefix + folder)
    if any(True for key in _keys(bucket, prefix + SUCCESS) if key == prefix + SUCCESS):
        yield prefix + SUCCESS


def run_files(run: str) -> int:
    """How many files an earlier run left in this run folder (its parts, map results, summary)."""
    return sum(1 for _ in _run_keys(run))


def delete_run_files(run: str) -> int:
    """Delete what an earlier run left in this run folder (submit --replace); returns how many files."""
    bucket, _ = split_run_url(run)
    keys = list(_run_keys(run))
    for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a request
        s3.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                          "Quiet": True})
    return len(keys)


def _keys(bucket: str, prefix: str) -> Iterator[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for entry in page.get("Contents", ()):
            yield entry["Key"]


class MergeError(BatchJobError):
    """The parts cannot be merged into one file (none found, or written with different columns)."""


def merge(parts: Iterable[tuple[str, str]], out: IO[str], fmt: str | None = None) -> tuple[int, int]:
    """Write every part's records into one file, sorted by path (a deterministic file whatever the batching);
    returns (parts, rows). Each part is read in its own format (its name says which); the output is in `fmt`
    (default: the parts'). Parts written with different columns (a run straddling a release) are refused. The
    rows are sorted in memory: for runs small enough to want one file (Athena reads any size)."""
    from batch_job import formats

    header: list[str] | None = None
    first_format = None
    rows: list[list[str]] = []
    count = 0
    for name, text in parts:
        part_format = formats.of_name(name) or formats.CSV
        part_header, part_rows = part_format.read(io.StringIO(text))
        if not part_header:
            continue
        if header is None:
            header, first_format = part_header, part_format
        elif part_header != header:
            raise MergeError(f"{name} has columns {','.join(part_header)}, the first part {','.join(header)}")
        rows.extend(part_rows)
        count += 1
    if header is None or first_format is None:
        raise MergeError("no parts found (expected parts/*.csv or parts/*.jsonl in the run folder)")
    path = header.index("path")
    rows.sort(key=lambda row: row[path])  # stable: the rows of one image (one per face) keep their order
    writer = formats.Writer(formats.get(fmt or first_format.name), out, header)
    for row in rows:
        writer.row(row)
    return count, len(rows)
