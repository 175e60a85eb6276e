"""What scoring N images costs on each of the stack's three paths (the upload queue, the bulk path, AWS Batch),
for face crops or photos, in the template's default mode (faces found, `auto`), beside Amazon Rekognition's
DetectFaces at its volume tiers.

Throughput is the measured per-core rate of `make bench` for a CPU class, shipped with the package
(batch_job/rates.json: an installed package has no bench/ folder), in faces mode auto at the precision that
class runs by default. Prices are public AWS list prices for us-east-1 as known on PRICES_DATE: check
https://aws.amazon.com/pricing before relying on them; every one can be overridden. What is modelled, and what
is assumed, is in docs/cloud.md ("Cost").
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from batch_job.sizing import MB_PER_VCPU, for_memory

PRICES_DATE = "2025-06 (public list prices, us-east-1; not fetched live)"
RATES_FILE = Path(__file__).resolve().parent / "rates.json"
WORKLOADS = ("crops", "photos")
IMAGE_KB = {"crops": 2, "photos": 200}  # a 48x48 JPEG face crop; a ~2 MP phone JPEG
SQS_REQUESTS_PER_IMAGE = 1.2  # send (S3's notification) + receive and delete in batches of 10 + empty polls
BATCH_JOB_VCPUS, BATCH_JOB_GB = 4, 8  # template.yaml's job definition
BATCH_HOURS_PER_CHILD = 6  # shard so a child finishes in half its 12-hour attempt timeout


@dataclass
class Prices:
    lambda_gb_second: float = 0.0000166667  # x86_64; arm64 is 0.0000133334
    lambda_request: float = 0.20 / 1e6
    s3_get: float = 0.0004 / 1000
    s3_put: float = 0.005 / 1000  # PUT, COPY, POST and LIST requests
    s3_list: float = 0.005 / 1000
    sqs_request: float = 0.40 / 1e6
    sfn_standard_transition: float = 0.025 / 1000
    sfn_express_request: float = 1.00 / 1e6
    sfn_express_gb_second: float = 0.00001667
    fargate_vcpu_hour: float = 0.04048
    fargate_gb_hour: float = 0.004445
    nat_gb: float = 0.045  # only where S3 traffic goes through a NAT gateway (no S3 gateway endpoint)
    # Rekognition DetectFaces (Group 2 image API), per image, by monthly volume: (images up to, price)
    rekognition_tiers: list = field(default_factory=lambda: [(1_000_000, 0.001), (5_000_000, 0.0008),
                                                             (35_000_000, 0.0006), (None, 0.00025)])


@dataclass
class Rate:
    """Images per second per vCPU, end to end (read, decode, detect, score, write), and where it comes from."""
    per_vcpu: float
    source: str


def load_rates(path: Path = RATES_FILE) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def rate_for(workload: str, cpu_class: str | None = None, rates: dict | None = None) -> Rate:
    """The measured rate for this workload on this CPU class; else the slowest class that measured it (a
    Lambda or Fargate CPU may be any of them), saying so."""
    from batch_job.precision import cpu_class as this_class

    rates = load_rates() if rates is None else rates
    wanted = cpu_class or this_class()
    measured = {name: entry[workload] for name, entry in rates.items() if isinstance(entry, dict) and workload in entry}
    if wanted in measured:
        row = measured[wanted]
        return Rate(row["per_core"], f"make bench on {wanted} ({row['precision']}, faces {row['faces']})")
    if not measured:
        raise ValueError(f"no measured rate for {workload} in {RATES_FILE}: run make bench")
    slowest = min(measured, key=lambda name: measured[name]["per_core"])
    row = measured[slowest]
    return Rate(row["per_core"], f"make bench on {slowest} ({row['precision']}, faces {row['faces']}); {wanted} "
                                 "not measured: the slowest class measured")


def rekognition(images: int, prices: Prices) -> float:
    """DetectFaces for `images` in one month, tier by tier."""
    total, below = 0.0, 0
    for upto, price in prices.rekognition_tiers:
        band = (images if upto is None else min(images, upto)) - below
        if band <= 0:
            break
        total += band * price
        below += band
    return total


def estimate(images: int, workload: str = "photos", memory_mb: int = 2048, images_per_invocation: int = 100,
             prices: Prices | None = None, rate: Rate | None = None, shards: int | None = None,
             nat: bool = False) -> dict:
    """USD by path and by part, for `images` of one workload, with the template's defaults."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
    prices = prices or Prices()
    rate = rate or rate_for(workload)
    vcpus = memory_mb / MB_PER_VCPU
    lambda_seconds = images / (rate.per_vcpu * vcpus)
    lambda_compute = lambda_seconds * memory_mb / 1024 * prices.lambda_gb_second
    gets = images * prices.s3_get
    listing = math.ceil(images / 1000) * prices.s3_list

    invocations = math.ceil(images / images_per_invocation)
    upload = {"compute": lambda_compute, "lambda_requests": invocations * prices.lambda_request,
              "sqs": images * SQS_REQUESTS_PER_IMAGE * prices.sqs_request,
              "s3_get": gets, "s3_put_outputs": invocations * prices.s3_put}

    batch_items = for_memory(memory_mb).batch_items
    children = math.ceil(images / batch_items)
    child_seconds = batch_items / (rate.per_vcpu * vcpus) + 1.0  # + the invoke's own overhead
    bulk = {"compute": lambda_compute, "lambda_requests": children * prices.lambda_request,
            "step_functions": children * (prices.sfn_standard_transition + prices.sfn_express_request
                                          + math.ceil(child_seconds * 10) / 10 * 0.0625 * prices.sfn_express_gb_second),
            "s3_get": gets, "s3_list": listing, "s3_put_outputs": children * prices.s3_put}

    job_rate = rate.per_vcpu * BATCH_JOB_VCPUS  # images/s of one 4-vCPU job
    shards = shards or max(1, math.ceil(images / (job_rate * BATCH_HOURS_PER_CHILD * 3600)))
    fargate_hours = images / job_rate / 3600
    batch = {"compute": fargate_hours * (BATCH_JOB_VCPUS * prices.fargate_vcpu_hour
                                         + BATCH_JOB_GB * prices.fargate_gb_hour),
             "s3_get": gets, "s3_list": shards * listing, "s3_put_outputs": shards * prices.s3_put}
    if nat:
        batch["nat"] = images * IMAGE_KB[workload] / 1024 / 1024 * prices.nat_gb

    paths = {"upload_queue": upload, "bulk": bulk, "batch": batch,
             "rekognition": {"detect_faces": rekognition(images, prices), "s3_get": gets}}
    return {
        "images": images, "workload": workload, "memory_mb": memory_mb, "rate": asdict(rate),
        "prices_date": PRICES_DATE, "images_per_invocation": images_per_invocation,
        "bulk_batch_items": batch_items, "bulk_children": children, "batch_shards": shards,
        "lambda_seconds": lambda_seconds,
        "paths": {name: {**parts, "total": sum(parts.values()), "dominant": max(parts, key=lambda p: parts[p])}
                  for name, parts in paths.items()},
    }


