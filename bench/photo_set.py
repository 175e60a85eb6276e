"""A folder of real-size photos with faces at known places, for measuring the faces path end to end.

Each photo is one of ../shared/photos (randomly cropped and resized to a phone or camera size: 1.2 to 12 MP)
with one to three dataset faces (validation split, upscaled) pasted at known boxes. The photos' own faces stay
(Solvay's 29 among them), so a photo holds more faces than were pasted; the manifest lists the pasted ones:

    python bench/photo_set.py [--count 1000] [--out bench/work/photos]
    -> OUT/photo-0000.jpg ... and OUT/manifest.csv (file,left,top,width,height,label)

Deterministic for a given --seed, and skipped when OUT already holds the same set.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.data import data_dir, list_split  # noqa: E402

PHOTOS = REPO.parent / "shared" / "photos"
SIZES = [((1280, 960), 3), ((1600, 1200), 3), ((2048, 1536), 2), ((3024, 4032), 1), ((4032, 3024), 1)]
CLASSES = ("happy", "neutral", "sad", "surprise")


def place(rng: random.Random, size: tuple[int, int], side: int, taken: list[tuple[int, int, int, int]]):
    """A free spot for a side x side face, or None after a few tries."""
    for _ in range(30):
        left, top = rng.randrange(0, size[0] - side), rng.randrange(0, size[1] - side)
        if all(left + side < x or x + s < left or top + side < y or y + s < top for x, y, s, _ in taken):
            return left, top
    return None


def build(out: Path, count: int, seed: int, data: str | None) -> Path:
    manifest = out / "manifest.csv"
    stamp = out / "params.json"
    params = {"count": count, "seed": seed, "sizes": SIZES, "version": 1}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(params)):
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    backgrounds = [Image.open(path).convert("RGB") for path in sorted(PHOTOS.glob("*.png"))]
    faces = list_split(data_dir(data), "validation")
    rows = []
    for index in range(count):
        (size,) = rng.choices([s for s, _ in SIZES], weights=[w for _, w in SIZES])
        source = rng.choice(backgrounds)
        crop_w = rng.randint(source.width // 2, source.width)
        crop_h = min(source.height, round(crop_w * size[1] / size[0]))
        crop_w = round(crop_h * size[0] / size[1])
        left, top = rng.randint(0, source.width - crop_w), rng.randint(0, source.height - crop_h)
        photo = source.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BICUBIC)
        taken: list[tuple[int, int, int, int]] = []
        for _ in range(rng.randint(1, 3)):
            face = rng.randrange(len(faces))
            side = round(min(size) * rng.uniform(0.06, 0.35))
            spot = place(rng, size, side, taken)
            if spot is None:
                continue
            with Image.open(faces.paths[face]) as crop:
                photo.paste(crop.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), spot)
            taken.append((*spot, side, int(faces.labels[face])))
        name = f"photo-{index:04d}.jpg"
        photo.save(out / name, "JPEG", quality=90)
        rows += [(name, x, y, s, s, CLASSES[label]) for x, y, s, label in taken]
        if index % 100 == 99:
            print(f"[photo_set] {index + 1}/{count}", file=sys.stderr, flush=True)
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "left", "top", "width", "height", "label"])
        writer.writerows(rows)
    stamp.write_text(json.dumps(params))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "work" / "photos"))
    parser.add_argument("--data", help="dataset folder (default: $EMOTION_DATA_DIR or ../shared/data/...)")
    args = parser.parse_args()
    print(build(Path(args.out), args.count, args.seed, args.data))


if __name__ == "__main__":
    main()
