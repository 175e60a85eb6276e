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
from batch_job.results import ImageResult

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


def save_drawing(data: Source, result: ImageResult, target: Path) -> None:
    """Draw the copy and write it as JPEG, inside the shared decode budget (like the scorer's decodes), so
    annotating adds no unbounded memory whatever the photos."""
    with open_image(data) as opened, DECODES.hold(display_cost(opened)):
        draw(opened, result).save(target, "JPEG", quality=90)


def draw(opened: Image.Image, result: ImageResult) -> Image.Image:
    """The image as displayed, with a box and 'emotion 0.93' per face."""
    image = displayed_rgb(opened)
    factor = min(1.0, MAX_SIDE / max(image.size))
    if factor < 1:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    canvas = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 400))
    largest_font = max(12, round(max(image.size) / 50))
    for face in result.faces:
        left, top, width, height = (value * factor for value in face.box)
        font = ImageFont.load_default(size=min(largest_font, max(10, round(width / 4))))  # fits crowds too
        color = COLORS.get(face.emotion, (255, 0, 0))
        canvas.rectangle((left, top, left + width, top + height), outline=color, width=line)
        label = f"{face.emotion} {face.confidence:.2f}"
        text_box = canvas.textbbox((left, top), label, font=font)
        text_height = text_box[3] - text_box[1]
        y = top - text_height - 2 * line if top - text_height - 2 * line >= 0 else top + height
        canvas.rectangle((left, y, left + text_box[2] - text_box[0] + 2 * line, y + text_height + 2 * line),
                         fill=color)
        canvas.text((left + line, y + line - (text_box[1] - top)), label, fill=(0, 0, 0), font=font)
    return image


class Annotator:
    """Pairs each result with its item (they come in the same order) and writes the drawing to DIR."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
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
                save_drawing(item.read(), result, target)
            self.written += 1
        except Exception as error:  # noqa: BLE001 - a drawing never stops the scoring
            self.failed += 1
            print(f"warning: cannot annotate {result.path}: {error}", file=sys.stderr)
