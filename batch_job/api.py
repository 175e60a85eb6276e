"""The library API: find faces and score their emotions from Python, with the models loaded once.

    from batch_job import Scorer

    scorer = Scorer()                                   # loads the emotion model and the face detector once
    for result in scorer.score(["photos/", "s3://bucket/prefix/"]):   # streams: one ImageResult per image
        for face in result.faces:
            print(result.path, face.box, face.emotion, face.confidence)

    result = scorer.score_image("me.jpg")               # or a PIL image, a numpy array, the file's bytes

Results are batch_job.results.ImageResult (path, faces, error) holding FaceResult (number, box, score,
emotion, confidence, probabilities). Bad input is never an exception: each input that cannot be scored
(a corrupt file, a 5-channel array, None) gets a result whose `error` says why, and the stream goes on.
Memory stays bounded however many inputs stream through, in-memory images included (the look-ahead counts
their bytes). No TensorFlow. The command line, the Lambda handlers and AWS Batch all score through
Scorer.score_items: there is no second code path.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from batch_job import budget, precision
from batch_job.analysis import FaceOptions
from batch_job.base import ImageError, Item
from batch_job.faces import FaceDetector, default_detector_path
from batch_job.model import EmotionModel, default_model_path
from batch_job.pipeline import predict
from batch_job.results import FaceResult, ImageResult
from batch_job.settings import Settings
from batch_job.sources import open_sources

InMemory = Image.Image | np.ndarray | bytes | str | os.PathLike


class Scorer:
    """The models, loaded once and reused for any number of calls (threads may share one Scorer)."""

    def __init__(self, model: str | os.PathLike | None = None, faces: str | None = None,
                 batch_size: int | None = None, workers: int | None = None,
                 detector: str | os.PathLike | None = None, precision: str | None = None,
                 min_face_size: int | None = None, threshold: float | None = None, max_faces: int | None = None,
                 settings: Settings | None = None):
        """Each argument left out comes from the environment as on the command line (FACES, PRECISION,
        MODEL_PATH, DETECTOR_PATH, DECODE_BUDGET_MB), else the default: faces 'auto', precision 'auto' (INT8
        where this CPU runs it accurately, batch_job.precision), batch size 256. A value that names nothing
        valid raises UsageError (a ValueError) before anything loads. `settings` gives them all at once.
        min_face_size (px, the box's longer side; default 2% of the image's shorter side, at least 16), threshold
        (the detector's score, default 0.6) and max_faces (per image, largest first, default 1,000) say what
        counts as a face; results carry each face's five landmarks."""
        given = {"model": model, "faces": faces, "batch_size": batch_size, "workers": workers,
                 "detector": detector, "precision": precision, "min_face_size": min_face_size,
                 "threshold": threshold, "max_faces": max_faces}
        if settings is None:
            settings = Settings.from_env(None, **given)
        elif any(value is not None for value in given.values()):
            settings = settings.replace(**{k: v for k, v in given.items() if v is not None})
        self.settings = settings
        budget.configure(settings.decode_budget_mb)
        self.model, self.detector = load_models(settings)
        from batch_job.video import VideoStats

        self.video_stats = VideoStats()  # videos skipped (no decoder) and scored, over this Scorer's life

    @property
    def faces(self) -> str:
        return self.settings.faces

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.card.classes

    def score_items(self, items: Iterable[Item], workers: int | None = None) -> Iterator[ImageResult]:
        """The core every entry point uses: Items (a path to show and a way to read the bytes) in, one
        ImageResult per item out, in order, streaming."""
        from batch_job.video import expand

        return predict(expand(items, self.settings.fps, self.video_stats), self.model, self.settings.batch_size,
                       workers or self.settings.workers, self.settings.faces, self.detector, self.face_options)

    @property
    def face_options(self) -> FaceOptions:
        s = self.settings
        return FaceOptions(s.min_face_size, s.threshold, s.max_faces)

    def score(self, sources: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[ImageResult]:
        """Files, folders (recursive) and s3:// URLs, as on the command line."""
        names = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(s) for s in sources]
        return self.score_items(open_sources(names).items())

    def score_images(self, images: Iterable[InMemory | Any], names: Iterable[str] | None = None
                     ) -> Iterator[ImageResult]:
        """Images: PIL images, numpy arrays (H x W gray, H x W x 1, x 3 RGB or x 4 RGBA; uint8, uint16 gray, or
        floats in [0, 1]), encoded bytes, or file paths. `names` label the results (default: their index, or
        the path). One result per image, in order; an image that cannot be scored gets its error."""
        labels = iter(names) if names is not None else None
        return self.score_items(_item(image, next(labels) if labels is not None else _label(image, index))
                                for index, image in enumerate(images))

    def score_image(self, image: InMemory, name: str | None = None) -> ImageResult:
        """One image -> its result."""
        return next(self.score_images([image], None if name is None else [name]))


def load_models(settings: Settings) -> tuple[EmotionModel, FaceDetector | None]:
    """The one way models load (CLI, API, Lambda, bulk, Batch): each graph once, in the precision asked."""
    model = precision.load(settings.model or default_model_path(), settings.precision, EmotionModel,
                           lambda m: m.card.properties)
    detector = None
    if settings.faces != "whole":
        detector = precision.load(settings.detector or default_detector_path(), settings.precision, FaceDetector,
                                  lambda d: d.properties, required=False)
    return model, detector


def _label(image: object, index: int) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else str(index)


def _item(image: object, name: str) -> Item:
    """An Item whose read() checks and converts the image: what cannot be scored fails that item, not the stream."""
    if isinstance(image, (str, os.PathLike)):
        from batch_job.local import display_name, read_file

        path = os.fspath(image)
        return Item(name if name != path else display_name(path), lambda: read_file(path))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return Item(name, lambda: data, held=len(data))
    if isinstance(image, np.ndarray):
        return Item(name, _array_reader(image), held=int(image.nbytes))
    if isinstance(image, Image.Image):
        return Item(name, lambda: image, held=image.width * image.height * len(image.getbands()))
    kind = type(image).__name__

    def refuse() -> bytes:
        raise ImageError(f"not an image: expected a PIL image, a numpy array, bytes or a file path, not {kind}")
    return Item(name, refuse)


def _array_reader(array: np.ndarray) -> Callable[[], Image.Image]:
    return lambda: array_image(array)


def array_image(array: np.ndarray) -> Image.Image:
    """A numpy array -> a PIL image the preprocessing takes, or ImageError saying what is wrong with it."""
    if array.dtype.kind not in "uif":
        raise ImageError(f"array pixels must be integers or floats, not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"array shape {array.shape}: an image is H x W (gray), H x W x 1, H x W x 3 (RGB) or "
                         "H x W x 4 (RGBA)")
    if array.size == 0:
        raise ImageError(f"empty image (array shape {array.shape})")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageError("image has NaN or infinite pixels")
        if array.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
        scale = 255.0 if float(array.max()) <= 1 else 1.0  # colour floats: to 8 bits (no float RGB in Pillow)
        return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8))
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ImageError(f"negative pixel values (down to {low}): pixels are 0-255 (or 0-65535 for 16-bit gray)")
    if high <= 255:
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if array.ndim == 2 and high <= 65535:
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))
    raise ImageError(f"pixel values up to {high}: colour pixels are 0-255, 16-bit gray 0-65535")


def score(sources: str | os.PathLike | Iterable[str | os.PathLike], **options) -> list[ImageResult]:
    """One call for a quick look: load the models, score everything, return the list of results."""
    return list(Scorer(**options).score(sources))


__all__ = ["Scorer", "score", "ImageResult", "FaceResult", "load_models"]
