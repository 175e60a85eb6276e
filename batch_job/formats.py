"""The output formats, CSV and JSON Lines: each one record (name, extension, content type, writer, reader,
Athena row format) that every writer, file namer, shard part, merge and Athena table uses. Adding a format
means adding a record here.

One record per face found (numbered largest first), else one record per input saying why not; the same
fields in both formats (columns()). JSON Lines gives numbers as numbers and empty cells as null, for pandas,
DuckDB, Athena, jq and BigQuery.

path,face,left,top,width,height,face_score,emotion,confidence,p_happy,p_neutral,p_sad,p_surprise,error
- a face: face = 1, 2, ...; its box in displayed pixels; face_score = the detector's (empty when scored whole);
- an image without a face: face = 0, error = 'no face found' (not a failure);
- an input that cannot be scored: face empty, the reason in error.

The free-text CSV cells (path, error) that a spreadsheet would run as a formula (starting with = + - @,
tab or CR) get a leading '; so that this stays reversible, one that starts with ' gets one more. restored()
undoes it, and the CSV reader does so for the cells it returns.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from batch_job.base import UsageError
from batch_job.results import CLASSES, ImageResult, Totals

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP "CSV Injection": what spreadsheets take as formulas
GUARD = "'"
FREE_TEXT = ("path", "error", "source_version")  # the cells that hold text from outside (names, messages)
INTEGER_FIELDS = ("face", "left", "top", "width", "height", "frame")
# Extensions of formats we do not write: an output named so would be a lie, so it is refused.
OTHER_FORMATS = frozenset({".xlsx", ".xls", ".xlsm", ".ods", ".json", ".parquet", ".tsv", ".txt", ".html",
                           ".htm", ".xml", ".avro", ".orc", ".feather", ".pdf", ".gz", ".zip"})


VERSION_COLUMN = "source_version"
LANDMARKS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")  # YuNet's five, in its order
LANDMARK_COLUMNS = [f"{point}_{axis}" for point in LANDMARKS for axis in "xy"]


VIDEO_COLUMNS = ["frame", "time_s"]


def columns(classes: tuple[str, ...] = CLASSES, versioned: bool = False, landmarks: bool = False,
            video: bool = False) -> list[str]:
    """The fields, in order. `versioned` (the cloud paths) adds source_version: which upload of the object was
    scored, so that a consumer can drop the rows of an event delivered twice (docs/cloud.md). `landmarks`
    (opt-in, --landmarks) adds the detector's five points: ten CSV columns, one nested JSON Lines field. Opt-in,
    so the default fields stay what tables and parsers built on earlier outputs expect. `video` (a run with
    videos) adds frame and time_s after path; an image's are empty."""
    return ["path", *(VIDEO_COLUMNS if video else []), "face", "left", "top", "width", "height", "face_score", "emotion", "confidence",
            *(f"p_{name}" for name in classes), *(LANDMARK_COLUMNS if landmarks else []), "error",
            *([VERSION_COLUMN] if versioned else [])]


COLUMNS = columns()


def neutralised(cell: str) -> str:
    """A text cell a spreadsheet would run as a formula gets a leading ' (OWASP's advice), and so does one that
    starts with ' already (so restored() can tell them apart); others unchanged."""
    return GUARD + cell if cell.startswith((*FORMULA_START, GUARD)) else cell


def restored(cell: str) -> str:
    """The text before neutralised()."""
    return cell[1:] if cell.startswith(GUARD) else cell


def to_rows(result: ImageResult, classes: tuple[str, ...] = CLASSES, versioned: bool = False,
            landmarks: bool = False, video: bool = False) -> list[list[str]]:
    """The records of one input as text cells in columns() order: one per face, or one saying why none."""
    rows = _rows(result, classes, versioned, landmarks)
    if video:
        when = ["" if result.frame is None else str(result.frame), "" if result.time_s is None else f"{result.time_s:.3f}"]
        rows = [[row[0], *when, *row[1:]] for row in rows]
    return rows


def _rows(result: ImageResult, classes: tuple[str, ...], versioned: bool, landmarks: bool) -> list[list[str]]:
    version = [result.version] if versioned else []
    blank_points = [""] * len(LANDMARK_COLUMNS) if landmarks else []
    if not result.faces:
        number = "" if result.failed else "0"
        return [[result.path, number, *([""] * (len(classes) + 7)), *blank_points, result.error, *version]]
    rows = []
    for face in result.faces:
        score = "" if face.score is None else f"{face.score:.4f}"
        points = [f"{v:.1f}" for xy in face.landmarks for v in xy] if landmarks and face.landmarks else blank_points
        rows.append([result.path, str(face.number), *map(str, face.box), score, face.emotion, f"{face.confidence:.6f}",
                     *(f"{p:.6f}" for p in face.probabilities), *points, "", *version])
    return rows


