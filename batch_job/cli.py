"""emotion-batch (or python -m batch_job) run SOURCE... [-o DEST] [--faces auto|detect|whole] [--format csv|jsonl]

SOURCE and DEST may be local paths or s3:// URLs (s3://bucket/prefix, s3://bucket/key.jpg, s3://bucket/out.csv).
Other commands: report (an HTML page from a CSV), evaluate (accuracy when paths name their class), cost, and the
bulk path's submit, status and merge (batch_job/bulk_cli.py).

Exit status: 0 every image read (images without a face included); 3 some rows carry errors (the CSV is still
complete); 2 usage error; 1 fatal error (missing model, unreadable source, unwritable output); 128 + the signal
number when stopped by one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), 141 when the reader of stdout went away.
Errors are one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import NoReturn

from batch_job import bulk_cli
from batch_job.base import BatchJobError, DestinationError, Item, UsageError, is_s3_url
from batch_job.destinations import OutputClosed, open_destination
from batch_job.formats import FORMAT_NAMES, for_destination
from batch_job.results import Totals
from batch_job.settings import DEFAULT_FACE_MODE, FACE_MODES, MAX_BATCH_SIZE, MAX_WORKERS, PRECISIONS, Settings
from batch_job.shard import in_shard, output_for, shard_argument
from batch_job.sources import non_empty, open_sources

DEFAULT_OUTPUT = "predictions.csv"
EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_SOME_ERRORS = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + 13


class FatalError(BatchJobError):
    """Stops the run with exit status 1 and a one-line message (kept for callers that raise it)."""


class Stopped(BaseException):
    """A signal asked the run to stop (SIGTERM from AWS Batch or docker stop, SIGHUP): like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def skip_done(items: Iterable[Item], done: Iterable[str]) -> tuple[int, Iterator[Item]]:
    """(how many inputs an interrupted run already scored, the rest): they are the first inputs of the same
    listing, in the same order, or the inputs changed and resuming would be wrong."""
    rest = iter(items)
    count = 0
    for path in done:
        item = next(rest, None)
        if item is None or item.path != path:
            now = "nothing more" if item is None else repr(item.path)
            raise UsageError(f"the inputs changed since the interrupted run (its output has {path!r} where the "
                             f"inputs now have {now}): run without --resume")
        count += 1
    return count, rest


def score(sources: list[str], dest: str, settings: Settings, progress: bool, annotate: str | None = None,
          shard: tuple[int, int] | None = None, raw_csv: bool = False, resume: bool = False,
          full_size: bool = False) -> tuple[Totals, float, int]:
    """Score every input into one output (settings.output_format); returns the totals and the seconds it took.
    The destination is checked before anything is loaded or scored. A thin user of the library API (Scorer).
    resume: start from DEST.partial, the rows an interrupted run kept (returns how many inputs it had)."""
    from tqdm import tqdm

    from batch_job import formats
    from batch_job.api import Scorer

    opened = open_sources(sources)
    for source, cover in opened.dropped:
        print(f"note: {source} is already part of {cover}: scored once", file=sys.stderr)
    destination = open_destination(dest, opened.kept, settings.output_format)
    try:
        if settings.workers is None and any(is_s3_url(source) for source in opened.kept):
            from batch_job.s3 import S3_WORKERS

            settings = settings.replace(workers=S3_WORKERS)  # S3 fetches wait on the network: more threads
        scorer = Scorer(settings=settings)

        def listed(counting: bool = True):
            """The inputs; a second look (counting=False: for the progress total, the video check) walks a fresh
            listing, so what it skips is not counted twice."""
            source = opened if counting else open_sources(opened.kept)
            return in_shard(source.items(), *shard) if shard else source.items()

        items = non_empty(listed())
        if items is None and not shard:  # an empty shard still writes its (header-only) part
            raise FatalError(f"no image or video files found in {' '.join(sources)}")
        from batch_job.video import is_video

        video = any(is_video(item) for item in listed(False))  # frame and time_s columns
        if resume and video:
            raise UsageError("--resume does not take runs with videos yet: run them again without it")
        earlier = destination.partial() if resume else None
        resumed = 0
        if resume and earlier is None:
            print(f"note: no interrupted output ({dest}.partial) to resume: scoring everything", file=sys.stderr)
        if earlier:
            names = formats.columns(scorer.classes, landmarks=settings.landmarks)
            resumed, items = skip_done(items or iter(()), formats.done_paths(earlier, settings.output_format, names))
            print(f"note: resuming after the {resumed} inputs in {dest}.partial", file=sys.stderr)
        total = (sum(1 for _ in listed(False)) - resumed) if progress and not video else None
        if annotate:
            from batch_job.annotate import MAX_SIDE, Annotator

            annotator = Annotator(annotate, None if full_size else MAX_SIDE)
            items = annotator.remember(items or iter(()))
        started = time.perf_counter()
        with destination.open(resume=earlier) as out:
            results = scorer.score_items(items or iter(()))
            if annotate:
                results = annotator.draw_all(results)
            totals = formats.write(results, out, settings.output_format, scorer.classes, neutralise=not raw_csv,
                                   watch=lambda stream: tqdm(stream, total=total, unit="img", disable=not progress,
                                                             file=sys.stderr), header=earlier is None,
                                   landmarks=settings.landmarks, video=video)
        if earlier:
            destination.forget_partial()
        totals.skipped = opened.stats.skipped
        totals.skipped_videos = scorer.video_stats.skipped
        seconds = time.perf_counter() - started
        if dest != "-" and not is_s3_url(dest) and os.path.isfile(dest) and not shard:  # parts/ is Athena's alone
            write_run_record(dest, scorer, sources, f"{totals} in {seconds:.1f} s")
        return totals, seconds, resumed
    finally:
        destination.close()


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped option or command (Python 3.11's argparse has none)."""

    def error(self, message: str) -> NoReturn:
        import difflib
        import re

        known: list[str] = []
        parsers = [self]
        while parsers:  # this parser's options and commands, and its commands' options
            parser = parsers.pop()
            known += [o for action in parser._actions for o in action.option_strings]
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    known += list(action.choices)
                    parsers += list(action.choices.values())
        words = re.findall(r"unrecognized arguments: (.*)$", message)
        words = words[0].split() if words else re.findall(r"invalid choice: '([^']*)'", message)
        for word in words:
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]}?)"
                break
        super().error(message)


