"""Find the faces in photos and score their emotion with onnxruntime. `from batch_job import Scorer` (the
library API, batch_job.api) or `emotion-batch run ./photos` (the command line, batch_job.cli)."""
from __future__ import annotations

__version__ = "0.3.0"


def __getattr__(name: str):
    """Scorer and score load onnxruntime: imported on first use, so `python -m batch_job --help` stays fast."""
    if name in ("Scorer", "score"):
        from batch_job import api

        return getattr(api, name)
    raise AttributeError(f"module 'batch_job' has no attribute {name!r}")
