"""Where the time goes: CPU time per image of each stage of the real pipeline, on one thread.

The pipeline's own per-image and per-batch functions run one after the other on one thread (so no stage's
time is inflated by another running on the sibling core), and the stages are timed by wrapping the functions
they call (no second implementation):
reading (the file's bytes), decoding (decode_gray / decode_whole: the codec and the grayscale conversion),
preprocessing (scaling for the detector and cropping the faces), detection (YuNet and its decoder), the emotion
model (batches of 256 faces) and writing the CSV. From them, two bounds for `cores` cores:
- models only: cores / (detection + emotion), what onnxruntime alone could do;
- decode-inclusive: cores / (every stage), what the whole pipeline could do with perfect overlap.
"""
from __future__ import annotations

import io
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batch_job import analysis, pipeline  # noqa: E402
from batch_job.api import Scorer  # noqa: E402
from batch_job.base import Item  # noqa: E402
from batch_job.formats import write  # noqa: E402

STAGES = ("read", "decode", "preprocess", "detection", "emotion", "csv")


class Timer:
    """Adds each wrapped call's thread CPU time to its stage; nested calls are not double counted."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            frame = [time.thread_time(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = time.thread_time() - frame[0]
                self.seconds[stage] += spent - frame[1]
                if self._stack:
                    self._stack[-1][1] += spent
        return timed


def breakdown(paths: list[Path], faces: str = "auto", precision: str | None = None) -> dict:
    """Stage times per image (ms) and the two bounds, for these files scored one at a time on one thread."""
    from unittest import mock

    scorer = Scorer(faces=faces, precision=precision, workers=1)
    timer = Timer()
    detector = scorer.detector
    patches = [mock.patch.object(analysis, "decode_gray", timer.wrap("decode", analysis.decode_gray)),
               mock.patch.object(analysis, "decode_whole", timer.wrap("decode", analysis.decode_whole)),
               mock.patch.object(analysis, "crop_face", timer.wrap("preprocess", analysis.crop_face)),
               mock.patch.object(analysis, "_detect", timer.wrap("preprocess", analysis._detect)),
               mock.patch.object(scorer.model, "predict", timer.wrap("emotion", scorer.model.predict))]
    if detector is not None:
        patches.append(mock.patch.object(detector, "detect", timer.wrap("detection", detector.detect)))
    items = [Item(path.name, timer.wrap("read", path.read_bytes)) for path in paths]
    size, channels = scorer.model.card.input_size, scorer.model.card.channels
    for patch in patches:
        patch.start()
    try:
        pairs = [(pipeline.named(item), pipeline._analyse(item, faces, detector, size, channels)) for item in items]
        results = [result for batch in pipeline._face_batches(pairs, 256)
                   for result in pipeline._score_batch(batch, scorer.model)]
        timer.wrap("csv", lambda: write(results, io.StringIO()))()
    finally:
        for patch in patches:
            patch.stop()
    images = len(paths)
    per_image = {stage: timer.seconds[stage] / images for stage in STAGES}
    models = per_image["detection"] + per_image["emotion"]
    total = sum(per_image.values())
    cpus = pipeline.usable_cpus()
    return {"images": images, "faces": sum(len(r.faces) for r in results), "cpus": cpus, "faces_mode": faces,
            "precision": Path(str(scorer.model.path)).name,
            "cpu_ms_per_image": {k: round(v * 1000, 3) for k, v in per_image.items()},
            "share_of_time": {k: round(v / total, 3) for k, v in per_image.items()},
            "bound_models_only": round(cpus / models, 1) if models else None,
            "bound_decode_inclusive": round(cpus / total, 1)}


if __name__ == "__main__":
    import json

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "work" / "photos"
    print(json.dumps(breakdown(sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:300]),
                     indent=2))
