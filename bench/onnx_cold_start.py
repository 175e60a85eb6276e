"""Cold start of the runtime: process start -> first prediction with batch_job (no TensorFlow). One JSON line."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

PROCESS_START = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batch_job.model import EmotionModel  # noqa: E402
from batch_job.preprocessing import load_image  # noqa: E402

started = float(sys.argv[2]) if len(sys.argv) > 2 else PROCESS_START
model = EmotionModel()
model.predict(load_image(sys.argv[1])[None])
print(json.dumps({"cold_start_seconds": time.time() - started}))
