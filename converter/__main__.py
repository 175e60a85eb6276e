"""python -m converter KERAS_MODEL_OR_RUN_DIR [--output models/emotion.onnx] [--data DIR] [--tolerance T]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converter.export import ParityError, export


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter",
                                     description="Export a trained Keras model to ONNX with a parity check.")
    parser.add_argument("model", type=Path, help="a .keras file, or a run folder holding model.keras")
    parser.add_argument("--output", type=Path, default=Path("models/emotion.onnx"))
    parser.add_argument("--data", help="dataset folder (default $EMOTION_DATA_DIR or ../shared/data/...)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |Keras - ONNX| probability difference")
    args = parser.parse_args(argv)
    path = args.model / "model.keras" if args.model.is_dir() else args.model
    if not path.is_file():
        print(f"error: no Keras model at {path}", file=sys.stderr)
        return 1
    try:
        card = export(path, args.output, args.data, args.tolerance)
    except (ParityError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    metrics, parity = card["metrics"], card["parity"]
    print(f"wrote {args.output}: parity max |diff| {parity['max_abs_diff']:.2g} on {parity['images']} images; "
          f"test acc {metrics['test']['accuracy']:.4f} (unique {metrics['test_unique']['accuracy']:.4f}), "
          f"validation acc {metrics['validation']['accuracy']:.4f}"
          + "".join(f", {name} {metrics[name]['accuracy']:.4f} (n {metrics[name]['n']})"
                    for name in ("peer", "fer_plus") if name in metrics)
          + "; onnxruntime "
          f"{card['onnx_images_per_second']['images_per_second']:,.0f} images/s here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
