"""python -m batch_job report predictions.csv [--images SOURCE] -o report.html

One self-contained HTML page (no scripts, no external files): counts per emotion with a bar chart, a gallery
of face thumbnails per emotion, least confident first (with --images: the folder or s3:// prefix the CSV was
made from), and the inputs without a face or with an error. The CSV is read as a stream: a million rows
cost no more memory than the page shows.
"""
from __future__ import annotations

import base64
import heapq
import html
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from batch_job import formats
from batch_job.annotate import COLORS, display_cost, displayed_rgb
from batch_job.base import BatchJobError, is_s3_url
from batch_job.budget import DECODES, READS
from batch_job.preprocessing import ImageError, open_image
from batch_job.results import CLASSES, NO_FACE, Totals

THUMBNAILS_PER_EMOTION = 60
LISTED = 500  # errors and faceless images listed at most (all are counted)
THUMB = 96
REQUIRED = ("path", "face", "left", "top", "width", "height", "emotion", "confidence", "error")


class ReportError(BatchJobError, ValueError):
    """The file is not a predictions CSV (or JSON Lines file) of this tool."""


@dataclass
class Summary(Totals):
    """The run's totals, as the CSV tells them, and faces per emotion."""
    per_emotion: Counter = field(default_factory=Counter)


@dataclass(order=True)
class FaceRow:
    confidence: float
    path: str = field(compare=False)
    face: str = field(compare=False)
    box: tuple[int, int, int, int] = field(compare=False)


def read_csv(csv_path: str | Path) -> tuple[Summary, dict[str, list[FaceRow]], list[tuple[str, str]], list[str]]:
    """Totals, the least confident faces per emotion, the first errors, the first images without a face."""
    summary = Summary()
    worst: dict[str, list[tuple[float, int, FaceRow]]] = defaultdict(list)  # lowest confidences, as max-heaps
    errors: list[tuple[str, str]] = []
    no_face: list[str] = []
    fmt = formats.of_name(str(csv_path)) or formats.CSV
    kind = "CSV" if fmt is formats.CSV else "JSON Lines file"
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        try:
            names, rows = fmt.read(f)
        except ValueError as error:
            raise ReportError(f"{csv_path} is not a predictions {kind}: {error}") from None
        missing = [column for column in REQUIRED if column not in names]
        if missing:
            raise ReportError(f"{csv_path} is not a predictions {kind} (missing columns: {', '.join(missing)})")
        for cells in rows:
            row = dict(zip(names, cells, strict=False))
            summary.images += row["face"] in ("", "0", "1")  # each input has exactly one such row
            if row["emotion"]:
                summary.faces += 1
                summary.per_emotion[row["emotion"]] += 1
                try:
                    left, top, width, height = (int(row[k]) for k in ("left", "top", "width", "height"))
                    face = FaceRow(float(row["confidence"]), row["path"], row["face"], (left, top, width, height))
                except ValueError:
                    continue
                heap = worst[row["emotion"]]
                entry = (-face.confidence, summary.faces, face)
                if len(heap) < THUMBNAILS_PER_EMOTION:
                    heapq.heappush(heap, entry)
                elif entry > heap[0]:
                    heapq.heapreplace(heap, entry)
            elif row["error"] == NO_FACE:
                summary.no_face += 1
                if len(no_face) < LISTED:
                    no_face.append(row["path"])
            else:
                summary.errors += 1
                if len(errors) < LISTED:
                    errors.append((row["path"], row["error"]))
    ordered = {emotion: sorted(entry[2] for entry in heap) for emotion, heap in worst.items()}
    return summary, ordered, errors, no_face