def write_run_record(dest: str, scorer, sources: list[str], summary: str) -> None:
    """DEST.run.json: which model, precision and settings wrote DEST, for the report's header and for anyone
    who finds the file later. Best effort: a record that cannot be written costs nothing else."""
    import json
    from datetime import UTC, datetime

    from batch_job import __version__
    from batch_job.report import RUN_RECORD

    card = scorer.model.card.properties
    settings = scorer.settings
    record = {"version": __version__, "sources": sources, "summary": summary,
              "finished": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
              "faces": settings.faces, "output_format": settings.output_format.name,
              "model": {"name": card.get("model_name", "unnamed"), "file": scorer.model.path.name,
                        "precision": "int8" if scorer.model.path.name.endswith(".int8.onnx") else "fp32",
                        "graph_sha256": card.get("graph_sha256", "")},
              "detector": {"min_face_size": settings.min_face_size, "threshold": settings.threshold,
                           "max_faces": settings.max_faces}}
    try:
        with open(dest + RUN_RECORD, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    except OSError as error:
        print(f"warning: cannot write {dest}{RUN_RECORD}: {error.strerror or error}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="emotion-batch",
                                     description="Find the faces in images and score their emotion; write a CSV. "
                                                 "`python -m batch_job` is the same command.")
    parser.add_argument("--version", action=_Version, help="print the version and the models' names")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="score a folder, image files, or several of them")
    run.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="image file or folder (searched recursively), s3://bucket/prefix or "
                          "s3://bucket/key.jpg; several may be given")
    run.add_argument("-o", "--output",
                     help=f"CSV (or .jsonl) to write, s3://bucket/key.csv, or '-' for stdout (default: "
                          f"{DEFAULT_OUTPUT}, or DIR/{DEFAULT_OUTPUT} with --annotate DIR)")
    run.add_argument("--faces", choices=FACE_MODES,
                     help="auto: find the faces, and score a small image (a face crop) whole when none is found; "
                          "detect: only the faces found; whole: each image is one face crop "
                          f"(default: $FACES or {DEFAULT_FACE_MODE})")
    run.add_argument("--min-face-size", type=_bounded(100_000), metavar="PX",
                     help="the smallest face to report, in pixels of the box's longer side (default: 2%% of the "
                          "image's shorter side, at least 16); a larger one also lets the detector run on a "
                          "smaller image, faster")
    run.add_argument("--threshold", type=_above_zero(1, inclusive=False), help="the detector's score a face needs, 0-1 (default 0.6)")
    run.add_argument("--max-faces", type=_bounded(1000), metavar="N",
                     help="report at most N faces per image, the largest first (default 1000)")
    run.add_argument("--fps", type=_above_zero(60, inclusive=True),
                     help="frames sampled a second from videos (.mp4 .mov .m4v .mkv .avi .webm; default 1): one row "
                          "per face per frame, with frame and time_s columns (needs the video extra: pip install "
                          "'emotion-batch-scoring[video]')")
    run.add_argument("--landmarks", action="store_true",
                     help="add each face's five landmarks (eyes, nose, mouth corners): ten CSV columns, or one "
                          "nested 'landmarks' field in JSON Lines")
    run.add_argument("--annotate", metavar="DIR",
                     help="also write a copy of each image with its faces boxed and labelled into DIR")
    run.add_argument("--annotate-full-size", action="store_true",
                     help="keep the annotated copies at the original resolution (default: at most 2048 px a side)")
    run.add_argument("--model", help="ONNX model (default: $MODEL_PATH or the shipped models/emotion.onnx)")
    run.add_argument("--precision", choices=PRECISIONS,
                     help="fp32, int8, or auto: INT8 where this CPU runs it accurately (default: $PRECISION or "
                          "auto; see docs/performance.md)")
    run.add_argument("--batch-size", type=_bounded(MAX_BATCH_SIZE),
                     help=f"faces per inference call, 1 to {MAX_BATCH_SIZE} (default 256)")
    run.add_argument("--workers", type=_bounded(MAX_WORKERS),
                     help="decode/fetch threads (default: CPUs + 4; 32 with s3:// sources)")
    run.add_argument("--shard", type=shard_argument, metavar="I/N",
                     help="score only shard I of N (0-based) by a stable hash of each path; 'array/N' takes I from "
                          "AWS_BATCH_JOB_ARRAY_INDEX. An OUTPUT ending in '/' gets OUTPUT/parts/part-shard-I-of-N.csv")
    run.add_argument("--format", choices=FORMAT_NAMES,
                     help="csv or jsonl (JSON Lines: the same fields, one record per line; default: from DEST's "
                          "extension, .jsonl or .ndjson, else csv)")
    run.add_argument("--raw-csv", action="store_true",
                     help="write paths and errors that start with = + - @ as they are (by default they get a "
                          "leading ' so spreadsheets do not run them as formulas)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run: its rows are in DEST.partial (kept on Ctrl-C or SIGTERM); "
                          "only the inputs it had not scored are scored, and DEST is the whole output")
    run.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    cost = sub.add_parser("cost", help="estimate the cost of scoring N images on each path, beside Rekognition")
    cost.add_argument("--images", type=_bounded(10**15), required=True, help="number of images")
    cost.add_argument("--workload", choices=("photos", "crops"), default="photos",
                      help="photos (~200 KB, ~7 faces) or 48x48 face crops; both with their faces found, the "
                           "template's default mode (default photos)")
    cost.add_argument("--memory-mb", type=_bounded(10240), default=2048,
                      help="the functions' memory (default 2048, the template's)")
    cost.add_argument("--images-per-invocation", type=_bounded(10**6), default=100,
                      help="images per upload-queue invocation (the template's SQS batch size, 100, when uploads "
                           "arrive in bursts; 1 when they trickle in)")
    cost.add_argument("--shards", type=_bounded(10_000), help="Batch array size (default: enough for 6 h a child)")
    cost.add_argument("--nat", action="store_true",
                      help="Batch's S3 traffic through a NAT gateway (no S3 gateway endpoint: not the template)")
    cost.add_argument("--cpu-class", help="whose measured rate (default: this CPU's class, else the slowest measured)")
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
    bulk_cli.register(sub)
    return parser


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from batch_job import __version__
        from batch_job.api import load_models

        try:
            model, _ = load_models(Settings.from_env(faces="whole"))
            name = model.card.properties.get("model_name", "unnamed")
            name += ", INT8 on this CPU" if model.path.name.endswith(".int8.onnx") else ""
        except BatchJobError as error:
            name = f"not loadable: {error}"
        print(f"emotion-batch {__version__} (model {name}, face detector YuNet)")
        parser.exit()


