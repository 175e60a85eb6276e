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

import numpy as np

from batch_job.analysis import DEFAULT_FACE_MODE, DEFAULT_FACE_OPTIONS, Analysis, FaceOptions, analyse
from batch_job.base import InputError, Item, usable_cpus  # noqa: F401 - usable_cpus: bench uses it from here
from batch_job.budget import READS
from batch_job.faces import FaceDetector
from batch_job.model import EmotionModel
from batch_job.results import NO_FACE, FaceResult, ImageResult

log = logging.getLogger(__name__)


def _analyse(item: Item, mode: str, detector: FaceDetector | None, size: int, channels: int,
             options: FaceOptions = DEFAULT_FACE_OPTIONS) -> Analysis:
    """Faces, or an error: a bad input must never stop the batch."""
    try:
        with READS.thread_scope():  # the bytes the reader reserved are gone with this frame
            return analyse(item.read(), mode, detector, size, channels, options)
    except InputError as error:
        return Analysis(error=str(error), transient=error.transient)
    except OSError as error:
        return Analysis(error=f"cannot read: {error.strerror or error}")
    except Exception as error:  # noqa: BLE001 - odd codecs, library bugs: anything becomes an error row
        log.warning("unexpected error on %s", item.path, exc_info=True)
        return Analysis(error=f"{type(error).__name__}: {error}")


def decoded(items: Iterable[Item], decode: Callable[[Item], Analysis], workers: int,
            lookahead: int, chunk: int = 8, max_held: int | None = None) -> Iterator[tuple[Item, Analysis]]:
    """Ordered, bounded parallel map: at most `lookahead` items, and items holding at most `max_held` bytes of
    their own (images given in memory, Item.held; at least one item always), are queued, decoding or held.

    Items go to the threads `chunk` at a time: a 48x48 crop decodes in tens of microseconds, about what one
    hand-over between threads costs, so one hand-over per item would spend as much time queueing as working.
    """
    chunk = max(1, min(chunk, lookahead))
    max_held = READS.total if max_held is None else max_held
    pending: deque[tuple[list[Item], Future]] = deque()
    in_flight = held = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            iterator = iter(items)
            while True:
                while pending and (in_flight + chunk > lookahead or held >= max_held):  # room before reading on
                    done, future = pending.popleft()
                    in_flight -= len(done)
                    held -= sum(item.held for item in done)
                    yield from zip(done, future.result(), strict=True)
                group: list[Item] = []
                for item in iterator:  # a chunk, cut short once its items hold the byte bound
                    group.append(item)
                    held += item.held
                    if len(group) == chunk or held >= max_held:
                        break
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


Named = tuple[str, str, int | None, float | None]  # (path, version, frame, time_s) of an input


def named(item: Item) -> Named:
    """What a result keeps of its input once the pixels are gone (the item itself would hold them)."""
    return item.path, item.version, item.frame, item.time_s


def _score_batch(batch: list[tuple[Named, Analysis]], model: EmotionModel) -> list[ImageResult]:
    """Run the model once on every face of a batch of images; images without faces keep their rows."""
    crops = [face.pixels for _, analysis in batch for face in analysis.faces]
    probs = model.predict(np.stack(crops)) if crops else np.empty((0, len(model.card.classes)), np.float32)
    finite = np.asarray(np.isfinite(probs).all(axis=1))  # once per batch, not per face
    results = []
    start = 0
    for (path, version, frame, time_s), analysis in batch:
        if analysis.error or not analysis.faces:
            results.append(ImageResult(path, error=analysis.error or NO_FACE, transient=analysis.transient,
                                       version=version, frame=frame, time_s=time_s))
            continue
        end = start + len(analysis.faces)
        rows, ok = probs[start:end], finite[start:end]
        start = end
        if not ok.all():
            # argmax of NaN is class 0: a confident-looking wrong row. Say so instead (a broken or badly
            # quantized graph; converter.quantize refuses such candidates, a hand-made one may not).
            broken = ", ".join(str(number) for number in np.flatnonzero(~ok) + 1)
            results.append(ImageResult(path, error=f"the emotion model gave no finite probabilities for face "
                                                   f"{broken}", version=version, frame=frame, time_s=time_s))
            continue
        faces = tuple(FaceResult(number, face.box, face.score, row, model.card.classes, face.landmarks)
                      for number, (face, row) in enumerate(zip(analysis.faces, rows, strict=True), start=1))
        results.append(ImageResult(path, faces, version=version, frame=frame, time_s=time_s))
    return results


def _face_batches(pairs: Iterable[tuple[Named, Analysis]], size: int) -> Iterator[list[tuple[Named, Analysis]]]:
    """Consecutive images grouped until they hold at least `size` faces (or the input ends)."""
    batch: list[tuple[Named, Analysis]] = []
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
            faces: str = DEFAULT_FACE_MODE, detector: FaceDetector | None = None,
            options: FaceOptions = DEFAULT_FACE_OPTIONS) -> Iterator[ImageResult]:
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
    pairs = ((named(item), analysis) for item, analysis in  # item ends here
             decoded(items, lambda item: _analyse(item, faces, detector, size, channels, options), workers,
                     lookahead=(parallel + 1) * batch_size))
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for batch in _face_batches(pairs, batch_size):
            pending.append(pool.submit(_score_batch, batch, model))
            if len(pending) > parallel:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
