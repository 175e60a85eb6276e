"""What scoring produces: one ImageResult per input, holding a FaceResult per face, and the Totals of a run.

The class names come from the model's card (the product's four by default), so a result carries them with
its probabilities and nothing downstream assumes four.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no numpy import for the command line's light commands (--help, cost, submit)
    import numpy as np

CLASSES = ("happy", "neutral", "sad", "surprise")  # the product's classes, in the model's output order
NO_FACE = "no face found"  # the error text of an image without a face: a row, not a failure


@dataclass(frozen=True)
class FaceResult:
    """One scored face: where it is and what the model says."""
    number: int  # 1, 2, ... largest first
    box: tuple[int, int, int, int]  # left, top, width, height in displayed pixels
    score: float | None  # the detector's score; None when the image was scored whole
    probabilities: np.ndarray  # one per class, in `classes` order
    classes: tuple[str, ...] = field(default=CLASSES, compare=False)
    landmarks: tuple[tuple[float, float], ...] | None = None  # right eye, left eye, nose, right/left mouth


    @property
    def emotion(self) -> str:
        return self.classes[int(self.probabilities.argmax())]

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())

    def as_dict(self) -> dict[str, float]:
        """{'happy': 0.91, 'neutral': 0.04, ...}"""
        return {name: float(p) for name, p in zip(self.classes, self.probabilities, strict=True)}


@dataclass(frozen=True)
class ImageResult:
    """Everything about one input: its faces, or the reason it has none."""
    path: str
    faces: tuple[FaceResult, ...] = ()
    error: str = ""  # why it could not be scored ('' when it was, NO_FACE when it holds no face)
    transient: bool = False  # the failure may pass on a retry (S3 throttling, 5xx)
    version: str = ""  # which upload of the object was scored (ETag, version id or event sequencer), if known
    frame: int | None = None  # a video's frame (its index) and time in seconds; None for images
    time_s: float | None = None

    @property
    def failed(self) -> bool:
        """A real error (unreadable, corrupt...); an image without a face is not one."""
        return bool(self.error) and self.error != NO_FACE


@dataclass
class Totals:
    """What a run did, for the summary line: N images, F faces, Z without a face, E errors, S skipped."""
    images: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    skipped: int = 0  # files left out because their names are not image names
    skipped_videos: int = 0  # videos left out: no video decoder installed (the video extra)

    @classmethod
    def of(cls, results: Iterable[ImageResult]) -> Totals:
        totals = cls()
        for result in results:
            totals.add(result)
        return totals

    def add(self, result: ImageResult) -> None:
        self.images += 1
        self.faces += len(result.faces)
        self.no_face += not result.faces and not result.failed
        self.errors += result.failed

    @property
    def rows(self) -> int:
        """Records written: one per face, one per image without a face, one per error."""
        return self.faces + self.no_face + self.errors

    def __str__(self) -> str:
        parts = [counted(self.images, "image"), counted(self.faces, "face"), f"{self.no_face} without a face",
                 counted(self.errors, "error"), f"{self.skipped} skipped (not images)"]
        if self.skipped_videos:
            parts.append(f"{counted(self.skipped_videos, 'video')} skipped (pip install "
                         "'emotion-batch-scoring[video]' to score videos)")
        return ", ".join(parts)


def counted(n: int, noun: str) -> str:
    """'1 image', '2 images'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