def bar_chart(per_emotion: Counter) -> str:
    """An inline SVG bar chart of faces per emotion."""
    names = list(CLASSES) + sorted(set(per_emotion) - set(CLASSES))
    most = max(per_emotion.values(), default=0) or 1
    bar, gap, width = 44, 14, 360
    height = len(names) * (bar + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 200}" height="{height}" role="img" '
             f'aria-label="faces per emotion">']
    for i, name in enumerate(names):
        count = per_emotion.get(name, 0)
        y = i * (bar + gap)
        length = round(width * count / most)
        r, g, b = COLORS.get(name, (120, 120, 120))
        parts.append(f'<text x="0" y="{y + bar * 0.65:.0f}" font-size="16">{html.escape(name)}</text>'
                     f'<rect x="90" y="{y}" width="{length}" height="{bar}" fill="rgb({r},{g},{b})"/>'
                     f'<text x="{96 + length}" y="{y + bar * 0.65:.0f}" font-size="16" class="count">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _reader(images: str):
    """A function path -> bytes for the SOURCE the CSV was made from (a folder, one file, or s3://). Paths are
    as the CSV shows them (non-UTF-8 names quoted, batch_job.local.display_name)."""
    if is_s3_url(images):
        from batch_job import s3

        bucket, _ = s3.parse_url(images)

        def read_s3(path: str) -> bytes:
            if is_s3_url(path):
                return s3.read_object(*s3.parse_url(path))
            return s3.read_object(bucket, path)
        return read_s3
    from batch_job.local import original_name, read_file

    root = Path(images)

    def read_local(path: str) -> bytes:
        if root.is_file():
            return read_file(str(root))
        candidate = os.fsdecode(original_name(path))
        return read_file(candidate if os.path.isabs(candidate) else os.path.join(root, candidate))
    return read_local


def thumbnails(faces: dict[str, list[FaceRow]], images: str) -> dict[tuple[str, str], str]:
    """(path, face) -> a data: URI of a small JPEG of the face, each image decoded once."""
    read = _reader(images)
    by_path: dict[str, list[FaceRow]] = defaultdict(list)
    for rows in faces.values():
        for row in rows:
            by_path[row.path].append(row)
    out = {}
    for path, rows in by_path.items():
        try:  # each image read and decoded inside the budgets the scorer uses: memory stays bounded
            with READS.thread_scope(), open_image(read(path)) as opened, DECODES.hold(display_cost(opened)):
                image = displayed_rgb(opened)
                for row in rows:
                    out[(row.path, row.face)] = _thumbnail(image, row.box)
        except (OSError, BatchJobError, ImageError, ValueError):
            continue
    return out


def _thumbnail(image: Image.Image, box: tuple[int, int, int, int]) -> str:
    left, top, width, height = box
    pad = max(width, height) // 8
    crop = image.crop((left - pad, top - pad, left + width + pad, top + height + pad))
    crop.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}h1{margin-bottom:0}
.totals span{display:inline-block;margin:0.6em 1.2em 0.6em 0;font-size:1.1em}.totals b{font-size:1.6em}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.face{width:120px;font-size:11px;word-break:break-all}
.face img{width:96px;height:96px;object-fit:cover;display:block;border:4px solid var(--c)}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}"""


def render(summary: Summary, faces: dict[str, list[FaceRow]], errors: list[tuple[str, str]],
           no_face: list[str], thumbs: dict[tuple[str, str], str], title: str) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>Emotions in {e(title)}</h1><div class=totals>"]
    for key, label in (("images", "images"), ("faces", "faces"), ("no_face", "without a face"),
                       ("errors", "errors")):
        parts.append(f'<span id="{key}"><b>{getattr(summary, key)}</b> {label}</span>')
    parts.append("</div><h2>Faces per emotion</h2>" + bar_chart(summary.per_emotion))
    parts.append("<table id=per-emotion><tr><th>emotion</th><th>faces</th></tr>")
    for name in list(CLASSES) + sorted(set(summary.per_emotion) - set(CLASSES)):
        parts.append(f"<tr><td>{e(name)}</td><td class=n>{summary.per_emotion.get(name, 0)}</td></tr>")
    parts.append("</table>")
    for emotion in CLASSES:
        rows = faces.get(emotion, [])
        if not rows:
            continue
        r, g, b = COLORS[emotion]
        shown = f"the {len(rows)} least confident" if summary.per_emotion[emotion] > len(rows) else "all"
        parts.append(f"<h2>{e(emotion)} <small>({shown}, least confident first)</small></h2>"
                     f'<div class=gallery style="--c:rgb({r},{g},{b})">')
        for row in rows:
            image = thumbs.get((row.path, row.face))
            picture = f'<img src="{image}" alt="">' if image else ""
            parts.append(f'<div class=face>{picture}{e(row.path)} #{e(row.face)}<br>{row.confidence:.2f}</div>')
        parts.append("</div>")
    if no_face:
        parts.append(f"<h2>Without a face ({summary.no_face})</h2><ul id=no-face>"
                     + "".join(f"<li>{e(path)}</li>" for path in no_face) + "</ul>")
    if errors:
        parts.append(f"<h2>Errors ({summary.errors})</h2><table id=errors><tr><th>path</th><th>error</th></tr>"
                     + "".join(f"<tr><td>{e(path)}</td><td>{e(error)}</td></tr>" for path, error in errors)
                     + "</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def build_report(csv_path: str, output: str, images: str | None = None) -> Summary:
    """Read the CSV, fetch the thumbnails if asked, write the page; returns the totals it shows."""
    summary, faces, errors, no_face = read_csv(csv_path)
    thumbs = thumbnails(faces, images) if images else {}
    Path(output).write_text(render(summary, faces, errors, no_face, thumbs, Path(csv_path).name), encoding="utf-8")
    return summary
