"""python -m batch_job run SOURCE... [--output DEST] [--faces auto|detect|whole] [--annotate DIR] [--model PATH]

SOURCE and DEST may be local paths or s3:// URLs (s3://bucket/prefix, s3://bucket/key.jpg, s3://bucket/out.csv).
Other commands: report (an HTML page from a CSV), evaluate (accuracy when paths name their class), cost.

Exit status: 0 every image scored; 3 some rows carry errors (the CSV is still complete);
2 usage error; 1 fatal error (missing model, unreadable source). Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from batch_job.analysis import DEFAULT_FACE_MODE, FACE_MODES
from batch_job.csv_output import Totals, write_all
from batch_job.faces import DetectorError, FaceDetector
from batch_job.model import EmotionModel, ModelError, default_model_path
from batch_job.pipeline import predict
from batch_job.sources import SourceError, items_for, non_empty

DEFAULT_OUTPUT = "predictions.csv"
EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_SOME_ERRORS = 0, 1, 2, 3


class FatalError(RuntimeError):
    """Stops the run with exit status 1 and a one-line message."""


@contextmanager
def open_output(dest: str) -> Iterator[IO[str]]:
    """stdout for '-', else a temp file renamed into place (or uploaded to s3://) only when the CSV is complete."""
    if dest == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    if dest.startswith("s3://"):
        from batch_job.s3 import DestinationError, csv_destination

        try:
            with csv_destination(dest) as out:
                yield out
        except DestinationError as error:
            raise FatalError(str(error)) from None
        return
    target = Path(dest)
    if not target.parent.is_dir():
        raise FatalError(f"output folder does not exist: {target.parent}")
    fd, tmp = tempfile.mkstemp(prefix=".predictions-", suffix=".csv", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="") as out:
            yield out
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def face_mode_default() -> str:
    """$FACES when set (the Lambda function and Batch jobs use it), else auto."""
    return os.environ.get("FACES", "").strip().lower() or DEFAULT_FACE_MODE


def score(sources: list[str], dest: str, model_path: str | None, batch_size: int, workers: int | None,
          progress: bool, faces: str = DEFAULT_FACE_MODE, annotate: str | None = None) -> tuple[Totals, float]:
    """Score every input into one CSV; returns the totals and the seconds it took."""
    from tqdm import tqdm

    model = EmotionModel(model_path)
    detector = FaceDetector() if faces != "whole" else None
    if workers is None and any(source.startswith("s3://") for source in sources):
        from batch_job.s3 import S3_WORKERS

        workers = S3_WORKERS  # S3 fetches wait on the network: more threads than CPUs
    items = non_empty(items_for(sources))
    if items is None:
        raise FatalError(f"no image files found in {' '.join(sources)}")
    total = sum(1 for _ in items_for(sources)) if progress else None
    if annotate:
        from batch_job.annotate import Annotator

        annotator = Annotator(annotate)
        items = annotator.remember(items)
    started = time.perf_counter()
    with open_output(dest) as out:
        results = predict(items, model, batch_size, workers, faces, detector)
        if annotate:
            results = annotator.draw_all(results)
        totals = write_all(results, out, lambda stream: tqdm(
            stream, total=total, unit="img", disable=not progress, file=sys.stderr))
    return totals, time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batch_job",
                                     description="Score face images with the emotion model; write a CSV.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="score a folder, image files, or several of them")
    run.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="image file or folder (searched recursively), s3://bucket/prefix or "
                          "s3://bucket/key.jpg; several may be given")
    run.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                     help=f"CSV to write, s3://bucket/key.csv, or '-' for stdout (default: {DEFAULT_OUTPUT})")
    run.add_argument("--faces", choices=FACE_MODES, default=face_mode_default(),
                     help="auto: find the faces, and score a small image (a face crop) whole when none is found; "
                          "detect: only the faces found; whole: each image is one face crop "
                          f"(default: $FACES or {DEFAULT_FACE_MODE})")
    run.add_argument("--annotate", metavar="DIR",
                     help="also write a copy of each image with its faces boxed and labelled into DIR")
    run.add_argument("--model", help=f"ONNX model (default: $MODEL_PATH or {default_model_path()})")
    run.add_argument("--batch-size", type=_positive, default=256, help="images per inference call (default 256)")
    run.add_argument("--workers", type=_positive, help="decode/fetch threads (default: CPUs + 4; 32 with s3:// sources)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    cost = sub.add_parser("cost", help="estimate the cost of scoring N images on Lambda, Batch and a GPU")
    cost.add_argument("--images", type=_positive, required=True, help="number of images")
    cost.add_argument("--memory-mb", type=_positive, default=2048, help="Lambda memory (default 2048)")
    cost.add_argument("--images-per-invocation", type=_positive, default=100,
                      help="images per Lambda invocation (the template's SQS batch size; default 100)")
    cost.add_argument("--lambda-gb-second", type=float, help="price override, USD")
    cost.add_argument("--s3-get-per-1000", type=float, help="price override, USD")
    cost.add_argument("--json", action="store_true", help="print JSON instead of text")
    evaluate = sub.add_parser("evaluate", help="accuracy of a predictions CSV whose paths contain class folders")
    evaluate.add_argument("csv")
    report = sub.add_parser("report", help="one self-contained HTML page from a predictions CSV")
    report.add_argument("csv")
    report.add_argument("--images", metavar="SOURCE",
                        help="the folder (or s3://bucket/prefix) the CSV was made from: adds face thumbnails")
    report.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def print_evaluation(csv_path: str) -> int:
    from batch_job.evaluate import evaluate

    try:
        result = evaluate(csv_path)
    except (OSError, KeyError) as error:
        print(f"error: cannot evaluate {csv_path}: {error}", file=sys.stderr)
        return EXIT_FATAL
    if not result["images"]:
        print(f"error: no row of {csv_path} has a class folder (happy/, sad/...) in its path", file=sys.stderr)
        return EXIT_FATAL
    per_class = ", ".join(f"{name} {acc:.3f}" for name, acc in result["per_class"].items())
    print(f"accuracy {result['accuracy']:.4f} on {result['images']} labelled images ({per_class})")
    return EXIT_OK


def print_cost(args: argparse.Namespace) -> int:
    import json

    from batch_job.cost import Prices, estimate, format_estimate

    prices = Prices()
    if args.lambda_gb_second is not None:
        prices.lambda_gb_second = args.lambda_gb_second
    if args.s3_get_per_1000 is not None:
        prices.s3_get = args.s3_get_per_1000 / 1000
    result = estimate(args.images, args.memory_mb, args.images_per_invocation, prices)
    print(json.dumps(result, indent=2) if args.json else format_estimate(result))
    return EXIT_OK


def write_report(args: argparse.Namespace) -> int:
    from batch_job.report import ReportError, build_report

    try:
        summary = build_report(args.csv, args.output, args.images)
    except (OSError, ReportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL
    print(f"report of {summary} -> {args.output}", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        return print_evaluation(args.csv)
    if args.command == "cost":
        return print_cost(args)
    if args.command == "report":
        return write_report(args)
    if args.faces not in FACE_MODES:  # from $FACES; argparse checked a command-line value already
        print(f"error: FACES={args.faces!r}: expected one of {', '.join(FACE_MODES)}", file=sys.stderr)
        return EXIT_USAGE
    progress = sys.stderr.isatty() and not args.no_progress
    try:
        totals, seconds = score(args.sources, args.output, args.model, args.batch_size, args.workers, progress,
                                args.faces, args.annotate)
    except (ModelError, DetectorError, SourceError, FatalError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_FATAL
    rate = totals.images / seconds if seconds > 0 else float("inf")
    where = "stdout" if args.output == "-" else args.output
    print(f"scored {totals} in {seconds:.1f} s, {rate:.0f} images/s -> {where}", file=sys.stderr)
    return EXIT_SOME_ERRORS if totals.errors else EXIT_OK
