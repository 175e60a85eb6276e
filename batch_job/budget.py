"""Memory budgets, in bytes, shared by every thread that reads or decodes an input.

Thirty-two S3 fetch threads each decoding a 7000x7000 RGBA PNG would need 7 GB at once; with the budgets
they take turns: a thread reserves what its input will cost before allocating it and waits while others
hold the rest. Two budgets, always taken in the same order, so no two threads can wait on each other:
- READS: the bytes of an input, reserved by the reader once it knows the size (file size, S3
  ContentLength) and held until the input has been analysed (a quarter of the total);
- DECODES: the pixels of a decode, reserved from the image's header before decoding (three quarters).
An input bigger than a whole budget still runs, alone. So the memory that inputs in flight hold stays under
the total (DECODE_BUDGET_MB, default 1024) plus the largest single input, whatever the inputs and workers.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_BUDGET_MB = 1024
_reserved = threading.local()  # read reservations of the current thread, released by the pipeline


class MemoryBudget:
    def __init__(self, total_bytes: int):
        self.total = max(1, int(total_bytes))
        self.used = 0
        self.peak = 0
        self._changed = threading.Condition()

    def acquire(self, amount: int) -> int:
        """Wait until `amount` bytes fit (or nothing else is held), then hold them; returns what was held."""
        amount = max(0, int(amount))
        with self._changed:
            while self.used and self.used + amount > self.total:
                self._changed.wait()
            self.used += amount
            self.peak = max(self.peak, self.used)
        return amount

    def release(self, amount: int) -> None:
        with self._changed:
            self.used = max(0, self.used - int(amount))
            self._changed.notify_all()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        held = self.acquire(amount)
        try:
            yield
        finally:
            self.release(held)

    def reserve_for_thread(self, amount: int) -> None:
        """Hold `amount` until this thread calls release_thread() (a reader's bytes, kept while analysed)."""
        _reserved.held = getattr(_reserved, "held", 0) + self.acquire(amount)

    def release_thread(self) -> None:
        self.release(getattr(_reserved, "held", 0))
        _reserved.held = 0

    @contextmanager
    def thread_scope(self) -> Iterator[None]:
        """Whatever a reader reserves for this thread inside the block is released when it ends: every
        caller that reads an input (the pipeline, --annotate, report) reads inside one."""
        try:
            yield
        finally:
            self.release_thread()

    def resize(self, total_bytes: int) -> None:
        with self._changed:
            self.total = max(1, int(total_bytes))
            self._changed.notify_all()


def total_bytes() -> int:
    try:
        megabytes = float(os.environ.get("DECODE_BUDGET_MB") or DEFAULT_BUDGET_MB)
    except ValueError:
        megabytes = DEFAULT_BUDGET_MB
    return int(max(megabytes, 16) * 1024 * 1024)


def configure(megabytes: int) -> None:
    """Set the total (Settings.decode_budget_mb): a quarter for reads, the rest for decodes, and make freed
    pixel blocks go back to the system. Process-wide, like the memory it bounds: called when a Scorer is made,
    never on import."""
    return_freed_memory_to_the_system()
    total = int(megabytes * 1024 * 1024)
    READS.resize(total // 4)
    DECODES.resize(total - total // 4)


def return_freed_memory_to_the_system(threshold: int = 8 * 1024 * 1024) -> bool:
    """Make glibc serve allocations of `threshold` bytes and more (Pillow's 16 MB pixel blocks) with mmap, so
    they go back to the system when freed. Without it, each decode thread's malloc arena keeps the high-water
    mark of the biggest image it decoded, and 32 threads add up to gigabytes the budget never sees (measured:
    1.6 GB RSS for six 49 MP PNGs at a 768 MB decode budget). A no-op where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD; a fixed value also stops glibc raising it
    except (OSError, AttributeError):
        return False


READS = MemoryBudget(total_bytes() // 4)
DECODES = MemoryBudget(total_bytes() - total_bytes() // 4)
