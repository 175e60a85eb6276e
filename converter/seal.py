"""python -m converter.seal MODEL.onnx [...]: write a model's integrity entries (graph_sha256, reference
outputs; batch_job/integrity.py) into its card, in place. The converter and the quantizer seal what they
write; this command seals a file made or edited by hand. A model must be re-sealed after any change to its
graph, and only then: batch_job refuses a graph that differs from what its card recorded."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
import onnxruntime as ort

from batch_job import integrity
from batch_job.model import ModelCard, run

FP32_TOLERANCE = 1e-4  # fp32 kernels of different CPUs differ by ~1e-6 on these inputs
INT8_TOLERANCE = 0.05  # INT8 kernels round differently on VNNI and AVX2 CPUs; a damaged graph moves far more


def seal(proto: onnx.ModelProto, tolerance: float | None = None) -> onnx.ModelProto:
    """The model with its integrity entries (re)computed; its other card entries as they were."""
    keep = [entry for entry in proto.metadata_props if entry.key not in ("graph_sha256", "reference")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    data = proto.SerializeToString()
    card = ModelCard.from_metadata({entry.key: entry.value for entry in proto.metadata_props})
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if tolerance is None:
        tolerance = INT8_TOLERANCE if "int8" in card.properties else FP32_TOLERANCE
    entries = integrity.seal(data, lambda pixels: run(session, name, pixels, card.outputs_logits),
                             card.input_size, card.channels, tolerance)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def seal_file(path: Path, tolerance: float | None = None) -> None:
    onnx.save(seal(onnx.load(str(path)), tolerance), str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.seal", description=__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files with a model card")
    parser.add_argument("--tolerance", type=float, help="reference tolerance (default: 1e-4 fp32, 0.05 INT8)")
    args = parser.parse_args(argv)
    for path in args.models:
        seal_file(path, args.tolerance)
        print(f"sealed {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