def to_record(row: list[str], names: list[str]) -> dict:
    """Text cells -> a JSON object: numbers as numbers, empty cells as null."""
    record: dict = dict(zip(names, (cell or None for cell in row), strict=True))
    for name, value in record.items():
        if value is not None and name in INTEGER_FIELDS:
            record[name] = int(value)
        elif value is not None and (name in ("face_score", "confidence", "time_s") or name.startswith("p_")
                                    or name in LANDMARK_COLUMNS):
            record[name] = float(value)
    if LANDMARK_COLUMNS[0] in record:  # JSON Lines nests them: {"right_eye": [x, y], ...}, or null
        points = {point: [record.pop(f"{point}_x"), record.pop(f"{point}_y")] for point in LANDMARKS}
        nested = None if points["nose"][0] is None else points
        ordered: dict = {}
        for name, value in record.items():
            if name == "error":
                ordered["landmarks"] = nested
            ordered[name] = value
        record = ordered
    return record


class RowWriter:
    """csv.writer with RFC 4180 quoting of CR too (the csv module quotes only the characters of its line
    terminator, so with '\\n' a CR in a name would split the row), lines ending in '\\n'."""

    def __init__(self, out: IO[str], neutralise: bool = True, free: Iterable[int] = ()):
        self.out, self.neutralise, self.free = out, neutralise, frozenset(free)  # free: the free-text cells
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\r\n")

    def line(self, row: list[str]) -> str:
        if self.neutralise:
            row = [neutralised(cell) if k in self.free else cell for k, cell in enumerate(row)]
        self.buffer.seek(0)
        self.buffer.truncate()
        self.writer.writerow(row)
        return self.buffer.getvalue()[:-2] + "\n"

    def writerow(self, row: list[str]) -> None:
        self.out.write(self.line(row))


class Writer:
    """Writes one format's header (if any) and rows to a text stream."""

    def __init__(self, fmt: OutputFormat, out: IO[str], names: list[str], neutralise: bool = True,
                 header: bool = True):
        self.fmt, self.out, self.names = fmt, out, names
        self.versioned = VERSION_COLUMN in names
        self.landmarks = LANDMARK_COLUMNS[0] in names
        self.video = VIDEO_COLUMNS[0] in names
        free = [k for k, name in enumerate(names) if name in FREE_TEXT]
        self.csv = RowWriter(out, neutralise, free) if fmt.name == "csv" else None
        if self.csv and header:
            self.csv.writerow(list(names))

    def line(self, row: list[str]) -> str:
        if self.csv:
            return self.csv.line(row)
        return json.dumps(to_record(row, self.names), ensure_ascii=False) + "\n"

    def row(self, row: list[str]) -> None:
        self.out.write(self.line(row))

    def result(self, result: ImageResult, classes: tuple[str, ...] = CLASSES) -> None:
        """All of one input's records in one write: an interrupted run keeps whole inputs only."""
        rows = to_rows(result, classes, self.versioned, self.landmarks, self.video)
        self.out.write("".join(self.line(row) for row in rows))


@dataclass(frozen=True)
class OutputFormat:
    name: str
    extension: str
    content_type: str
    other_extensions: tuple[str, ...] = ()

    def writer(self, out: IO[str], classes: tuple[str, ...] = CLASSES, neutralise: bool = True,
               versioned: bool = False, header: bool = True, landmarks: bool = False, video: bool = False) -> Writer:
        return Writer(self, out, columns(classes, versioned, landmarks, video), neutralise, header)

    def read(self, stream: Iterable[str]) -> tuple[list[str], Iterator[list[str]]]:
        """(field names, rows as text cells in that order): what this format's writer wrote, formula guard
        undone, JSON nulls as ''."""
        if self.name == "csv":
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                return [], iter(())
            free = [k for k, name in enumerate(header) if name in FREE_TEXT]
            return header, (_restore(row, free) for row in reader)
        lines = (line for line in stream if line.strip())
        first = next(lines, None)
        if first is None:
            return [], iter(())
        names = list(json.loads(first))
        return names, (_cells(json.loads(line), names) for line in itertools.chain([first], lines))

    def records(self, stream: Iterable[str]) -> Iterator[dict[str, str]]:
        """Each record as {field: text}, as csv.DictReader gives them."""
        names, rows = self.read(stream)
        for row in rows:
            yield dict(zip(names, row, strict=False))

    def athena_table(self, table: str, location: str, names: list[str]) -> str:
        """CREATE EXTERNAL TABLE over files of this format under `location` (s3://bucket/prefix/)."""
        if self.name == "csv":
            fields = ",\n".join(f"  `{name}` string" for name in names)
            return (f"CREATE EXTERNAL TABLE {table} (\n{fields}\n)\n"
                    "ROW FORMAT SERDE 'org.apache.hadoop.hive.serde2.OpenCSVSerde'\n"
                    f"LOCATION '{location}'\n"
                    "TBLPROPERTIES ('skip.header.line.count'='1');")
        fields = ",\n".join(f"  `{name}` {_athena_type(name)}" for name in names)
        return (f"CREATE EXTERNAL TABLE {table} (\n{fields}\n)\n"
                "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'\n"
                f"LOCATION '{location}';")

    def named(self, stem: str) -> str:
        return stem + self.extension

    def matches(self, name: str) -> bool:
        return name.lower().endswith((self.extension, *self.other_extensions))


