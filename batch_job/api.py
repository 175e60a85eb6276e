"""The library API: find faces and score their emotions from Python, with the models loaded once.

    from batch_job import Scorer

    scorer = Scorer()                                   # loads the emotion model and the face detector once
    for result in scorer.score(["photos/", "s3://bucket/prefix/"]):   # streams: one ImageResult per image
        for face in result.faces:
            print(result.path, face.box, face.emotion, face.confidence)

    result = scorer.score_image(PIL.Image.open("me.jpg"))            # or a numpy array, or the file's bytes

Results are batch_job.pipeline.ImageResult (path, faces, error) holding FaceResult (number, box, score,
emotion, confidence, probabilities). Memory stays bounded however many inputs stream through. No TensorFlow.
The command line, the Lambda handler and AWS Batch all score through Scorer.score_items: there is no second
code path.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from batch_job.analysis import DEFAULT_FACE_MODE, FACE_MODES
from batch_job.base import Item
from batch_job.faces import FaceDetector, default_detector_path
from batch_job.model import EmotionModel, default_model_path
from batch_job.pipeline import FaceResult, ImageResult, predict
from batch_job.precision import choose
from batch_job.sources import open_sources

InMemory = Image.Image | np.ndarray | bytes


class Scorer:
    """The models, loaded once and reused for any number of calls (threads may share one Scorer)."""

    def __init__(self, model: str | os.PathLike | None = None, faces: str = DEFAULT_FACE_MODE,
                 batch_size: int = 256, workers: int | None = None, detector: str | os.PathLike | None = None,
                 precision: str | None = None):
        """precision: 'fp32', 'int8' or 'auto' (default: $PRECISION, else auto: INT8 where this CPU runs it
        accurately, batch_job.precision)."""
        _check_mode(faces)  # before loading anything
        self._bind(EmotionModel(choose(precision, Path(model) if model else default_model_path())),
                   FaceDetector(choose(precision, Path(detector) if detector else default_detector_path(),
                                       required=False)) if faces != "whole" else None,
                   faces, batch_size, workers)

    @classmethod
    def from_loaded(cls, model: EmotionModel, detector: FaceDetector | None, faces: str = DEFAULT_FACE_MODE,
                    batch_size: int = 256, workers: int | None = None) -> Scorer:
        """A Scorer over models already loaded (a Lambda container keeps its own across invocations)."""
        scorer = cls.__new__(cls)
        scorer._bind(model, detector, faces, batch_size, workers)
        return scorer

    def _bind(self, model: EmotionModel, detector: FaceDetector | None, faces: str, batch_size: int,
              workers: int | None) -> None:
        _check_mode(faces)
        if faces != "whole" and detector is None:
            raise ValueError(f"face mode {faces!r} needs a face detector")
        self.model, self.detector = model, detector if faces != "whole" else None
        self.faces, self.batch_size, self.workers = faces, batch_size, workers

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.card.classes

    def score_items(self, items: Iterable[Item], workers: int | None = None) -> Iterator[ImageResult]:
        """The core every entry point uses: Items (a path to show and a way to read the bytes) in, one
        ImageResult per item out, in order, streaming."""
        return predict(items, self.model, self.batch_size, workers or self.workers, self.faces, self.detector)

    def score(self, sources: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[ImageResult]:
        """Files, folders (recursive) and s3:// URLs, as on the command line."""
        names = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(s) for s in sources]
        return self.score_items(open_sources(names).items())

    def score_images(self, images: Iterable[InMemory], names: Iterable[str] | None = None) -> Iterator[ImageResult]:
        """Images already in memory: PIL images, numpy arrays (H x W gray, H x W x 3 RGB, H x W x 4 RGBA; uint8
        0-255 or floats in [0, 1]) or encoded bytes. `names` label the results (default: their index)."""
        labels = iter(names) if names is not None else (str(i) for i in range(1 << 62))
        return self.score_items(Item(next(labels), _reader(image)) for image in images)

    def score_image(self, image: InMemory, name: str = "image") -> ImageResult:
        """One image in memory -> its result."""
        return next(self.score_images([image], [name]))


def _check_mode(faces: str) -> None:
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {', '.join(FACE_MODES)}, not {faces!r}")


def _reader(image: InMemory):
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return lambda: data
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
            if array.ndim == 3:  # colour floats: to 8 bits (Pillow has no float RGB mode)
                array = np.clip(np.rint(array * (255.0 if array.max(initial=0) <= 1 else 1.0)), 0, 255).astype(np.uint8)
        elif array.dtype != np.uint8:
            array = array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8)
        pixels = Image.fromarray(array)
        return lambda: pixels
    if isinstance(image, Image.Image):
        return lambda: image
    raise TypeError(f"an image must be a PIL image, a numpy array or bytes, not {type(image).__name__}")


def score(sources: str | os.PathLike | Iterable[str | os.PathLike], **options) -> list[ImageResult]:
    """One call for a quick look: load the models, score everything, return the list of results."""
    return list(Scorer(**options).score(sources))


__all__ = ["Scorer", "score", "ImageResult", "FaceResult"]
