"""python -m batch_job report predictions.csv [--images SOURCE] -o report.html

One self-contained HTML page (no scripts, no external files) to review a run:
- a header: the model, its version and precision, the face mode and the run's summary (from the run record
  `run` writes beside a local output, predictions.csv.run.json), and the totals;
- faces per emotion (a bar chart) and a confidence histogram per emotion;
- when the paths carry labels (the dataset's <class>/ folders): accuracy, recall per class and a confusion
  matrix (each image's largest face; an image without a face or with an error counts as wrong);
- a gallery of face thumbnails per emotion, least confident first, and a view of the first images, each
  drawn with its boxes beside each face's probabilities (both with --images: the folder or s3:// prefix the
  CSV was made from);
- the inputs without a face or with an error.

The file is read as a stream: a million rows cost no more memory than the page shows (bounded heaps and the
first PER_IMAGE images). Images are read and decoded inside the scorer's memory budgets. Classes are the
file's own (its p_<class> columns).
"""
from __future__ import annotations

import base64
import heapq
import html
import io
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from batch_job import formats
from batch_job.annotate import COLORS, display_cost, displayed_rgb, draw
from batch_job.base import BatchJobError, Error, is_s3_url
from batch_job.budget import DECODES, READS
from batch_job.evaluate import classes_of, label_of
from batch_job.preprocessing import open_image
from batch_job.results import NO_FACE, FaceResult, ImageResult, Totals

THUMBNAILS_PER_EMOTION = 60
PER_IMAGE = 60  # images shown whole, with their faces' probabilities
VIEW_SIDE = 480  # px: the longest side of an image in the per-image view
LISTED = 500  # errors and faceless images listed at most (all are counted)
THUMB = 96
BINS = 10
REQUIRED = ("path", "face", "left", "top", "width", "height", "emotion", "confidence", "error")
RUN_RECORD = ".run.json"  # beside a local output: what run wrote it (cli.write_run_record)


class ReportError(BatchJobError, ValueError):
    """The file is not a predictions CSV (or JSON Lines file) of this tool."""


@dataclass
class Summary(Totals):
    """The run's totals, as the file tells them, faces per emotion and confidence histograms."""
    classes: list[str] = field(default_factory=list)
    per_emotion: Counter = field(default_factory=Counter)
    histogram: dict = field(default_factory=dict)  # emotion -> BINS counts of confidence
    confusion: Counter = field(default_factory=Counter)  # (true, predicted) -> images, when paths carry labels


@dataclass(order=True)
class FaceRow:
    confidence: float
    path: str = field(compare=False)
    face: str = field(compare=False)
    box: tuple[int, int, int, int] = field(compare=False)


@dataclass
class Page:
    summary: Summary
    worst: dict[str, list[FaceRow]]
    errors: list[tuple[str, str]]
    no_face: list[str]
    images: list[ImageResult]  # the first PER_IMAGE inputs, as results


def _result(path: str, rows: list[dict], classes: list[str]) -> ImageResult:
    faces = []
    for row in rows:
        if not row["emotion"]:
            return ImageResult(path, error=row["error"] or NO_FACE)
        try:
            box = tuple(int(row[k]) for k in ("left", "top", "width", "height"))
            probabilities = np.array([float(row[f"p_{c}"]) for c in classes])
            score = float(row["face_score"]) if row.get("face_score") else None
            faces.append(FaceResult(int(row["face"]), box, score, probabilities, tuple(classes)))  # type: ignore[arg-type]
        except (KeyError, ValueError):
            continue
    return ImageResult(path, tuple(faces))


