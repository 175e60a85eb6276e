"""The ONNX model and its model card: one onnxruntime session per process, fed whole uint8 batches."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from batch_job import integrity
from batch_job.base import ModelError, models_dir
from batch_job.results import CLASSES

MODEL_FILE = "emotion.onnx"


def default_model_path() -> Path:
    return Path(os.environ.get("MODEL_PATH") or models_dir() / MODEL_FILE)


@dataclass(frozen=True)
class ModelCard:
    """What the converter embedded in the ONNX metadata: classes, input spec, preprocessing, metrics."""
    classes: tuple[str, ...]
    input_size: int
    channels: int
    properties: dict

    @property
    def outputs_logits(self) -> bool:
        """The card says the graph ends before its softmax (the service then applies it)."""
        try:
            meaning = json.loads(self.properties.get("output", "{}")).get("meaning", "")
        except (ValueError, AttributeError):
            meaning = ""
        return "logit" in str(meaning).lower()

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelCard:
        try:
            return cls(tuple(json.loads(props["classes"])), int(props["input_size"]), int(props["channels"]),
                       dict(props))
        except (KeyError, ValueError) as error:
            raise ModelError(f"model has no valid model card in its metadata ({error})") from None


class EmotionModel:
    """Load once (per process, per Lambda container) and call predict() on batches."""

    def __init__(self, path: str | os.PathLike | None = None, threads: int = 1):
        """threads: onnxruntime intra-op threads per call; the pipeline runs CPUs // threads calls at once."""
        self.path = Path(path) if path else default_model_path()
        self.threads = threads
        if self.path.is_dir():
            raise ModelError(f"model path is a folder, not an ONNX file: {self.path}")
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise ModelError(f"cannot read model {self.path}: {error.strerror or error}") from None
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"cannot load model {self.path}: {str(error).splitlines()[0]}") from None
        self.card = ModelCard.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        if self.card.classes != CLASSES:
            raise ModelError(f"model classes {self.card.classes} differ from the service's {CLASSES}")
        self.input_name = self.session.get_inputs()[0].name
        self._check_contract()
        integrity.verify(data, self.card.properties, self.predict, self.card.input_size, self.card.channels,
                         f"model {self.path}")

    def _check_contract(self) -> None:
        """The graph must take what the card says and give one probability per class: checked once at load,
        so a wrong card is one clear error instead of a traceback or wrong rows for a whole batch."""
        card = self.card
        shape = self.session.get_inputs()[0].shape
        expected = [card.input_size, card.input_size, card.channels]
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise ModelError(f"model input {shape} does not match its card (N, {card.input_size}, "
                             f"{card.input_size}, {card.channels})")
        try:
            out = self.session.run(None, {self.input_name: np.full((2, *expected), 128, np.float32)})[0]
        except Exception as error:  # onnxruntime's own exception types
            raise ModelError(f"model does not run on its card's input (N, {card.input_size}, {card.input_size}, "
                             f"{card.channels}): {str(error).splitlines()[0]}") from None
        if out.ndim != 2 or out.shape[1] != len(card.classes):
            raise ModelError(f"model outputs shape {list(out.shape)} but its card names {len(card.classes)} "
                             f"classes")
        if not card.outputs_logits and not (np.all((out >= -1e-4) & (out <= 1 + 1e-4))
                                            and np.allclose(out.sum(axis=1), 1, atol=0.05)):  # INT8 rounds
            raise ModelError("model outputs are not probabilities (each row in [0, 1], summing to 1); if the "
                             "graph ends in logits, its card's output.meaning must say 'logits'")

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, size, size, channels) -> float32 probabilities (N, classes)."""
        return run(self.session, self.input_name, pixels, self.card.outputs_logits)


def run(session, input_name: str, pixels: np.ndarray, logits: bool) -> np.ndarray:
    """The graph on a uint8 batch -> probabilities (softmax applied here when the graph ends in logits)."""
    out = session.run(None, {input_name: pixels.astype(np.float32, copy=False)})[0]
    if logits:
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        out = shifted / shifted.sum(axis=1, keepdims=True)
    return out
