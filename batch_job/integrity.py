"""Is this ONNX file the graph its model card describes, and does it still compute what it computed when sealed?

The card (ONNX metadata) carries
- `graph_sha256`: the sha256 of the serialized graph (nodes and weights: field 7 of ModelProto, read here
  from the protobuf wire format, so the runtime needs no onnx package). A flipped byte in any weight fails it.
- `reference`: outputs on REFERENCE_INPUTS (fixed integer patterns, no randomness), after the service's own
  post-processing (softmax when the card says logits). A card that misdescribes the graph (logits on a
  softmax graph: softmax twice), a broken runtime or kernel fails it.
Both are written by seal() (converter/seal.py, the converter and the quantizer call it) and checked by
verify() whenever batch_job loads a model.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np

from batch_job.base import ModelError

GRAPH_FIELD = 7  # ModelProto.graph
REFERENCE_VERSION = 1


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise ModelError("not an ONNX file (truncated protobuf)")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def graph_bytes(onnx: bytes) -> bytes:
    """The serialized GraphProto inside a serialized ModelProto (all occurrences, as protobuf merges them)."""
    at, found = 0, []
    while at < len(onnx):
        tag, at = _varint(onnx, at)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, at = _varint(onnx, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length, at = _varint(onnx, at)
            if field == GRAPH_FIELD:
                found.append(onnx[at:at + length])
            at += length
        else:
            raise ModelError(f"not an ONNX file (protobuf wire type {wire})")
        if at > len(onnx):
            raise ModelError("not an ONNX file (truncated protobuf)")
    if not found:
        raise ModelError("not an ONNX file (no graph)")
    return b"".join(found)


def graph_sha256(onnx: bytes) -> str:
    return hashlib.sha256(graph_bytes(onnx)).hexdigest()


def reference_inputs(size: int, channels: int) -> np.ndarray:
    """Eight (size, size, channels) uint8 patterns made with integer arithmetic only: the same bytes on every
    machine and numpy version. Flat, gradients, a checkerboard, rings and two pseudo-random fields."""
    y, x = np.mgrid[0:size, 0:size].astype(np.int64)
    last = max(size - 1, 1)
    index = y * size + x
    patterns = [np.full((size, size), 128), x * 255 // last, y * 255 // last, ((x // 6 + y // 6) % 2) * 255,
                ((x - size // 2) ** 2 + (y - size // 2) ** 2) % 256, (x * 7 + y * 13) % 256,
                ((index * 1103515245 + 12345) % (1 << 31)) >> 23, ((index * 22695477 + 1) % (1 << 32)) >> 24]
    gray = np.stack([np.clip(p, 0, 255) for p in patterns]).astype(np.uint8)[..., None]
    return np.repeat(gray, channels, axis=-1)


def seal(onnx: bytes, predict: Callable[[np.ndarray], np.ndarray], size: int, channels: int,
         tolerance: float) -> dict[str, str]:
    """The card entries that let verify() recognise this graph: its digest and its outputs on the references."""
    outputs = np.asarray(predict(reference_inputs(size, channels)), dtype=np.float64)
    return {"graph_sha256": graph_sha256(onnx),
            "reference": json.dumps({"version": REFERENCE_VERSION, "tolerance": tolerance,
                                     "outputs": np.round(outputs, 7).tolist()})}


def verify(onnx: bytes, card: dict[str, str], predict: Callable[[np.ndarray], np.ndarray], size: int,
           channels: int, where: str) -> None:
    """ModelError unless the graph is the one the card was sealed for and computes what it computed then."""
    expected = card.get("graph_sha256")
    if not expected:
        raise ModelError(f"{where}: its model card has no graph_sha256, so it cannot be verified; seal it with "
                         "python -m converter.seal FILE (or export it again)")
    if graph_sha256(onnx) != expected:
        raise ModelError(f"{where} is corrupt or altered: its graph's sha256 is not the one its card records")
    try:
        reference = json.loads(card["reference"])
        wanted = np.asarray(reference["outputs"], dtype=np.float64)
        tolerance = float(reference["tolerance"])
        known = reference["version"] == REFERENCE_VERSION
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{where}: its model card has no valid reference outputs; seal it with "
                         "python -m converter.seal FILE") from None
    if not known:
        raise ModelError(f"{where}: reference version {reference['version']} is newer than this batch_job")
    got = np.asarray(predict(reference_inputs(size, channels)), dtype=np.float64)
    if got.shape != wanted.shape:
        raise ModelError(f"{where}: outputs of shape {list(got.shape)} on the reference inputs, its card "
                         f"recorded {list(wanted.shape)}")
    worst = float(np.abs(got - wanted).max()) if got.size else 0.0
    if not worst <= tolerance:
        raise ModelError(f"{where} does not compute what its card recorded (largest difference {worst:.3g} on "
                         f"the reference inputs, tolerance {tolerance:g}): the card does not describe this graph "
                         "(e.g. 'logits' on a graph that ends in softmax) or the runtime computes it wrongly")
