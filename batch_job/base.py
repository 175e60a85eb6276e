"""What every other module shares: the input Item, what counts as an image name, and one hierarchy of errors
(every exception this package raises is an Error). A leaf: imports nothing of ours.

Two kinds of failure, never mixed:
- BatchJobError and its subclasses stop a run (bad model, unreadable source, unwritable destination): the CLI
  prints the message on one line and exits 1; the Lambda handler lets it fail the invocation.
- InputError and its subclasses concern one input: the message goes into that input's CSV row and the batch
  goes on. `transient` marks failures worth retrying later (S3 throttling, 5xx), which the SQS path hands
  back to the queue instead of writing a permanent error row.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

S3_SCHEME = "s3://"
MAX_KEY_BYTES = 1024  # S3's limit on an object key
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm"})


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether a file found while walking a folder (or listing a prefix) counts as an image to score."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def is_video_path(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def is_input_path(path: str | os.PathLike) -> bool:
    """An image or a video: what a walk or a listing hands on (videos become frames, batch_job.video)."""
    return is_image_path(path) or is_video_path(path)


def usable_cpus() -> int:
    """CPUs this process may run on (honours taskset and container CPU sets, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def models_dir() -> Path:
    """The shipped models: inside the installed package (batch_job/models/, from the wheel), else the
    repository's models/ (a clone)."""
    packaged = Path(__file__).resolve().parent / "models"
    return packaged if (packaged / "emotion.onnx").is_file() else Path(__file__).resolve().parent.parent / "models"


def is_s3_url(text: str) -> bool:
    """The one test for the s3:// scheme (sources, destinations, events, reports)."""
    return text.startswith(S3_SCHEME)


class Error(Exception):
    """The root of every exception batch_job raises: `except batch_job.base.Error` catches them all."""


class BatchJobError(Error):
    """A failure of the whole run (exit status 1), with a one-line message for people."""


class UsageError(BatchJobError, ValueError):
    """An argument or setting that names nothing valid (a bad --format, PRECISION, FACES): exit status 2."""


class SourceError(BatchJobError):
    """A source that cannot be listed at all (missing folder, no permission, bad URL)."""


class DestinationError(BatchJobError):
    """The output cannot be written (bad path, no permission, full disk, upload refused)."""


class ModelError(BatchJobError):
    """The model file is missing, unreadable or not the model this service expects."""


class ConfigError(BatchJobError, ValueError):
    """The service is deployed or called without the settings it needs."""


class InputError(Error):
    """One input that cannot be scored; the message is meant for the CSV's error column."""

    transient = False


class ImageError(InputError, ValueError):
    """The bytes are not an image we can decode (empty, truncated, unknown format, too large, NaN pixels)."""


class ReadError(InputError):
    """The bytes cannot be read (not a regular file, no permission, too large, object missing)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Item:
    """One input: what the CSV's path column shows, and how to read its bytes (only when the pipeline asks)."""
    path: str
    read: Callable[[], Any]  # the bytes (from the library API, possibly an image already in memory)
    held: int = 0  # bytes this item already holds in memory before it is read (an array given to the API)
    version: str = ""  # which upload of an S3 object this is (ETag, version id, event sequencer), if known
    local: str | None = None  # the file on this machine, when there is one (videos are decoded from it)
    frame: int | None = None  # a video's frame: its index in the video
    time_s: float | None = None  # and its time, in seconds
