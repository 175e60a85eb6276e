"""--annotate DIR: a copy of each image with its faces boxed and labelled, for people who would rather look.

The copies are drawn beside the scoring, in a small thread pool, from the same bytes the scorer read (the
item is read again): the CSV never waits for a drawing, and a drawing that fails only costs its copy.
"""
from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from PIL import Image, ImageDraw, ImageFont, ImageOps

from batch_job.base import S3_SCHEME, Item
from batch_job.budget import DECODES, READS
from batch_job.preprocessing import Source, decode_cost, open_image
from batch_job.results import FaceResult, ImageResult

COLORS = {"happy": (255, 196, 0), "neutral": (160, 160, 160), "sad": (30, 120, 255), "surprise": (235, 60, 200)}
MAX_SIDE = 2048  # annotated copies of bigger photos are scaled down to this longest side
IN_FLIGHT = 4  # drawings queued at most: memory stays bounded


def annotated_name(path: str) -> PurePosixPath:
    """The copy's path inside DIR: the CSV path without scheme, root or '..', always ending in .jpg."""
    parts = [part for part in path.replace("\\", "/").removeprefix(S3_SCHEME).split("/")
             if part not in ("", ".", "..")]
    name = PurePosixPath(*parts) if parts else PurePosixPath("image")
    return name if name.suffix.lower() in (".jpg", ".jpeg") else name.with_name(name.name + ".jpg")


def display_cost(image: Image.Image) -> int:
    """Bytes displayed_rgb() holds at its peak: the decode, plus a turned copy, the RGBA composite and the RGB
    result (Pillow keeps RGB at four bytes a pixel)."""
    return decode_cost(image) + image.width * image.height * 16


def displayed_rgb(opened: Image.Image) -> Image.Image:
    """An opened image as displayed (EXIF orientation applied, transparency over white), in RGB. Callers hold
    display_cost() in the decode budget around it and everything they make from it."""
    image = ImageOps.exif_transpose(opened)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def save_drawing(data: Source, result: ImageResult, target: Path, max_side: int | None = MAX_SIDE) -> None:
    """Draw the copy and write it as JPEG, inside the shared decode budget (like the scorer's decodes), so
    annotating adds no unbounded memory whatever the photos."""
    with open_image(data) as opened, DECODES.hold(display_cost(opened)):
        draw(opened, result, max_side).save(target, "JPEG", quality=90)


Box = tuple[float, float, float, float]  # left, top, right, bottom


def _overlap(a: Box, b: Box) -> float:
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def place_label(size: tuple[float, float], face: Box, taken: list[Box], frame: tuple[int, int]) -> Box:
    """Where a face's label goes: above its box, else below, else inside its top or bottom edge, else beside
    it, whichever covers the least of the other labels and faces (placed so far) and stays in the picture."""
    width, height = size
    left, top, right, bottom = face
    candidates = [(left, top - height), (left, bottom), (left, top), (left, bottom - height), (right, top),
                  (left - width, top), (right - width, top - height), (right - width, bottom)]
    best, best_cost = None, None
    for x, y in candidates:
        x = min(max(0.0, x), max(0.0, frame[0] - width))  # kept inside the picture
        y = min(max(0.0, y), max(0.0, frame[1] - height))
        box = (x, y, x + width, y + height)
        cost = sum(_overlap(box, other) for other in taken)
        if best_cost is None or cost < best_cost:
            best, best_cost = box, cost
        if cost == 0:
            break
    assert best is not None
    return best


def draw(opened: Image.Image, result: ImageResult, max_side: int | None = MAX_SIDE) -> Image.Image:
    """The image as displayed, with a box and 'emotion 0.93' per face. Boxes are drawn in the emotion's colour
    between two dark lines, so they show on light and dark pictures alike; labels go where they cover no other
    label or face (place_label), each on its colour with dark text. max_side: scale the copy down to this
    longest side (None: the original resolution)."""
    image = displayed_rgb(opened)
    factor = min(1.0, max_side / max(image.size)) if max_side else 1.0
    if factor < 1:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    canvas = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 400))
    largest_font = max(12, round(max(image.size) / 50))
    faces: list[tuple[FaceResult, Box]] = []
    for face in result.faces:
        x, y, w, h = face.box
        faces.append((face, (x * factor, y * factor, (x + w) * factor, (y + h) * factor)))
    for face, (left, top, right, bottom) in faces:  # every box first: labels then go over boxes, never under
        color = COLORS.get(face.emotion, (255, 0, 0))
        canvas.rectangle((left - line, top - line, right + line, bottom + line), outline=(0, 0, 0), width=line)
        canvas.rectangle((left, top, right, bottom), outline=color, width=line)
        canvas.rectangle((left + line, top + line, right - line, bottom - line), outline=(0, 0, 0), width=1)
    taken: list[Box] = [box for _, box in faces]
    for face, box in faces:
        own = [other for other in taken if other is not box]
        font = ImageFont.load_default(size=min(largest_font, max(10, round((box[2] - box[0]) / 4))))
        label = f"{face.emotion} {face.confidence:.2f}"
        text = canvas.textbbox((0, 0), label, font=font)
        size = (text[2] - text[0] + 2 * line, text[3] - text[1] + 2 * line)
        spot = place_label(size, box, own, image.size)
        taken.append(spot)
        color = COLORS.get(face.emotion, (255, 0, 0))
        canvas.rectangle(spot, fill=color, outline=(0, 0, 0), width=1)
        canvas.text((spot[0] + line - text[0], spot[1] + line - text[1]), label, fill=(0, 0, 0), font=font)
    return image


class Annotator:
    """Pairs each result with its item (they come in the same order) and writes the drawing to DIR."""

    def __init__(self, folder: str | Path, max_side: int | None = MAX_SIDE):
        self.folder, self.max_side = Path(folder), max_side
        self.folder.mkdir(parents=True, exist_ok=True)
        self._items: deque[Item] = deque()
        self.written = 0
        self.failed = 0

    def remember(self, items: Iterable[Item]) -> Iterator[Item]:
        """Pass the items on to the pipeline, keeping those in flight (the pipeline's look-ahead bounds them)."""
        for item in items:
            self._items.append(item)
            yield item

    def draw_all(self, results: Iterable[ImageResult]) -> Iterator[ImageResult]:
        """Pass the results on unchanged while their drawings are made in the background."""
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=2) as pool:
            for result in results:
                item = self._items.popleft()
                if not result.failed:
                    pending.append(pool.submit(self._write, item, result))
                    while len(pending) > IN_FLIGHT:
                        pending.popleft().result()
                yield result
            while pending:
                pending.popleft().result()

    def _write(self, item: Item, result: ImageResult) -> None:
        target = self.folder / annotated_name(result.path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with READS.thread_scope():  # the bytes the read reserves are released when the copy is written
                save_drawing(item.read(), result, target, self.max_side)
            self.written += 1
        except Exception as error:  # noqa: BLE001 - a drawing never stops the scoring
            self.failed += 1
            print(f"warning: cannot annotate {result.path}: {error}", file=sys.stderr)
