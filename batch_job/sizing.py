"""How much one Lambda invocation should take on, from the function's memory: the bulk path's batch size and the
decode budget. template.yaml's Sizing mapping is this table (a test holds them equal), so a smaller
MemorySize gets smaller batches and a smaller budget instead of timeouts and out-of-memory kills.

The model, stated so it can be checked (docs/cloud.md, "Sizing"):
- Lambda gives CPU in proportion to memory: one vCPU at 1,769 MB.
- A photo (~200 KB JPEG, faces found, ~7 faces) costs at most 1/PHOTOS_PER_VCPU_SECOND vCPU-seconds on the
  slowest CPU class measured (make bench: 39-46 photos/s per core on AVX-512 VNNI; about half that on AVX2;
  10 leaves room for S3 fetch latency and Lambda's slower cores).
- A bulk batch should take at most BATCH_SECONDS, half the bulk function's timeout (BULK_TIMEOUT), so a slow
  batch still ends, and one retry of a timed-out batch fits in an EXPRESS child execution's 5 minutes.
- The decode budget is what the memory leaves after the runtime (RUNTIME_MB: interpreter, onnxruntime, both
  models, pipeline buffers; measured 250 MB peak outside the budget), with a margin for the largest image.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

MB_PER_VCPU = 1769
PHOTOS_PER_VCPU_SECOND = 10.0
BULK_TIMEOUT = 120  # seconds: the bulk function's timeout in template.yaml
BATCH_SECONDS = BULK_TIMEOUT / 2
MAX_BATCH_ITEMS = 1000  # Step Functions' ItemBatcher input stays under its 256 KB payload limit at 1,000 keys
MIN_BATCH_ITEMS = 25
RUNTIME_MB = 320
MIN_BUDGET_MB = 64
MEMORY_SIZES = (512, 1024, 1536, 1769, 2048, 3008, 4096, 6144, 8192, 10240)  # template.yaml's AllowedValues


@dataclass(frozen=True)
class Sizing:
    memory_mb: int
    batch_items: int  # the bulk path's MaxItemsPerBatch
    decode_budget_mb: int  # DECODE_BUDGET_MB

    @property
    def vcpus(self) -> float:
        return self.memory_mb / MB_PER_VCPU


def for_memory(memory_mb: int) -> Sizing:
    vcpus = memory_mb / MB_PER_VCPU
    items = int(BATCH_SECONDS * PHOTOS_PER_VCPU_SECOND * vcpus)
    items = max(MIN_BATCH_ITEMS, min(MAX_BATCH_ITEMS, items // 25 * 25))
    budget = max(MIN_BUDGET_MB, int((memory_mb - RUNTIME_MB) * 0.6) // 16 * 16)
    return Sizing(memory_mb, items, budget)


def lambda_decode_budget(env: Mapping[str, str] = os.environ) -> int | None:
    """The decode budget for this Lambda function's memory (AWS_LAMBDA_FUNCTION_MEMORY_SIZE), or None outside
    Lambda. DECODE_BUDGET_MB, when set, wins (Settings reads it)."""
    memory = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    return for_memory(int(memory)).decode_budget_mb if memory.isdigit() else None
