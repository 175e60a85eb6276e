"""Knowledge distillation: a trained (usually averaged) model's probabilities become part of a run's targets.

An ensemble with mirror-image TTA scores better than any one network, but it costs a forward pass per member
and view on every face. Distillation moves most of that gain into one network of the served size: the student
trains on `(1 - teacher_weight) x its usual target + teacher_weight x the teacher's probabilities`. The teacher is
any run folder (or .keras file) whose model serves the product's four classes, such as an `ensemble --tta` run;
it scores the training faces once, before the first epoch (offline distillation), and the scores are cached in
the run folder so `--resume` does not redo them.

A seven-class student (extra_classes) learns the teacher's four-class distribution on the faces labelled with a
product class; the angry, disgust and fear faces keep their targets, because the teacher has no output for them.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from batch_job.preprocessing import with_channels
from batch_job.results import CLASSES
from trainer.config import ConfigError

CACHE_NAME = "teacher_probabilities.npz"
BATCH = 256


def teacher_file(teacher: str | Path) -> Path:
    """The teacher's model file: `teacher` itself when it is a file, else its run folder's model.keras."""
    path = Path(teacher)
    path = path if path.is_file() else path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"teacher {teacher}: no such model file or run folder with a model.keras "
                                "(train or ensemble it first)")
    return path


def teacher_probabilities(model_path: Path, pixels: np.ndarray) -> np.ndarray:
    """The teacher's four-class probabilities (N, 4) for uint8 faces (N, 48, 48, 1), in batches."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    if int(model.output_shape[-1]) != len(CLASSES):
        raise ConfigError(f"teacher {model_path} has {model.output_shape[-1]} outputs; a teacher must serve the "
                         f"{len(CLASSES)} product classes (a finished run's or an ensemble's model.keras)")
    faces = with_channels(pixels.astype(np.float32), int(model.input_shape[-1]))  # "RGB" runs: gray three times
    probs = model.predict(faces, batch_size=BATCH, verbose=0)
    return np.asarray(probs, dtype=np.float32)


def cached_probabilities(model_path: Path, pixels: np.ndarray, keys: list[str], cache: Path) -> np.ndarray:
    """teacher_probabilities, read from `cache` when it was made by the same teacher file for the same faces."""
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["teacher_sha256"]) == digest and saved["keys"].tolist() == keys:
                return saved["probabilities"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass  # no cache, or a damaged one (a run killed while writing it): score again
    probs = teacher_probabilities(model_path, pixels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, probabilities=probs, keys=np.array(keys), teacher_sha256=np.array(digest))
    tmp.replace(cache)
    return probs


def mix(targets: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) x targets + weight x the teacher's distribution, on the faces labelled with a product class;
    a seven-class target gets zeros for the three auxiliary classes in the teacher's part."""
    if not 0 <= weight <= 1:
        raise ValueError(f"teacher weight {weight} is not in [0, 1]")
    teacher = np.zeros_like(targets, dtype=np.float32)
    teacher[:, : len(CLASSES)] = probabilities
    product = labels < len(CLASSES)
    mixed = targets.astype(np.float32).copy()
    mixed[product] = (1 - weight) * targets[product] + weight * teacher[product]
    return mixed


def summary(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """How far the teacher's view is from the labels on the product-class faces, for the run log."""
    product = labels < len(CLASSES)
    agree = probabilities[product].argmax(axis=1) == labels[product]
    return {"teacher agrees with the label": round(float(agree.mean()), 4) if product.any() else None,
            "faces with teacher targets": int(product.sum())}


def with_teacher(faces, pixels: np.ndarray, model_path: Path, weight: float, cache: Path):
    """`faces` (a training_set.TrainingSet) with the teacher's probabilities (model_path: teacher_file's answer)
    mixed into its targets."""
    from dataclasses import replace

    probs = cached_probabilities(model_path, pixels, [p.as_posix() for p in faces.paths], cache)
    return replace(faces, targets=mix(faces.targets, faces.labels, probs, weight),
                   summary={**faces.summary, "teacher": summary(faces.labels, probs)})