def _above_zero(most: float, inclusive: bool):
    """An argparse type: a number above 0 and below `most` (or at most, when `inclusive`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value < most and not (inclusive and value == most):
            bound = f"at most {most:g}" if inclusive else f"below {most:g}"
            raise argparse.ArgumentTypeError(f"must be above 0 and {bound}: {text}")
        return value
    return parse


def _bounded(most: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}: {text}")
        return value
    return parse


def print_evaluation(csv_path: str) -> int:
    from batch_job.evaluate import evaluate

    try:
        result = evaluate(csv_path)
    except (OSError, KeyError, UnicodeDecodeError) as error:
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

    from batch_job.cost import Prices, estimate, format_estimate, rate_for

    prices = Prices()
    if args.lambda_gb_second is not None:
        prices.lambda_gb_second = args.lambda_gb_second
    if args.s3_get_per_1000 is not None:
        prices.s3_get = args.s3_get_per_1000 / 1000
    try:
        rate = rate_for(args.workload, args.cpu_class)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL
    result = estimate(args.images, args.workload, args.memory_mb, args.images_per_invocation, prices, rate,
                      args.shards, args.nat)
    print(json.dumps(result, indent=2) if args.json else format_estimate(result))
    return EXIT_OK


def write_report(args: argparse.Namespace) -> int:
    from batch_job.report import ReportError, build_report

    try:
        summary = build_report(args.csv, args.output, args.images)
    except (OSError, ReportError, BatchJobError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL
    print(f"report of {summary} -> {args.output}", file=sys.stderr)
    return EXIT_OK


def _stop(signum, frame) -> None:
    raise Stopped(signum)


def _one_line_warnings() -> None:
    """Library warnings (Pillow's 'Corrupt EXIF data', ...) as one 'warning:' line each, each message once."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)
    warnings.showwarning = show


def output_of(args: argparse.Namespace) -> str:
    """-o as given; else predictions.csv, inside the --annotate folder when there is one (so a run with
    annotations never replaces the predictions.csv of an earlier run in the working folder)."""
    if args.output:
        if args.shard:  # a run folder gets its part, named in the format asked (a part's name tells merge)
            from batch_job.formats import get

            index, count = args.shard
            return output_for(args.output, index, count, get(args.format or "csv").extension)
        return args.output
    return os.path.join(args.annotate, DEFAULT_OUTPUT) if args.annotate else DEFAULT_OUTPUT


def run_command(args: argparse.Namespace) -> int:
    output = output_of(args)
    progress = sys.stderr.isatty() and not args.no_progress
    try:
        fmt, warning = for_destination(output, args.format)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        settings = Settings.from_env(faces=args.faces, precision=args.precision, output_format=fmt,
                                     batch_size=args.batch_size, workers=args.workers, model=args.model,
                                     min_face_size=args.min_face_size, threshold=args.threshold,
                                     max_faces=args.max_faces, landmarks=args.landmarks or None, fps=args.fps)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if (args.shard or args.annotate) and output != "-" and not is_s3_url(output):
            try:
                os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
            except OSError as error:
                raise DestinationError(f"cannot create {os.path.dirname(output)}: {error.strerror}") from None
        totals, seconds, resumed = score(args.sources, output, settings, progress, args.annotate, args.shard,
                                         args.raw_csv, args.resume, args.annotate_full_size)
    except BatchJobError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL
    except OutputClosed:
        return EXIT_BROKEN_PIPE
    rate = totals.images / seconds if seconds > 0 else float("inf")
    where = "stdout" if output == "-" else output
    annotated = f"; annotated copies in {args.annotate}" if args.annotate else ""
    annotated += f"; the first {resumed} inputs from the interrupted run" if resumed else ""
    print(f"scored {totals} in {seconds:.1f} s, {rate:.0f} images/s -> {where}{annotated}", file=sys.stderr)
    return EXIT_SOME_ERRORS if totals.errors else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """The command line. Ctrl-C at any moment (even while the libraries load) ends it with one line and 130."""
    try:
        try:
            return _main(argv)
        except ImportError as error:
            # A Ctrl-C or signal that hits onnxruntime's compiled extension while it loads comes out as
            # ImportError("initialization failed") raised from the interrupt: handle the interrupt itself.
            if isinstance(error.__cause__, (KeyboardInterrupt, Stopped)):
                raise error.__cause__ from None
            raise
    except KeyboardInterrupt as stop:
        print(f"error: interrupted; {_kept(stop)}", file=sys.stderr)
        return 128 + signal.SIGINT
    except Stopped as stop:
        print(f"error: stopped by {signal.Signals(stop.signum).name}; {_kept(stop)}", file=sys.stderr)
        return 128 + stop.signum


def _kept(stop: BaseException) -> str:
    partial = getattr(stop, "partial", None)
    if partial:
        return f"the rows scored so far are in {partial}: run the same command with --resume to finish"
    return "nothing written"


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    status = bulk_cli.dispatch(args)
    if status is not None:
        return status
    if args.command == "evaluate":
        return print_evaluation(args.csv)
    if args.command == "cost":
        return print_cost(args)
    if args.command == "report":
        return write_report(args)
    _one_line_warnings()
    from PIL import Image

    from batch_job.preprocessing import MAX_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # this process is ours: Pillow's own limit is ours (the library leaves it)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # such images get an error row
    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _stop)
    except ValueError:  # not the main thread (an embedding program): leave its signals alone
        previous = {}
    try:
        return run_command(args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = ["main", "score", "FatalError"]
