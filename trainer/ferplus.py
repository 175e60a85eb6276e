"""FER+ crowd votes (10 taggers per FER2013 image): the majority label, and label distributions for training.

`../shared/data/ferplus/votes.csv` has one line per shared image (`file` relative to facial_emotion_images/,
or `extra/<class>/<row>.jpg` for facial_emotion_images_extra/, `more/...` for facial_emotion_images_more/) with vote counts for neutral, happiness,
surprise, sadness, anger, disgust, fear, contempt, unknown and NF (not a face).

Majority: the rule of FER+'s own training code (src/ferplus.py, mode "majority"): single votes are dropped
as outliers, then one column must hold more than half of the remaining votes; else there is no majority
(a tie can never pass). Votes of validation and test images are for reporting only (trainer/evaluation.py);
only train (and extra) votes may become training targets (see `train_targets`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from batch_job.results import CLASSES

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                "NF")
EXTRA_CLASSES = ("angry", "disgust", "fear")  # facial_emotion_images_extra: auxiliary training only
SEVEN_CLASSES = CLASSES + EXTRA_CLASSES  # the product's four first, so serving keeps the first four outputs
FERPLUS_COLUMN = {"happy": "happiness", "neutral": "neutral", "sad": "sadness", "surprise": "surprise",
                  "angry": "anger", "disgust": "disgust", "fear": "fear"}
NOT_A_FACE = "NF"


def votes_path(data_root: str | os.PathLike) -> Path:
    """$EMOTION_FERPLUS_VOTES, else ferplus/votes.csv beside the dataset folder."""
    return Path(os.environ.get("EMOTION_FERPLUS_VOTES") or Path(data_root).parent / "ferplus" / "votes.csv")


def load_votes(path: str | os.PathLike) -> pd.DataFrame:
    """votes.csv indexed by `file`; the vote columns as integers."""
    votes = pd.read_csv(path)
    missing = sorted(set(VOTE_COLUMNS) - set(votes.columns))
    if missing or "file" not in votes.columns:
        raise ValueError(f"{path}: not a FER+ votes file (missing columns: {', '.join(missing or ['file'])})")
    votes[list(VOTE_COLUMNS)] = votes[list(VOTE_COLUMNS)].astype(int)
    return votes.set_index("file")


def vote_key(path: Path, data_root: Path, extra_root: Path | None = None, more_root: Path | None = None) -> str:
    """The votes.csv `file` of an image: its path relative to the dataset, or extra/<class>/<row>.jpg, or
    more/<class>/<row>.jpg."""
    path = Path(path)
    for prefix, root in (("extra/", extra_root), ("more/", more_root)):
        if root is not None and path.is_relative_to(root):
            return prefix + path.relative_to(root).as_posix()
    return path.relative_to(data_root).as_posix()


def votes_for(keys: list[str], votes: pd.DataFrame) -> pd.DataFrame:
    """The vote rows of these files, in this order; files with no votes get a row of zeros (no majority)."""
    return votes.reindex(keys)[list(VOTE_COLUMNS)].fillna(0).astype(int)


def without_single_votes(votes: pd.DataFrame) -> pd.DataFrame:
    counts = votes[list(VOTE_COLUMNS)].copy()
    return counts.where(counts > 1, 0)


def majority(votes: pd.DataFrame) -> pd.Series:
    """FER+ majority per image: the vote column with > 50% of the votes left after dropping single votes, or ""
    when none has (ties included: two columns cannot both exceed half)."""
    counts = without_single_votes(votes)
    top = counts.max(axis=1)
    winner = counts.idxmax(axis=1)
    return winner.where((top > 0.5 * counts.sum(axis=1)) & (top > 0), "")


def distributions(votes: pd.DataFrame, classes: tuple[str, ...] = CLASSES) -> pd.DataFrame:
    """Label distributions over `classes` (four or seven): the votes for those emotions after dropping single
    votes, normalised. Votes for other emotions, contempt, unknown and not-a-face do not count; an image left
    with no vote for any of `classes` gets NaN (the trainer falls back to its FER2013 label)."""
    counts = without_single_votes(votes)[[FERPLUS_COLUMN[c] for c in classes]].to_numpy(dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(total > 0, counts / total, np.nan)
    return pd.DataFrame(shares, index=votes.index, columns=list(classes))


def label_share(votes: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The share of all votes (single votes included) given to each image's own FER2013 label: 1 = the crowd
    agrees unanimously, 0 = nobody saw that emotion. NaN for images without votes."""
    counts = votes[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64)
    total = counts.sum(axis=1)
    own = counts[np.arange(len(counts)), [VOTE_COLUMNS.index(FERPLUS_COLUMN[label]) for label in labels]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, own / total, np.nan)


def train_targets(votes: pd.DataFrame, labels: np.ndarray, classes: tuple[str, ...], soft_weight: float
                  ) -> tuple[np.ndarray, dict]:
    """Training targets (N, len(classes)): (1 - soft_weight) x one-hot FER2013 label + soft_weight x the FER+
    distribution. Images whose votes give no distribution keep their one-hot label (counted in the summary)."""
    one_hot = np.eye(len(classes), dtype=np.float32)[labels]
    dist = np.array(distributions(votes, classes), dtype=np.float32)  # a writable copy
    missing = np.isnan(dist).any(axis=1)
    dist[missing] = one_hot[missing]
    targets = (1 - soft_weight) * one_hot + soft_weight * dist
    return targets.astype(np.float32), {"soft_weight": soft_weight, "no_distribution": int(missing.sum())}
