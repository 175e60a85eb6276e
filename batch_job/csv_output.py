"""The output formats, CSV and JSON Lines: one record per face found (numbered largest first), else one record
per image saying why not. The same fields in both (COLUMNS); JSON Lines gives numbers as numbers and empty
cells as null, for pandas, DuckDB, Athena, jq and BigQuery.

path,face,left,top,width,height,face_score,emotion,confidence,p_happy,p_neutral,p_sad,p_surprise,error
- a face: face = 1, 2, ...; its box in displayed pixels; face_score = the detector's (empty when scored whole);
- an image without a face: face = 0, error = 'no face found' (not a failure);
- an input that cannot be scored: face empty, the reason in error.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from batch_job.pipeline import ImageResult
from batch_job.preprocessing import CLASSES

COLUMNS = ["path", "face", "left", "top", "width", "height", "face_score", "emotion", "confidence",
           *(f"p_{name}" for name in CLASSES), "error"]
FORMATS = ("csv", "jsonl")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP "CSV Injection": what spreadsheets take as formulas


def neutralised(cell: str) -> str:
    """A text cell a spreadsheet would run as a formula gets a leading ' (OWASP's advice); others unchanged."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


class RowWriter:
    """csv.writer with RFC 4180 quoting of CR too (the csv module quotes only the characters of its line
    terminator, so with '\n' a CR in a name would split the row), lines ending in '\n'."""

    def __init__(self, out: IO[str], neutralise: bool = True):
        self.out, self.neutralise = out, neutralise
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\r\n")

    def writerow(self, row: list[str]) -> None:
        if self.neutralise:
            row = [neutralised(row[0]), *row[1:-1], neutralised(row[-1])]  # path and error: the free text
        self.buffer.seek(0)
        self.buffer.truncate()
        self.writer.writerow(row)
        self.out.write(self.buffer.getvalue()[:-2] + "\n")


def to_rows(result: ImageResult) -> list[list[str]]:
    """The CSV rows of one input: one per face, or one saying why there is none."""
    if not result.faces:
        number = "" if result.failed else "0"
        return [[result.path, number, *([""] * (len(COLUMNS) - 3)), result.error]]
    rows = []
    for face in result.faces:
        score = "" if face.score is None else f"{face.score:.4f}"
        rows.append([result.path, str(face.number), *map(str, face.box), score, face.emotion, f"{face.confidence:.6f}",
                     *(f"{p:.6f}" for p in face.probabilities), ""])
    return rows


@dataclass
class Totals:
    """What a run did, for the summary line: N images, F faces, Z without a face, E errors."""
    images: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    skipped: int = 0  # files left out because their names are not image names

    @classmethod
    def of(cls, results: Iterable[ImageResult]) -> Totals:
        totals = cls()
        for result in results:
            totals.add(result)
        return totals

    def add(self, result: ImageResult) -> None:
        self.images += 1
        self.faces += len(result.faces)
        self.no_face += not result.faces and not result.failed
        self.errors += result.failed

    @property
    def rows(self) -> int:
        """Records written: one per face, one per image without a face, one per error."""
        return self.faces + self.no_face + self.errors

    def __str__(self) -> str:
        return (f"{self.images} images, {self.faces} faces, {self.no_face} without a face, "
                f"{self.errors} errors, {self.skipped} skipped (not images)")


def to_records(result: ImageResult) -> list[dict]:
    """The JSON Lines records of one input: the CSV's fields, with numbers as numbers and empty as null."""
    records = []
    for row in to_rows(result):
        record: dict = dict(zip(COLUMNS, (cell or None for cell in row), strict=True))
        for name in ("face", "left", "top", "width", "height"):
            record[name] = None if record[name] is None else int(record[name])
        for name in ("face_score", "confidence", *(f"p_{c}" for c in CLASSES)):
            record[name] = None if record[name] is None else float(record[name])
        records.append(record)
    return records


def format_for(dest: str, explicit: str | None = None) -> str:
    """The output format: as asked, else from DEST's extension (.jsonl, .ndjson), else CSV."""
    if explicit:
        return explicit
    return "jsonl" if dest.lower().endswith((".jsonl", ".ndjson", ".jsonl/", ".ndjson/")) else "csv"


def write_csv(results: Iterable[ImageResult], out: IO[str], neutralise: bool = True,
              fmt: str = "csv") -> Iterator[ImageResult]:
    """Write the header (CSV) and each result's records, passing each result on (for counting, progress)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
    writer = RowWriter(out, neutralise) if fmt == "csv" else None
    if writer:
        writer.writerow(list(COLUMNS))
    for result in results:
        if writer:
            for row in to_rows(result):
                writer.writerow(row)
        else:
            out.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in to_records(result)))
        yield result


def write_all(results: Iterable[ImageResult], out: IO[str],
              watch: Callable[[Iterator[ImageResult]], Iterable[ImageResult]] = iter,
              neutralise: bool = True, fmt: str = "csv") -> Totals:
    """Write the whole output; returns the totals. `watch` wraps the stream (e.g. a progress bar)."""
    totals = Totals()
    for result in watch(write_csv(results, out, neutralise, fmt)):
        totals.add(result)
    return totals