def format_estimate(result: dict) -> str:
    lines = [f"Scoring {result['images']:,} {result['workload']} with their faces found "
             f"({result['rate']['per_vcpu']:.1f} images/s per vCPU, {result['rate']['source']}; "
             f"prices {result['prices_date']}):"]
    for name, parts in result["paths"].items():
        detail = ", ".join(f"{k} ${v:,.2f}" for k, v in parts.items() if k not in ("total", "dominant"))
        lines.append(f"  {name:<13} ${parts['total']:>12,.2f}  ({detail}; dominated by {parts['dominant']})")
    lines.append(f"  Lambda {result['memory_mb']} MB: {result['lambda_seconds']:,.0f} s of compute; upload queue "
                 f"{result['images_per_invocation']} images per invocation; bulk batches of "
                 f"{result['bulk_batch_items']} ({result['bulk_children']:,} child executions); Batch "
                 f"{result['batch_shards']} shards")
    return "\n".join(lines)


def rates_from_bench(results: dict) -> dict:
    """One CPU class's entry of rates.json from bench/results/<class>/results.json: the default mode (auto) at the
    precision that class runs by default (INT8 where measured, else fp32)."""
    cores = results.get("cpu", {}).get("cores") or 1
    entry: dict = {"cpu": results.get("cpu", {}).get("model", ""), "date": results.get("date", "")}
    auto = results.get("end_to_end_auto")
    if auto:
        entry["crops"] = {"per_core": round(auto["images_per_second"] / cores, 1), "precision": auto["precision"],
                          "faces": auto["faces_mode"]}
    photos = results.get("photos", {})
    for precision in ("int8", "fp32"):
        run = photos.get(f"end_to_end_{precision}")
        if run:
            entry["photos"] = {"per_core": round(run["photos_per_second"] / cores, 1), "precision": precision,
                               "faces": "auto"}
            break
    return entry
