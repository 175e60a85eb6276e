"""The ONNX model and its model card: one onnxruntime session per process, fed whole uint8 batches."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from batch_job.preprocessing import CLASSES

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "emotion.onnx"


class ModelError(RuntimeError):
    """The model file is missing, unreadable or not the model this service expects (a fatal error)."""


def default_model_path() -> Path:
    return Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL)


@dataclass(frozen=True)
class ModelCard:
    """What the converter embedded in the ONNX metadata: classes, input spec, preprocessing, metrics."""
    classes: tuple[str, ...]
    input_size: int
    channels: int
    properties: dict

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> "ModelCard":
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
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"cannot load model {self.path}: {error}") from None
        self.card = ModelCard.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        if self.card.classes != CLASSES:
            raise ModelError(f"model classes {self.card.classes} differ from the service's {CLASSES}")
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, size, size, channels) -> float32 probabilities (N, classes)."""
        return self.session.run(None, {self.input_name: pixels.astype(np.float32, copy=False)})[0]
