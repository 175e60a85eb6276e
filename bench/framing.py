"""How to crop a detected face so it looks like the training crops: measured, not guessed.

1. Geometry: on train crops upscaled to 192 px (as if they were faces in a photo), where does YuNet put its
   box relative to the crop? (height, width, centre, eye-line angle; quartiles).
2. Accuracy on validation through the detect-and-crop path, for crop scales, vertical shifts and eye
   alignment, against scoring the crop whole (the framing the model learned). Images where no face is found
   are scored whole in both arms, so the difference is the framing alone.

    python bench/framing.py [--data DIR] [--limit N]   -> bench/framing.json (+ a table on stdout)

Selection uses validation only; test is never looked at here.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batch_job.faces import FaceDetector  # noqa: E402
from batch_job.model import EmotionModel  # noqa: E402
from batch_job.preprocessing import crop_face, load_image  # noqa: E402
from batch_job.results import CLASSES  # noqa: E402
from trainer.data import data_dir, list_split  # noqa: E402

UPSCALE = 192  # train/validation crops are upscaled to this before detection, like a face in a photo


def largest_face(detector: FaceDetector, pixels: np.ndarray):
    faces = detector.detect(pixels)
    return max(faces, key=lambda face: face.area) if faces else None


def upscaled(path: Path) -> np.ndarray:
    return np.asarray(Image.fromarray(load_image(path)[:, :, 0]).resize((UPSCALE, UPSCALE), Image.Resampling.BICUBIC))


def geometry(paths: list[Path], detector: FaceDetector) -> dict:
    rows = []
    for path in paths:
        face = largest_face(detector, upscaled(path))
        if face is None:
            continue
        (x1, y1), (x2, y2) = sorted(face.landmarks[:2])
        rows.append((face.height / UPSCALE, face.width / UPSCALE, (face.left + face.width / 2) / UPSCALE - 0.5,
                     (face.top + face.height / 2) / UPSCALE - 0.5, np.degrees(np.arctan2(y2 - y1, x2 - x1))))
    values = np.array(rows)
    names = ["box_height", "box_width", "centre_x", "centre_y", "eye_angle_deg"]
    return {"images": len(paths), "found": len(rows),
            **{name: np.percentile(values[:, i], [25, 50, 75]).round(4).tolist() for i, name in enumerate(names)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: $EMOTION_DATA_DIR or ../shared/data/...)")
    parser.add_argument("--limit", type=int, help="use only this many validation images (quick look)")
    args = parser.parse_args()
    root = data_dir(args.data)
    detector = FaceDetector(parallel=1)
    model = EmotionModel()
    started = time.perf_counter()

    train = list_split(root, "train").paths
    geometry_result = geometry(random.Random(0).sample(train, 2000), detector)
    print("geometry on 2,000 train crops:", geometry_result, file=sys.stderr)

    validation = list_split(root, "validation")
    paths, labels = validation.paths, validation.labels
    if args.limit:
        keep = sorted(random.Random(1).sample(range(len(paths)), args.limit))
        paths, labels = [paths[i] for i in keep], labels[keep]
    whole = np.stack([load_image(path) for path in paths])
    whole_pred = model.predict(whole).argmax(axis=1)
    sources, faces = [], []
    for path in paths:
        pixels = upscaled(path)
        sources.append(Image.fromarray(pixels))
        faces.append(largest_face(detector, pixels))
    found = np.array([face is not None for face in faces])

    def accuracy_with(scale: float, shift: float, align: bool) -> dict:
        crops = np.stack([
            crop_face(source, (face.left, face.top, face.width, face.height), scale=scale, shift=shift,
                      eyes=face.landmarks[:2] if align else None) if face is not None else whole[i]
            for i, (source, face) in enumerate(zip(sources, faces, strict=True))])
        pred = model.predict(crops).argmax(axis=1)
        share = np.bincount(pred, minlength=len(CLASSES)) / len(pred)
        return {"scale": scale, "shift": shift, "align": align, "accuracy": float((pred == labels).mean()),
                "accuracy_found": float((pred[found] == labels[found]).mean()),
                "predicted_share": dict(zip(CLASSES, share.round(4).tolist(), strict=True))}

    # Control: the whole crop through the same upscale -> crop_face -> 48 px round trip (its smoothing alone).
    round_trip = np.stack([crop_face(source, (0, 0, UPSCALE, UPSCALE)) for source in sources])
    round_trip_pred = model.predict(round_trip).argmax(axis=1)
    grid = [accuracy_with(scale, 0.0, align) for align in (False, True) for scale in (0.9, 1.0, 1.1, 1.2, 1.3)]
    best = max(grid, key=lambda row: row["accuracy"])
    grid += [accuracy_with(best["scale"], shift, best["align"]) for shift in (-0.08, -0.05, -0.02, 0.02, 0.05)]
    result = {
        "upscale": UPSCALE, "detector": detector.path.name, "threshold": detector.threshold,
        "geometry_train": geometry_result,
        "validation": {"images": len(paths), "faces_found": int(found.sum()),
                       "whole_accuracy": float((whole_pred == labels).mean()),
                       "whole_accuracy_found": float((whole_pred[found] == labels[found]).mean()),
                       "round_trip_accuracy": float((round_trip_pred == labels).mean()),
                       "grid": grid},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (REPO / "bench" / "framing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"validation: {len(paths)} images, face found in {found.sum()}; whole "
          f"{result['validation']['whole_accuracy']:.4f}, whole after the round trip "
          f"{result['validation']['round_trip_accuracy']:.4f}")
    print("scale shift align  accuracy  (on faces found)")
    for row in grid:
        print(f"{row['scale']:5.2f} {row['shift']:+.2f} {row['align']!s:5}  {row['accuracy']:.4f}  "
              f"({row['accuracy_found']:.4f})  {row['predicted_share']}")


if __name__ == "__main__":
    main()
