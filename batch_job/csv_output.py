"""The CSV format: path,emotion,confidence,p_happy,p_neutral,p_sad,p_surprise,error."""
from __future__ import annotations

import csv
from typing import IO, Callable, Iterable, Iterator

from batch_job.pipeline import Prediction
from batch_job.preprocessing import CLASSES

COLUMNS = ["path", "emotion", "confidence", *(f"p_{name}" for name in CLASSES), "error"]


def to_row(prediction: Prediction) -> list[str]:
    if prediction.probabilities is None:
        return [prediction.path, "", "", *([""] * len(CLASSES)), prediction.error]
    probs = prediction.probabilities
    best = int(probs.argmax())
    return [prediction.path, CLASSES[best], f"{probs[best]:.6f}", *(f"{p:.6f}" for p in probs), ""]


def write_csv(predictions: Iterable[Prediction], out: IO[str]) -> Iterator[Prediction]:
    """Write the header and one row per prediction, passing each prediction on (for counting, progress)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for prediction in predictions:
        writer.writerow(to_row(prediction))
        yield prediction


def write_all(predictions: Iterable[Prediction], out: IO[str],
              watch: Callable[[Iterator[Prediction]], Iterable[Prediction]] = iter) -> tuple[int, int]:
    """Write the whole CSV; returns (rows, error rows). `watch` wraps the stream (e.g. a progress bar)."""
    rows = errors = 0
    for prediction in watch(write_csv(predictions, out)):
        rows += 1
        errors += bool(prediction.error)
    return rows, errors
