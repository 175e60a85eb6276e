"""fp32 or INT8: which graphs run, chosen when the models load, by what the CPU does well.

INT8 graphs (models/*.int8.onnx, made and measured by `python -m converter.quantize`) are faster, but their
accuracy depends on the CPU's integer kernels: without VNNI, onnxruntime's u8s8 kernels add pairs of products in
int16 and can saturate, unless the weights were quantized to 7 bits (`reduce_range`). So `auto` runs INT8 where
it was shown to be accurate: on x86 CPUs with VNNI (avx512_vnni, avx_vnni, amx_int8), and on any x86 CPU with
AVX2 when the INT8 graph was made with reduce_range; elsewhere (Arm, whose kernels were not measured) fp32.
`--precision fp32|int8` (or $PRECISION) overrides it.
"""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from batch_job.settings import precision as checked_precision

T = TypeVar("T")
VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 'flags', Arm 'Features'); empty when the system does not say."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_class() -> str:
    """'<machine>-<kind>': the class of CPU a benchmark's results belong to (bench/results/<class>/)."""
    flags = cpu_flags()
    kind = "vnni" if flags & VNNI else "avx2" if "avx2" in flags else "asimddp" if "asimddp" in flags else "base"
    return f"{platform.machine()}-{kind}"


def int8_info(path: Path) -> dict | None:
    """The `int8` section of an INT8 graph's model card (how it was made, what was measured), or None."""
    if not path.is_file():
        return None
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return json.loads(session.get_modelmeta().custom_metadata_map.get("int8", "null"))
    except Exception:  # noqa: BLE001 - a broken INT8 file means: run fp32
        return None


def resolve(precision: str, flags: set[str], machine: str, int8: dict | None) -> str:
    """'fp32' or 'int8' for a requested precision on a CPU (flags, machine) given the INT8 graph's card."""
    precision = checked_precision(precision)
    if precision != "auto":
        return precision
    if int8 is None:
        return "fp32"
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "i386")
    if x86 and flags & VNNI:
        return "int8"
    if x86 and "avx2" in flags and int8.get("reduce_range"):
        return "int8"
    return "fp32"


def int8_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(fp32_path.name.replace(".onnx", ".int8.onnx"))


def choose(precision: str | None, fp32_path: Path, required: bool = True) -> Path:
    """The file to load for the model at `fp32_path`: itself, or its INT8 sibling. With required=False a model
    that has no INT8 graph (the face detector: INT8 was slower, models/int8.json) runs fp32 whatever is asked."""
    precision = checked_precision(precision or os.environ.get("PRECISION", "").strip() or "auto",
                                  "precision" if precision else "PRECISION")
    quantized = int8_path(fp32_path)
    if not required and not quantized.is_file():
        return fp32_path
    if precision == "int8" and not quantized.is_file():
        from batch_job.base import ModelError

        raise ModelError(f"no INT8 graph beside {fp32_path} (make it with python -m converter.quantize)")
    info = int8_info(quantized) if precision == "auto" else None
    choice = resolve(precision, cpu_flags(), platform.machine(), info) if precision == "auto" else precision
    return quantized if choice == "int8" else fp32_path


def load(fp32_path: Path, precision: str, loader: Callable[[Path], T], card: Callable[[T], dict],
         required: bool = True) -> T:
    """The model at `fp32_path`, loaded once in the precision asked: fp32, its INT8 sibling, or (auto) INT8 where
    this CPU runs it accurately, judged from the INT8 graph's own card (`card(model)['int8']`). With
    required=False a model without an INT8 graph (the face detector) runs fp32 whatever is asked."""
    precision = checked_precision(precision)
    quantized = int8_path(fp32_path)
    if precision == "fp32" or (not quantized.is_file() and (precision == "auto" or not required)):
        return loader(fp32_path)
    if not quantized.is_file():
        from batch_job.base import ModelError

        raise ModelError(f"no INT8 graph beside {fp32_path} (make it with python -m converter.quantize)")
    model = loader(quantized)
    if precision == "int8":
        return model
    try:
        info = json.loads(card(model).get("int8") or "null")
    except ValueError:
        info = None
    return model if resolve("auto", cpu_flags(), platform.machine(), info) == "int8" else loader(fp32_path)