def read(csv_path: str | Path) -> Page:
    """Everything the page shows, from one streaming pass over the file."""
    fmt = formats.of_name(str(csv_path)) or formats.CSV
    kind = "CSV" if fmt is formats.CSV else "JSON Lines file"
    summary = Summary()
    worst: dict[str, list[tuple[float, int, FaceRow]]] = defaultdict(list)  # lowest confidences, as max-heaps
    errors: list[tuple[str, str]] = []
    no_face: list[str] = []
    images: list[ImageResult] = []
    current: list[dict] = []

    def image_done(rows: list[dict]) -> None:
        if not rows:
            return
        path = rows[0]["path"]
        label = label_of(path, summary.classes)
        if label is not None:
            summary.confusion[(label, rows[0]["emotion"] or "no face / error")] += 1
        if len(images) < PER_IMAGE:
            images.append(_result(path, rows, summary.classes))

    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        try:
            names, rows = fmt.read(f)
        except ValueError as error:
            raise ReportError(f"{csv_path} is not a predictions {kind}: {error}") from None
        missing = [column for column in REQUIRED if column not in names]
        if missing:
            raise ReportError(f"{csv_path} is not a predictions {kind} (missing columns: {', '.join(missing)})")
        summary.classes = classes_of(names)
        summary.histogram = {c: [0] * BINS for c in summary.classes}
        for cells in rows:
            row = dict(zip(names, cells, strict=False))
            if current and row["path"] != current[0]["path"]:
                image_done(current)
                current = []
            current.append(row)
            summary.images += row["face"] in ("", "0", "1")  # each input has exactly one such row
            if row["emotion"]:
                summary.faces += 1
                summary.per_emotion[row["emotion"]] += 1
                try:
                    left, top, width, height = (int(row[k]) for k in ("left", "top", "width", "height"))
                    face = FaceRow(float(row["confidence"]), row["path"], row["face"], (left, top, width, height))
                except ValueError:
                    continue
                if row["emotion"] in summary.histogram:
                    summary.histogram[row["emotion"]][min(BINS - 1, int(face.confidence * BINS))] += 1
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
        image_done(current)
    ordered = {emotion: sorted(entry[2] for entry in heap) for emotion, heap in worst.items()}
    return Page(summary, ordered, errors, no_face, images)