def _restore(row: list[str], free: list[int]) -> list[str]:
    for k in free:
        if k < len(row):
            row[k] = restored(row[k])
    return row


def _cells(record: dict, names: list[str]) -> list[str]:
    return ["" if record.get(name) is None else str(record[name]) for name in names]


def _athena_type(name: str) -> str:
    if name in INTEGER_FIELDS:
        return "int"
    if name in ("face_score", "confidence") or name.startswith("p_"):
        return "double"
    return "string"


CSV = OutputFormat("csv", ".csv", "text/csv")
JSONL = OutputFormat("jsonl", ".jsonl", "application/x-ndjson", (".ndjson",))
FORMATS = {fmt.name: fmt for fmt in (CSV, JSONL)}
FORMAT_NAMES = tuple(FORMATS)


def get(name: str | OutputFormat) -> OutputFormat:
    """A format by name ('csv', 'jsonl'); UsageError for any other."""
    if isinstance(name, OutputFormat):
        return name
    try:
        return FORMATS[str(name).strip().lower()]
    except KeyError:
        raise UsageError(f"output format must be one of {', '.join(FORMAT_NAMES)}, not {name!r}") from None


def of_name(name: str) -> OutputFormat | None:
    """The format a file name's extension says (x.csv, x.jsonl, x.ndjson), or None."""
    return next((fmt for fmt in FORMATS.values() if fmt.matches(name)), None)


def for_destination(dest: str, explicit: str | None = None) -> tuple[OutputFormat, str | None]:
    """(the output's format, a warning or None): as asked, else from DEST's extension, else CSV.

    A DEST named for a format we do not write (out.xlsx, out.json) is refused, as is one whose extension
    contradicts --format; another extension gets CSV and a warning.
    """
    base = dest.rstrip("/")
    extension = posixpath.splitext(base)[1].lower() if dest not in ("-", "") else ""
    named = of_name(base)
    if extension in OTHER_FORMATS:
        raise UsageError(f"output {dest} names a {extension} file, but the output is "
                         f"{' or '.join(FORMAT_NAMES)}: name it .csv or .jsonl")
    if explicit:
        fmt = get(explicit)
        if named is not None and named is not fmt:
            raise UsageError(f"--format {fmt.name} but the output {dest} is named {named.extension}")
        return fmt, None
    if named is not None:
        return named, None
    if extension and not os.path.isdir(dest):
        return CSV, f"output {dest} has the extension {extension}: writing CSV (use .csv or .jsonl)"
    return CSV, None


def write(results: Iterable[ImageResult], out: IO[str], fmt: OutputFormat = CSV, classes: tuple[str, ...] = CLASSES,
          neutralise: bool = True, watch: Callable[[Iterator[ImageResult]], Iterable[ImageResult]] = iter,
          versioned: bool = False, header: bool = True, landmarks: bool = False, video: bool = False) -> Totals:
    """Write every result's records in `fmt` (after the header, if the format has one and `header`); returns the
    totals. `watch` wraps the stream of written results (a progress bar)."""
    writer = fmt.writer(out, classes, neutralise, versioned, header, landmarks, video)
    totals = Totals()

    def written() -> Iterator[ImageResult]:
        for result in results:
            writer.result(result, classes)
            yield result
    for result in watch(written()):
        totals.add(result)
    return totals


def done_paths(path: str, fmt: OutputFormat, names: list[str]) -> Iterator[str]:
    """The inputs an earlier, interrupted output holds, in order, each once (its rows are consecutive).
    Refuses one written with other columns (another version, other classes)."""
    with open(path, encoding="utf-8", newline="") as f:
        header, rows = fmt.read(f)
        if header and header != names:
            raise UsageError(f"{path} was written with other columns ({','.join(header)}): cannot resume from it")
        at = header.index("path") if header else 0
        last = None
        for row in rows:
            if row[at] != last:
                last = row[at]
                yield last


__all__ = ["COLUMNS", "CSV", "JSONL", "FORMATS", "FORMAT_NAMES", "OutputFormat", "columns", "for_destination",
           "get", "neutralised", "restored", "to_rows", "write"]
