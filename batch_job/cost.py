"""What scoring N images costs on Lambda, on AWS Batch (Fargate) and on a GPU instance, beside what a managed
face-analysis API would charge for the same images.

Throughput comes from `make bench` for this machine's CPU class (bench/results/<class>/results.json; else the
newest class measured; else the defaults below), for face crops or photos, fp32 or INT8. Prices are public AWS
list prices for us-east-1 (x86), as known on PRICES_DATE: check https://aws.amazon.com/pricing before relying
on them; every one can be overridden on the command line. The managed API is Amazon Rekognition's DetectFaces
(with Attributes=ALL it returns each face's emotions): a "Group 2" image API, $0.001 per image for the first
million images a month (https://aws.amazon.com/rekognition/pricing/, as known on PRICES_DATE; cheaper tiers
after 1M, 5M and 35M images a month).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

PRICES_DATE = "2025-06 (public list prices, us-east-1; not fetched live)"
BENCH_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
LAMBDA_MB_PER_VCPU = 1769  # Lambda gives one full vCPU at 1,769 MB, proportionally less or more (up to 6)


@dataclass
class Prices:
    lambda_gb_second: float = 0.0000166667
    lambda_request: float = 0.20 / 1e6
    s3_get: float = 0.0004 / 1000
    s3_put: float = 0.005 / 1000  # PUT, COPY, POST and LIST requests
    sqs_request: float = 0.40 / 1e6
    fargate_vcpu_hour: float = 0.04048
    fargate_gb_hour: float = 0.004445
    gpu_instance_hour: float = 0.526  # g4dn.xlarge: 1 T4, 4 vCPUs
    managed_api_per_image: float = 0.001  # Rekognition DetectFaces, first 1M images a month


@dataclass
class Throughput:
    """Images per second per vCPU for the whole job (decode + infer + CSV), from bench or defaults."""
    per_vcpu: float = 400.0
    source: str = "default (no bench results)"

    @classmethod
    def from_bench(cls, folder: Path = BENCH_RESULTS, photos: bool = False, precision: str = "fp32") -> Throughput:
        """The per-core rate measured for this CPU class (else the newest class measured): face crops scored
        whole, or photos with their faces found; fp32 or INT8. `folder` may also be one results.json."""
        from batch_job.precision import cpu_class

        mine = folder / cpu_class() / "results.json"
        candidates = [folder] if folder.suffix == ".json" else \
            [mine] + sorted(folder.glob("*/results.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in candidates:
            try:
                results = json.loads(path.read_text())
                if photos:
                    rate = results["photos"][f"end_to_end_{precision}"]["photos_per_second"] / results["cpu"]["cores"]
                else:
                    key = "end_to_end" if precision == "fp32" else f"end_to_end_{precision}"
                    rate = results[key]["images_per_second_per_core"]
                where = path.parent.name if folder.suffix != ".json" else path.name
                return cls(float(rate), f"measured by make bench ({where}; {'photos' if photos else 'face crops'}, "
                                        f"{precision})")
            except (OSError, KeyError, ValueError, ZeroDivisionError):
                continue
        return cls()


def estimate(images: int, memory_mb: int = 2048, images_per_invocation: int = 100, prices: Prices | None = None,
             throughput: Throughput | None = None, fargate_vcpus: int = 2, fargate_gb: int = 4,
             gpu_images_per_second: float | None = None) -> dict:
    """Costs in USD by platform and by part (compute, requests, S3)."""
    prices = prices or Prices()
    throughput = throughput or Throughput.from_bench()
    s3 = images * prices.s3_get + math.ceil(images / 1000) * prices.s3_put  # GET each image, LIST 1k keys a page
    lambda_vcpus = min(6.0, memory_mb / LAMBDA_MB_PER_VCPU)
    lambda_seconds = images / (throughput.per_vcpu * min(1.0, lambda_vcpus))  # the runtime scales to ~1 core well
    invocations = math.ceil(images / images_per_invocation)
    lambda_parts = {
        "compute": lambda_seconds * memory_mb / 1024 * prices.lambda_gb_second,
        "requests": invocations * (prices.lambda_request + 3 * prices.sqs_request + prices.s3_put),  # CSV PUT each
        "s3_reads": s3,
    }
    fargate_hours = images / (throughput.per_vcpu * fargate_vcpus) / 3600
    batch_parts = {
        "compute": fargate_hours * (fargate_vcpus * prices.fargate_vcpu_hour + fargate_gb * prices.fargate_gb_hour),
        "requests": prices.s3_put,  # one CSV
        "s3_reads": s3,
    }
    # A GPU does not help decoding: its 4 vCPUs still decode every JPEG, so decode bounds it.
    gpu_rate = gpu_images_per_second or throughput.per_vcpu * 4
    gpu_parts = {"compute": images / gpu_rate / 3600 * prices.gpu_instance_hour, "requests": prices.s3_put,
                 "s3_reads": s3}
    platforms = {"lambda": lambda_parts, "batch_fargate": batch_parts, "gpu_instance": gpu_parts,
                 "managed_api": {"compute": images * prices.managed_api_per_image, "requests": 0.0, "s3_reads": s3}}
    return {
        "images": images, "memory_mb": memory_mb, "throughput": asdict(throughput), "prices_date": PRICES_DATE,
        "platforms": {name: {**parts, "total": sum(parts.values()),
                             "dominant": max(parts, key=lambda part: parts[part])} for name, parts in platforms.items()},
        "lambda_seconds": lambda_seconds, "lambda_invocations": invocations,
    }


def format_estimate(result: dict) -> str:
    lines = [f"Scoring {result['images']:,} images (throughput {result['throughput']['per_vcpu']:.0f} images/s "
             f"per vCPU, {result['throughput']['source']}; prices {result['prices_date']}):"]
    for name, parts in result["platforms"].items():
        detail = ", ".join(f"{k} ${v:,.4f}" for k, v in parts.items() if k not in ("total", "dominant"))
        lines.append(f"  {name:<14} ${parts['total']:,.4f}  ({detail}; dominated by {parts['dominant']})")
    lines.append(f"  Lambda at {result['memory_mb']} MB: {result['lambda_seconds']:,.0f} s of compute over "
                 f"{result['lambda_invocations']:,} invocations")
    return "\n".join(lines)
