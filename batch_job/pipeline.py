"""The core: items -> decode and find faces (thread pool, bounded look-ahead) -> batches of faces -> model
-> one ImageResult per item, in input order.

Memory stays flat: at most `lookahead` items are in flight, whatever the number of inputs. Decoding, face
detection (and S3 fetching) run in threads while other threads run the emotion model; onnxruntime releases
the GIL. The emotion model sees batches of faces gathered from many images, so a folder of single-face photos
is scored in full batches, and a group photo's faces go through together.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np

from batch_job.analysis import DEFAULT_FACE_MODE, NO_FACE, Analysis, analyse
from batch_job.base import InputError, Item, usable_cpus  # noqa: F401 - usable_cpus: bench uses it from here
from batch_job.budget import READS
from batch_job.faces import FaceDetector
from batch_job.model import EmotionModel
from batch_job.preprocessing import CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceResult:
    """One scored face: where it is and what the model says."""
    number: int  # 1, 2, ... largest first
    box: tuple[int, int, int, int]  # left, top, width, height in displayed pixels
    score: float | None  # the detector's score; None when the image was scored whole
    probabilities: np.ndarray  # one per class, in CLASSES order

    @property
    def emotion(self) -> str:
        return CLASSES[int(self.probabilities.argmax())]

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())

    def as_dict(self) -> dict[str, float]:
        """{'happy': 0.91, 'neutral': 0.04, ...}"""
        return {name: float(p) for name, p in zip(CLASSES, self.probabilities, strict=True)}


@dataclass(frozen=True)
class ImageResult:
    """Everything about one input: its faces, or the reason it has none."""
    path: str
    faces: tuple[FaceResult, ...] = ()
    error: str = ""  # why it could not be scored ('' when it was, NO_FACE when it holds no face)
    transient: bool = False  # the failure may pass on a retry (S3 throttling, 5xx)

    @property
    def failed(self) -> bool:
        """A real error (unreadable, corrupt...); an image without a face is not one."""
        return bool(self.error) and self.error != NO_FACE


def _analyse(item: Item, mode: str, detector: FaceDetector | None, size: int, channels: int) -> Analysis:
    """Faces, or an error: a bad input must never stop the batch."""
    try:
        return analyse(item.read(), mode, detector, size, channels)
    except InputError as error:
        return Analysis(error=str(error), transient=error.transient)
    except OSError as error:
        return Analysis(error=f"cannot read: {error.strerror or error}")
    except Exception as error:  # noqa: BLE001 - odd codecs, library bugs: anything becomes an error row
        log.warning("unexpected error on %s", item.path, exc_info=True)
        return Analysis(error=f"{type(error).__name__}: {error}")
    finally:
        READS.release_thread()  # the bytes the reader reserved are gone with this frame


def decoded(items: Iterable[Item], decode: Callable[[Item], Analysis], workers: int,
            lookahead: int, chunk: int = 8) -> Iterator[tuple[Item, Analysis]]:
    """Ordered, bounded parallel map: at most `lookahead` items are queued, decoding or held at any time.

    Items go to the threads `chunk` at a time: a 48x48 crop decodes in tens of microseconds, about what one
    hand-over between threads costs, so one hand-over per item would spend as much time queueing as working.
    """
    chunk = max(1, min(chunk, lookahead))
    pending: deque[tuple[list[Item], Future]] = deque()
    in_flight = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            iterator = iter(items)
            while True:
                while pending and in_flight + chunk > lookahead:  # room for a whole chunk before reading on
                    done, future = pending.popleft()
                    in_flight -= len(done)
                    yield from zip(done, future.result(), strict=True)
                group = list(islice(iterator, chunk))
                if not group:
                    break
                pending.append((group, pool.submit(_decode_all, decode, group)))
                in_flight += len(group)
            while pending:
                done, future = pending.popleft()
                yield from zip(done, future.result(), strict=True)
        finally:  # interrupted (Ctrl-C, SIGTERM, a failed output): do not decode what nobody will read
            for _, future in pending:
                future.cancel()


def _decode_all(decode: Callable[[Item], Analysis], group: list[Item]) -> list[Analysis]:
    return [decode(item) for item in group]


def _score_batch(batch: list[tuple[Item, Analysis]], model: EmotionModel) -> list[ImageResult]:
    """Run the model once on every face of a batch of images; images without faces keep their rows."""
    crops = [face.pixels for _, analysis in batch for face in analysis.faces]
    probs = iter(model.predict(np.stack(crops))) if crops else iter(())
    results = []
    for item, analysis in batch:
        if analysis.error or not analysis.faces:
            results.append(ImageResult(item.path, error=analysis.error or NO_FACE, transient=analysis.transient))
            continue
        faces = tuple(FaceResult(number, face.box, face.score, next(probs))
                      for number, face in enumerate(analysis.faces, start=1))
        results.append(ImageResult(item.path, faces))
    return results


def _face_batches(pairs: Iterable[tuple[Item, Analysis]], size: int) -> Iterator[list[tuple[Item, Analysis]]]:
    """Consecutive images grouped until they hold at least `size` faces (or the input ends)."""
    batch: list[tuple[Item, Analysis]] = []
    faces = 0
    for pair in pairs:
        batch.append(pair)
        faces += len(pair[1].faces)
        if faces >= size or len(batch) >= size:
            yield batch
            batch, faces = [], 0
    if batch:
        yield batch


def predict(items: Iterable[Item], model: EmotionModel, batch_size: int = 256, workers: int | None = None,
            faces: str = DEFAULT_FACE_MODE, detector: FaceDetector | None = None) -> Iterator[ImageResult]:
    """One ImageResult per item, in input order.

    faces: 'auto', 'detect' or 'whole' (batch_job.analysis). The detector is loaded here when a mode needs
    one and none is given. Several batches run at once, each on `model.threads` onnxruntime threads (one by
    default), so every core does whole batches: no core waits at a parallel-for barrier.
    """
    if faces != "whole" and detector is None:
        detector = FaceDetector()
    size, channels = model.card.input_size, model.card.channels
    cpus = usable_cpus()
    parallel = max(1, cpus // model.threads)
    workers = workers or min(32, cpus + 4)
    pairs = decoded(items, lambda item: _analyse(item, faces, detector, size, channels), workers,
                    lookahead=(parallel + 1) * batch_size)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for batch in _face_batches(pairs, batch_size):
            pending.append(pool.submit(_score_batch, batch, model))
            if len(pending) > parallel:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
