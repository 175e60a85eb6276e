"""How a run scores: face mode, precision, output format, batch size, workers, models and memory budget, parsed
and checked once per entry point (command line, Python API, Lambda, bulk, Batch) into one Settings.

Every value comes from an argument, else the environment (FACES, PRECISION, OUTPUT_FORMAT, MODEL_PATH,
DETECTOR_PATH, DECODE_BUDGET_MB), else the default; a value that names nothing valid is a UsageError that
says which setting and what it accepts, wherever it came from (PRECISION=int9 is refused like --precision
int9).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_job.base import UsageError
from batch_job.formats import CSV, OutputFormat
from batch_job.formats import get as get_format

FACE_MODES = ("auto", "detect", "whole")
DEFAULT_FACE_MODE = "auto"
PRECISIONS = ("fp32", "int8", "auto")
MAX_BATCH_SIZE = 4096  # 4096 faces of 48x48 floats are 38 MB per call; more gains nothing
MAX_WORKERS = 256
MIN_BUDGET_MB = 16
MAX_FACES = 1000  # per image: bounds the memory of one image's crops whatever the picture
DEFAULT_BUDGET_MB = 1024


def face_mode(value: object, name: str = "faces") -> str:
    text = str(value).strip().lower()
    if text not in FACE_MODES:
        raise UsageError(f"{name} must be one of {', '.join(FACE_MODES)}, not {value!r}")
    return text


def precision(value: object, name: str = "precision") -> str:
    text = str(value).strip().lower()
    if text not in PRECISIONS:
        raise UsageError(f"{name} must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return text


def bounded(value: object, name: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UsageError(f"{name} must be an integer from 1 to {most}, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{name} must be an integer from 1 to {most}, not {value!r}") from None
    if not 1 <= number <= most:
        raise UsageError(f"{name} must be an integer from 1 to {most}, not {value!r}")
    return number


def budget_mb(value: object, name: str = "DECODE_BUDGET_MB") -> int:
    try:
        number = float(str(value))
    except ValueError:
        raise UsageError(f"{name} must be a number of megabytes (at least {MIN_BUDGET_MB}), not {value!r}") from None
    if not number >= MIN_BUDGET_MB:
        raise UsageError(f"{name} must be at least {MIN_BUDGET_MB} (megabytes), not {value!r}")
    return int(number)


@dataclass(frozen=True)
class Settings:
    faces: str = DEFAULT_FACE_MODE
    precision: str = "auto"
    output_format: OutputFormat = CSV
    batch_size: int = 256
    workers: int | None = None  # decode/fetch threads; None: CPUs + 4 (32 for S3 sources)
    model: Path | None = None  # None: the shipped emotion model
    detector: Path | None = None  # None: the shipped face detector
    decode_budget_mb: int = DEFAULT_BUDGET_MB
    min_face_size: int | None = None  # px (longer side of the box); None: analysis.default_min_face(image)
    threshold: float = 0.6  # the detector's score a face needs (batch_job.faces.SCORE_THRESHOLD)
    max_faces: int = MAX_FACES  # per image, largest first
    landmarks: bool = False  # the five landmarks in the output (ten more CSV columns; nested in JSON Lines)
    fps: float = 1.0  # frames sampled a second from videos (batch_job.video)

    def __post_init__(self) -> None:
        face_mode(self.faces)
        precision(self.precision)
        if not isinstance(self.output_format, OutputFormat):
            object.__setattr__(self, "output_format", get_format(self.output_format))
        bounded(self.batch_size, "batch_size", MAX_BATCH_SIZE)
        if self.workers is not None:
            bounded(self.workers, "workers", MAX_WORKERS)
        budget_mb(self.decode_budget_mb, "decode_budget_mb")
        if self.min_face_size is not None:
            bounded(self.min_face_size, "min_face_size", 100_000)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold < 1:
            raise UsageError(f"threshold must be a number between 0 and 1, not {self.threshold!r}")
        bounded(self.max_faces, "max_faces", MAX_FACES)
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not 0 < self.fps <= 60:
            raise UsageError(f"fps must be a number above 0, at most 60, not {self.fps!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: Any) -> Settings:
        """Arguments given (None = not given) over the environment over the defaults."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field, variable, parse in (("faces", "FACES", face_mode), ("precision", "PRECISION", precision),
                                       ("output_format", "OUTPUT_FORMAT", get_format),
                                       ("model", "MODEL_PATH", Path), ("detector", "DETECTOR_PATH", Path),
                                       ("decode_budget_mb", "DECODE_BUDGET_MB", budget_mb)):
            text = (env.get(variable) or "").strip()
            if text:
                values[field] = parse(text, variable) if parse in (face_mode, precision, budget_mb) else parse(text)
        values.update({key: value for key, value in given.items() if value is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        for key in ("model", "detector"):
            if values.get(key) is not None:
                values[key] = Path(str(values[key]))
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
