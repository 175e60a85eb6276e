"""The core: items -> decode (thread pool, bounded look-ahead) -> batches -> model -> one row per item.

Memory stays flat: at most `lookahead` items are in flight, whatever the number of inputs. Decoding (and
S3 fetching) runs in threads while the main thread runs onnxruntime, which releases the GIL.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
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


def usable_cpus() -> int:
    """CPUs this process may run on (honours taskset and container CPU sets, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _score_batch(batch: list[tuple[Item, np.ndarray | str]], model: EmotionModel) -> list[Prediction]:
    """Run the model once on the decodable items of a batch; keep error rows in their place."""
    good = [result for _, result in batch if not isinstance(result, str)]
    probs = iter(model.predict(np.stack(good))) if good else iter(())
    return [Prediction(item.path, None, result) if isinstance(result, str) else Prediction(item.path, next(probs))
            for item, result in batch]


def _batches(pairs: Iterable, size: int) -> Iterator[list]:
    iterator = iter(pairs)
    while batch := list(islice(iterator, size)):
        yield batch


def predict(items: Iterable[Item], model: EmotionModel, batch_size: int = 256,
            workers: int | None = None) -> Iterator[Prediction]:
    """One Prediction per item, in input order.

    Several batches run at once, each on `model.threads` onnxruntime threads (one by default), so every core
    does whole batches: no core waits at a parallel-for barrier while another is busy decoding.
    """
    size, channels = model.card.input_size, model.card.channels
    cpus = usable_cpus()
    parallel = max(1, cpus // model.threads)
    workers = workers or min(32, cpus + 4)
    pairs = decoded(items, lambda item: _decode(item, size, channels), workers, lookahead=(parallel + 1) * batch_size)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for batch in _batches(pairs, batch_size):
            pending.append(pool.submit(_score_batch, batch, model))
            if len(pending) > parallel:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