def run_record(csv_path: str | Path) -> dict:
    """What the command line recorded about the run that wrote this file (empty when there is none)."""
    try:
        return json.loads(Path(str(csv_path) + RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


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


def _jpeg(image: Image.Image, quality: int = 85) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def pictures(page: Page, images: str) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """(thumbnails: (path, face) -> data URI, views: path -> data URI of the image drawn with its boxes), each
    image read and decoded once, inside the budgets the scorer uses."""
    read_bytes = _reader(images)
    by_path: dict[str, list[FaceRow]] = defaultdict(list)
    for rows in page.worst.values():
        for row in rows:
            by_path[row.path].append(row)
    shown = {result.path: result for result in page.images if result.faces}
    thumbs, views = {}, {}
    for path in list(dict.fromkeys([*by_path, *shown])):
        try:
            with READS.thread_scope(), open_image(read_bytes(path)) as opened, DECODES.hold(display_cost(opened)):
                image = displayed_rgb(opened)
                for row in by_path.get(path, ()):
                    thumbs[(row.path, row.face)] = _thumbnail(image, row.box)
                if path in shown:
                    views[path] = _jpeg(draw(image, shown[path], VIEW_SIDE), 80)
        except (OSError, Error, ValueError):  # a missing or unreadable image: the page shows no picture for it
            continue
    return thumbs, views


def _thumbnail(image: Image.Image, box: tuple[int, int, int, int]) -> str:
    left, top, width, height = box
    pad = max(width, height) // 8
    crop = image.crop((left - pad, top - pad, left + width + pad, top + height + pad))
    crop.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return _jpeg(crop)


def breakable(name: str) -> str:
    """A path, escaped, that wraps after / _ - . (never inside a word)."""
    return re.sub(r"([/_.\-])", r"\1<wbr>", html.escape(name))


def _rgb(name: str) -> str:
    r, g, b = COLORS.get(name, (120, 120, 120))
    return f"rgb({r},{g},{b})"


def bar_chart(per_emotion: Counter, classes: list[str] | None = None) -> str:
    """An inline SVG bar chart of faces per emotion."""
    names = list(classes or COLORS) + sorted(set(per_emotion) - set(classes or COLORS))
    most = max(per_emotion.values(), default=0) or 1
    bar, gap, width = 30, 10, 300
    height = len(names) * (bar + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width + 170} {height}" class=chart '
             f'role="img" aria-label="faces per emotion">']
    for i, name in enumerate(names):
        count = per_emotion.get(name, 0)
        y = i * (bar + gap)
        length = round(width * count / most)
        parts.append(f'<text x="0" y="{y + bar * 0.7:.0f}" font-size="15">{html.escape(name)}</text>'
                     f'<rect x="80" y="{y}" width="{length}" height="{bar}" fill="{_rgb(name)}"/>'
                     f'<text x="{86 + length}" y="{y + bar * 0.7:.0f}" font-size="15" class="count">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(counts: list[int], emotion: str) -> str:
    """An inline SVG histogram of one emotion's confidences (0 to 1 in BINS bins)."""
    most = max(counts, default=0) or 1
    width, height, bar = 200, 60, 200 / BINS
    bars = "".join(f'<rect x="{k * bar + 1:.0f}" y="{height - round(height * c / most)}" width="{bar - 2:.0f}" '
                   f'height="{round(height * c / most)}" fill="{_rgb(emotion)}"><title>{k / BINS:.1f}-'
                   f'{(k + 1) / BINS:.1f}: {c}</title></rect>' for k, c in enumerate(counts))
    return (f'<figure class=hist><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 14}" '
            f'role="img" aria-label="confidence of {html.escape(emotion)} faces">{bars}'
            f'<text x="0" y="{height + 12}" font-size="10">0</text><text x="{width - 8}" y="{height + 12}" '
            f'font-size="10">1</text></svg><figcaption>{html.escape(emotion)} ({sum(counts)})</figcaption></figure>')


def probability_bars(face: FaceResult) -> str:
    rows = "".join(f'<tr><td>{html.escape(name)}</td><td class=p><span style="width:{p * 100:.0f}%;'
                   f'background:{_rgb(name)}"></span></td><td class=n>{p:.2f}</td></tr>'
                   for name, p in face.as_dict().items())
    return f"<table class=probs><caption>face {face.number}</caption>{rows}</table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}header p{margin:.2em 0;color:#555}.totals span{display:inline-block;margin:.5em 1.2em .5em 0}
.totals b{font-size:1.6em}.chart{max-width:470px;width:100%}.hists{display:flex;flex-wrap:wrap;gap:1em}
.hist{margin:0;width:200px}.hist svg{width:100%}figcaption{font-size:13px;text-align:center}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.face{width:120px;font-size:11px;overflow-wrap:break-word}
.face img{width:96px;height:96px;object-fit:cover;display:block;border:4px solid var(--c)}
.view{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start;border-top:1px solid #ddd;padding:.8em 0}
.view img{max-width:100%;width:480px}.view h3{width:100%;margin:0;font-size:14px;overflow-wrap:break-word}
.probs{font-size:12px;margin-right:1em}.probs caption{text-align:left;font-weight:bold}.p{width:110px}
.p span{display:block;height:10px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px;overflow-wrap:break-word}
.probs td{border:none;padding:1px 4px}.n{text-align:right}.cm td.n{color:#000}
.scroll{overflow-x:auto;max-width:100%}
@media (max-width:600px){body{margin:.5em auto}.face{width:100px}.face img{width:80px;height:80px}
.hist{width:45%}.totals span{margin-right:.8em}}"""


def _header(summary: Summary, record: dict, title: str) -> str:
    e = html.escape
    parts = [f"<header><h1>Emotions in {e(title)}</h1>"]
    if record:
        model = record.get("model", {})
        parts.append(f"<p id=model>model <b>{e(str(model.get('name', '?')))}</b> ({e(str(model.get('precision', '?')))}"
                     f", sha256 {e(str(model.get('graph_sha256', ''))[:12])}) · emotion-batch "
                     f"{e(str(record.get('version', '?')))} · faces <b>{e(str(record.get('faces', '?')))}</b></p>")
        parts.append(f"<p id=run>{e(str(record.get('summary', '')))} · {e(str(record.get('finished', '')))}</p>")
    else:
        parts.append("<p id=run>no run record beside this file (it is written by emotion-batch run next to a "
                     "local output): model and settings unknown</p>")
    parts.append("</header><div class=totals>")
    for key, label in (("images", "images"), ("faces", "faces"), ("no_face", "without a face"), ("errors", "errors")):
        parts.append(f'<span id="{key}"><b>{getattr(summary, key)}</b> {label}</span>')
    parts.append("</div>")
    return "".join(parts)


def _accuracy(summary: Summary) -> str:
    """Accuracy, recall per class and the confusion matrix, when the paths carry labels."""
    if not summary.confusion:
        return ""
    e = html.escape
    truths = [c for c in summary.classes if any(t == c for t, _ in summary.confusion)]
    predicted = summary.classes + ["no face / error"]
    total = sum(summary.confusion.values())
    right = sum(n for (t, p), n in summary.confusion.items() if t == p)
    parts = [f"<h2>Against the labels in the paths</h2><p id=accuracy>accuracy <b>{right / total:.1%}</b> on {total} "
             "labelled images (each image's largest face)</p><div class=scroll><table class=cm id=confusion>"
             "<tr><th>true \\ predicted</th>"
             + "".join(f"<th>{e(p)}</th>" for p in predicted) + "<th>recall</th></tr>"]
    for truth in truths:
        row_total = sum(summary.confusion[(truth, p)] for p in predicted)
        cells = []
        for p in predicted:
            n = summary.confusion[(truth, p)]
            shade = 255 - round(180 * n / row_total) if row_total else 255
            cells.append(f'<td class=n style="background:rgb({shade},{shade},255)">{n}</td>')
        recall = summary.confusion[(truth, truth)] / row_total if row_total else 0.0
        parts.append(f"<tr><th>{e(truth)}</th>{''.join(cells)}<td class=n>{recall:.1%}</td></tr>")
    parts.append("</table></div>")
    return "".join(parts)


def render(page: Page, thumbs: dict[tuple[str, str], str], views: dict[str, str], title: str,
           record: dict | None = None) -> str:
    e = html.escape
    summary = page.summary
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
             f'<meta name=viewport content="width=device-width, initial-scale=1"><title>{e(title)}</title>'
             f"<style>{STYLE}</style></head><body>", _header(summary, record or {}, title),
             "<h2>Faces per emotion</h2>" + bar_chart(summary.per_emotion, summary.classes),
             "<table id=per-emotion><tr><th>emotion</th><th>faces</th></tr>"]
    for name in summary.classes + sorted(set(summary.per_emotion) - set(summary.classes)):
        parts.append(f"<tr><td>{e(name)}</td><td class=n>{summary.per_emotion.get(name, 0)}</td></tr>")
    parts.append("</table><h2>How confident, per emotion</h2><div class=hists>")
    parts += [histogram(summary.histogram.get(c, [0] * BINS), c) for c in summary.classes]
    parts.append("</div>" + _accuracy(summary))
    for emotion in summary.classes:
        rows = page.worst.get(emotion, [])
        if not rows:
            continue
        shown = f"the {len(rows)} least confident" if summary.per_emotion[emotion] > len(rows) else "all"
        parts.append(f"<h2>{e(emotion)} <small>({shown}, least confident first)</small></h2>"
                     f'<div class=gallery style="--c:{_rgb(emotion)}">')
        for row in rows:
            image = thumbs.get((row.path, row.face))
            picture = f'<img src="{image}" alt="">' if image else ""
            parts.append(f"<div class=face>{picture}{breakable(row.path)} #{e(row.face)}<br>{row.confidence:.2f}</div>")
        parts.append("</div>")
    with_faces = [result for result in page.images if result.faces]
    if with_faces:
        parts.append(f"<h2>Image by image <small>(the first {len(with_faces)})</small></h2><div id=images>")
        for result in with_faces:
            view = views.get(result.path)
            picture = f'<img src="{view}" alt="{e(result.path)} with its faces boxed">' if view else ""
            parts.append(f"<section class=view><h3>{breakable(result.path)}</h3>{picture}"
                         + "".join(probability_bars(face) for face in result.faces) + "</section>")
        parts.append("</div>")
    if page.no_face:
        parts.append(f"<h2>Without a face ({summary.no_face})</h2><ul id=no-face>"
                     + "".join(f"<li>{breakable(path)}</li>" for path in page.no_face) + "</ul>")
    if page.errors:
        parts.append(f"<h2>Errors ({summary.errors})</h2><div class=scroll><table id=errors><tr><th>path</th>"
                     "<th>error</th></tr>"
                     + "".join(f"<tr><td>{breakable(path)}</td><td>{e(error)}</td></tr>" for path, error in page.errors)
                     + "</table></div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def build_report(csv_path: str, output: str, images: str | None = None) -> Summary:
    """Read the file, fetch the pictures if asked, write the page; returns the totals it shows."""
    page = read(csv_path)
    thumbs, views = pictures(page, images) if images else ({}, {})
    Path(output).write_text(render(page, thumbs, views, Path(csv_path).name, run_record(csv_path)),
                            encoding="utf-8")
    return page.summary
