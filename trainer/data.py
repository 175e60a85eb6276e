"""The face dataset on disk -> numpy arrays, through the runtime's own preprocessing.

The data folder comes from --data, else $EMOTION_DATA_DIR, else ../shared/data/facial_emotion_images.
Byte-identical copies of test images are dropped from train and validation (when asked), so test scores
are honest; `unique_test` marks the test images that have no copy in train or validation at all.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batch_job.preprocessing import load_image
from batch_job.results import CLASSES

SPLITS = ("train", "validation", "test")
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "facial_emotion_images"


def _beside(root: Path, folder: str, variable: str) -> Path | None:
    path = Path(os.environ.get(variable) or Path(root).parent / folder)
    return path if path.is_dir() else None


def extra_dir(root: Path) -> Path | None:
    """facial_emotion_images_extra (angry, disgust, fear; auxiliary training only): $EMOTION_EXTRA_DIR, else
    beside the dataset folder; None when it is not there."""
    return _beside(root, "facial_emotion_images_extra", "EMOTION_EXTRA_DIR")


def more_dir(root: Path) -> Path | None:
    """facial_emotion_images_more (more FER2013 Training happy, neutral, sad; training only): $EMOTION_MORE_DIR,
    else beside the dataset folder; None when it is not there."""
    return _beside(root, "facial_emotion_images_more", "EMOTION_MORE_DIR")


def data_dir(override: str | os.PathLike | None = None) -> Path:
    path = Path(override or os.environ.get("EMOTION_DATA_DIR") or DEFAULT_DATA_DIR)
    if not (path / "train").is_dir():
        raise FileNotFoundError(
            f"no dataset at {path} (expected {path}/{{train,validation,test}}/<class>/*.jpg); "
            "pass --data or set EMOTION_DATA_DIR")
    return path


@dataclass
class Split:
    paths: list[Path]
    labels: np.ndarray  # int class index into CLASSES
    digests: list[str]  # md5 of the file bytes, for duplicate detection

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray) -> Split:
        idx = np.flatnonzero(keep)
        return Split([self.paths[i] for i in idx], self.labels[idx], [self.digests[i] for i in idx])


def list_split(root: Path, split: str, classes: tuple[str, ...] = CLASSES) -> Split:
    """Every file of root/split/<class>/ in class order, then name order; labels index `classes`."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((Path(root) / split / name).glob("*")):
            if path.is_file():
                paths.append(path)
                labels.append(label)
    digests = [hashlib.md5(p.read_bytes()).hexdigest() for p in paths]
    return Split(paths, np.array(labels, dtype=np.int64), digests)


def load_splits(root: Path, drop_test_duplicates: bool = True, drop_near_duplicates: bool = False) -> dict[str, Split]:
    """The three splits; optionally without the train/validation images that copy a test image.

    drop_test_duplicates: byte-identical copies. drop_near_duplicates: also near copies (re-encoded, shifted by a
    pixel or two; see trainer/dedup.py), which costs one extra decode of every image (about 10-20 s).
    """
    splits = {name: list_split(root, name) for name in SPLITS}
    test_digests = set(splits["test"].digests)
    if drop_test_duplicates or drop_near_duplicates:
        for name in ("train", "validation"):
            split = splits[name]
            splits[name] = split.subset(np.array([d not in test_digests for d in split.digests], dtype=bool))
    if drop_near_duplicates:
        from trainer import dedup

        test_pixels = load_pixels(splits["test"].paths)
        for name in ("train", "validation"):
            split = splits[name]
            pairs = dedup.near_duplicate_pairs(test_pixels, load_pixels(split.paths))
            keep = np.ones(len(split), dtype=bool)
            keep[pairs[:, 1].astype(int)] = False
            splits[name] = split.subset(keep)
    return splits


def unseen_mask(split: Split, *seen: Split) -> np.ndarray:
    """True for each image of `split` with no byte-identical copy in any of `seen` (e.g. validation vs train)."""
    digests = set().union(*(s.digests for s in seen))
    return np.array([d not in digests for d in split.digests], dtype=bool)


def unique_test_mask(root: Path) -> np.ndarray:
    """True for each test image (in list_split order) with no byte-identical copy in train or validation, counting
    the copies that load_splits drops: they are why the image is not unique."""
    return unseen_mask(*(list_split(root, name) for name in ("test", "train", "validation")))


def load_pixels(paths: list[Path], channels: int = 1) -> np.ndarray:
    """uint8 array (N, 48, 48, channels), decoded in threads by the shared preprocessing function."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return np.stack(list(pool.map(lambda p: load_image(p, channels=channels), paths)))
