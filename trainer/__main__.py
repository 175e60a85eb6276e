"""python -m trainer run CONFIG [--data DIR] [--runs-dir DIR]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.config import ConfigError, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Train emotion models from configs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="train one config (trainer/configs/*.toml)")
    run_p.add_argument("config", type=Path)
    run_p.add_argument("--data", help="dataset folder with train/validation/test (default $EMOTION_DATA_DIR "
                                      "or ../shared/data/facial_emotion_images)")
    run_p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run folders go (default runs/)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from trainer.train import run

    try:
        run(config, args.data, args.runs_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
