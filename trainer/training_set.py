"""Which faces a run trains on, with which targets and weights: the config's data options in one place.

- extra_classes: facial_emotion_images_extra's angry, disgust and fear faces join train as classes 4-6
  (trainer.ferplus.SEVEN_CLASSES; the model serves the first four), except the ones its MANIFEST.csv flags as
  near a train face (the same face under a product label there).
- more_faces: facial_emotion_images_more's happy, neutral and sad faces (FER2013 Training rows the dataset
  lacks, none near a validation or test face) join train under their product labels.
- FER+ votes of the training faces (never of validation or test): drop_not_a_face, min_label_share (drop
  faces whose label the crowd disputes), weight_by_label_share (down-weight them instead) and soft_targets
  (mix the vote distribution into the target, label distribution learning as in FER+).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from batch_job.results import CLASSES
from trainer import data as dataset
from trainer import ferplus
from trainer.config import TrainConfig


@dataclass
class TrainingSet:
    paths: list[Path]
    labels: np.ndarray  # class index into `classes`
    targets: np.ndarray  # (N, len(classes)) float32: one-hot, or mixed with the FER+ distribution
    weights: np.ndarray | None  # per-face loss weight, None = all 1
    classes: tuple[str, ...]
    summary: dict  # what was added, dropped and changed, for the log and config.json readers


def train_conflicts(extra: Path) -> set[str]:
    """Extra files that MANIFEST.csv flags as near a train image (`near_shared_train_file`): the same face
    labelled sad/surprise/neutral in train and fear/angry here, a contradiction no target should carry."""
    manifest = extra / "MANIFEST.csv"
    if not manifest.is_file():
        return set()
    table = pd.read_csv(manifest, dtype=str).fillna("")
    if "near_shared_train_file" not in table:
        return set()
    return set(table.loc[table["near_shared_train_file"] != "", "file"])


def extra_split(root: Path, drop_digests: set[str]) -> tuple[dataset.Split, int] | None:
    """The extra faces as a split labelled 4-6, without byte copies of `drop_digests` (test images) and without
    the faces that contradict a train label; returns the split and how many of those were dropped."""
    extra = dataset.extra_dir(root)
    if extra is None:
        return None
    split = dataset.list_split(extra, "", ferplus.EXTRA_CLASSES)
    conflicts = train_conflicts(extra)
    conflicting = np.array([p.relative_to(extra).as_posix() in conflicts for p in split.paths], dtype=bool)
    split = split.subset(np.array([d not in drop_digests for d in split.digests], dtype=bool) & ~conflicting)
    split.labels = split.labels + len(CLASSES)
    return split, int(conflicting.sum())


def build(config: TrainConfig, root: Path, train: dataset.Split, test_digests: set[str]) -> TrainingSet:
    """The training faces of one run (after its duplicate handling and train_limit), per the config."""
    classes = ferplus.SEVEN_CLASSES if config.extra_classes else CLASSES
    summary: dict = {"classes": len(classes)}
    paths, labels = list(train.paths), train.labels.copy()
    extra_root, more_root = dataset.extra_dir(root), dataset.more_dir(root)
    drop = test_digests if config.drop_test_duplicates else set()
    if config.more_faces:
        if more_root is None:
            raise FileNotFoundError(f"more_faces = true, but there is no facial_emotion_images_more beside "
                                    f"{root} (or at $EMOTION_MORE_DIR)")
        more = dataset.list_split(more_root, "")
        more = more.subset(np.array([d not in drop for d in more.digests], dtype=bool))
        paths += more.paths
        labels = np.concatenate([labels, more.labels])
        summary["more faces"] = len(more)
    if config.extra_classes:
        found = extra_split(root, drop)
        if found is None:
            raise FileNotFoundError(f"extra_classes = true, but there is no facial_emotion_images_extra beside "
                                    f"{root} (or at $EMOTION_EXTRA_DIR)")
        extra, conflicts = found
        paths += extra.paths
        labels = np.concatenate([labels, extra.labels])
        summary["extra faces"] = len(extra)
        summary["extra faces dropped: near a train face"] = conflicts
    targets = np.eye(len(classes), dtype=np.float32)[labels]
    weights = None
    if config.uses_votes:
        path = ferplus.votes_path(root)
        if not path.is_file():
            raise FileNotFoundError(f"the config uses FER+ votes, but there is no {path} "
                                    "(or set EMOTION_FERPLUS_VOTES)")
        votes = ferplus.votes_for([ferplus.vote_key(p, root, extra_root, more_root) for p in paths], ferplus.load_votes(path))
        keep = np.ones(len(paths), dtype=bool)
        if config.drop_not_a_face:
            keep &= (ferplus.majority(votes) != ferplus.NOT_A_FACE).to_numpy()
            summary["dropped: not a face"] = int((~keep).sum())
        share = ferplus.label_share(votes, [classes[k] for k in labels])
        if config.min_label_share:
            disputed = keep & (share < config.min_label_share)  # NaN (no votes) is never below: kept
            keep &= ~disputed
            summary[f"dropped: label share < {config.min_label_share}"] = int(disputed.sum())
        if config.soft_targets:
            targets, info = ferplus.train_targets(votes, labels, classes, config.soft_targets)
            summary["soft targets"] = info
        if config.weight_by_label_share:
            weights = np.where(np.isnan(share), 1.0, share).astype(np.float32)
            summary["mean weight"] = round(float(weights[keep].mean()), 4)
        paths = [p for p, k in zip(paths, keep, strict=True) if k]
        labels, targets = labels[keep], targets[keep]
        weights = None if weights is None else weights[keep]
    summary["faces"] = len(paths)
    return TrainingSet(paths, labels, targets, weights, classes, summary)
