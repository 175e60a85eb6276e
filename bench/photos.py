"""make bench, faces in photos: end to end on a folder of real-size photos against the bound of its two models.

- end to end: `python -m batch_job run FOLDER` (faces auto): photos/s, faces/s, peak RSS; and against the
  photo set's manifest (bench/photo_set.py), how many pasted faces were found and the emotion accuracy on them.
  A pasted face counts as found when a detected box's centre lies inside it and their IoU is >= 0.3: the
  pasted square is a tight FER crop, and YuNet draws its box around the head it imagines (often past the
  square's edge), so the usual IoU >= 0.5 would count good detections as misses.
- the bounds and where the time goes: bench/breakdown.py (each stage of the pipeline on one thread; the
  models-only bound and the decode-inclusive one).

    python bench/photos.py [--folder bench/work/photos] [--sample 300]
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batch_job.faces import iou  # noqa: E402

SUMMARY = re.compile(r"scored (\d+) images, (\d+) faces, (\d+) without a face, (\d+) errors, "
                     r"(\d+) skipped \(not images\) in ([\d.]+) s")


def parse_summary(stderr: str) -> dict:
    match = SUMMARY.search(stderr)
    if not match:
        raise RuntimeError(f"no summary line in: {stderr[-500:]}")
    images, faces, no_face, errors, skipped, seconds = match.groups()
    return {"images": int(images), "faces": int(faces), "no_face": int(no_face), "errors": int(errors),
            "skipped": int(skipped), "seconds": float(seconds)}


def _box(row: dict) -> tuple[int, ...]:
    return tuple(int(row[k]) for k in ("left", "top", "width", "height"))


def _iou(a, b) -> float:
    return float(iou(np.array(a, np.float32), np.array([b], np.float32))[0])


def match_manifest(csv_path: str | Path, manifest: Path) -> dict:
    """Pasted faces found (centre inside, IoU >= 0.3) and the emotion accuracy on those found."""
    truth = defaultdict(list)
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            truth[row["file"]].append(row)
    found_faces = defaultdict(list)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row["emotion"]:
                found_faces[row["path"]].append(row)
    pasted = found = correct = 0
    for name, faces in truth.items():
        for face in faces:
            pasted += 1
            box = _box(face)

            def fits(row, box=box) -> bool:
                left, top, width, height = _box(row)
                centre_x, centre_y = left + width / 2, top + height / 2
                return (box[0] <= centre_x <= box[0] + box[2] and box[1] <= centre_y <= box[1] + box[3]
                        and _iou(box, (left, top, width, height)) >= 0.3)
            hits = [row for row in found_faces[name] if fits(row)]
            if hits:
                found += 1
                best = max(hits, key=lambda row, box=box: _iou(box, _box(row)))
                correct += best["emotion"] == face["label"]
    return {"pasted_faces": pasted, "found": found, "recall": round(found / pasted, 4),
            "emotion_accuracy_on_found": round(correct / found, 4) if found else None}


def end_to_end(folder: Path, run_measured, extra: list[str] | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        _, err, wall, rss = run_measured([sys.executable, "-m", "batch_job", "run", str(folder), "-o",
                                          f"{tmp}/p.csv", "--no-progress", *(extra or [])])
        result = parse_summary(err)
        if (folder / "manifest.csv").is_file():
            result["manifest"] = match_manifest(f"{tmp}/p.csv", folder / "manifest.csv")
    result.update(photos_per_second=round(result["images"] / result["seconds"], 1),
                  faces_per_second=round(result["faces"] / result["seconds"], 1),
                  wall_seconds=round(wall, 2), peak_rss_mb=round(rss, 1))
    return result


def main() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from run import run_measured  # noqa: E402 - the bench's child-process timer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(REPO / "bench" / "work" / "photos"))
    parser.add_argument("--sample", type=int, default=1000, help="photos timed stage by stage")
    args = parser.parse_args()
    folder = Path(args.folder)
    from breakdown import breakdown

    result = {"end_to_end": end_to_end(folder, run_measured), "breakdown": breakdown(
        sorted(folder.glob("*.jpg"))[: args.sample])}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
