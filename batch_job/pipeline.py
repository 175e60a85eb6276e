"""The core: items -> decode (thread pool, bounded look-ahead) -> batches -> model -> one row per item.

Memory stays flat: at most `lookahead` items are in flight, whatever the number of inputs. Decoding (and
S3 fetching) runs in threads while the main thread runs onnxruntime, which releases the GIL.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from batch_job.model import EmotionModel
from batch_job.preprocessing import ImageError, load_image
from batch_job.sources import Item


@dataclass(frozen=True)
class Prediction:
    path: str
    probabilities: np.ndarray | None  # None when the item could not be scored
    error: str = ""


def _decode(item: Item, size: int, channels: int) -> np.ndarray | str:
    """Pixels, or an error message: a bad input must never stop the batch."""
    try:
        return load_image(item.read(), size, channels)
    except ImageError as error:
        return str(error)
    except OSError as error:
        return f"cannot read: {error.strerror or error}"
    except Exception as error:  # noqa: BLE001 - S3 errors, odd codecs: anything becomes an error row
        return f"{type(error).__name__}: {error}"


def decoded(items: Iterable[Item], decode: Callable[[Item], np.ndarray | str], workers: int,
            lookahead: int) -> Iterator[tuple[Item, np.ndarray | str]]:
    """Ordered, bounded parallel map: at most `lookahead` decodes are queued or held at any time."""
    pending: deque[tuple[Item, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            pending.append((item, pool.submit(decode, item)))
            if len(pending) >= lookahead:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def predict(items: Iterable[Item], model: EmotionModel, batch_size: int = 256,
            workers: int | None = None) -> Iterator[Prediction]:
    """One Prediction per item, in input order."""
    size, channels = model.card.input_size, model.card.channels
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    buffer = np.empty((batch_size, size, size, channels), dtype=np.uint8)
    batch: list[tuple[Item, np.ndarray | str]] = []

    def flush() -> Iterator[Prediction]:
        good = [i for i, (_, result) in enumerate(batch) if not isinstance(result, str)]
        for slot, i in enumerate(good):
            buffer[slot] = batch[i][1]
        probs = model.predict(buffer[: len(good)]) if good else None
        slot_of = {i: slot for slot, i in enumerate(good)}
        for i, (item, result) in enumerate(batch):
            if isinstance(result, str):
                yield Prediction(item.path, None, result)
            else:
                yield Prediction(item.path, probs[slot_of[i]])
        batch.clear()

    for pair in decoded(items, lambda item: _decode(item, size, channels), workers, lookahead=2 * batch_size):
        batch.append(pair)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
