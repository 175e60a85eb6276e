"""What a finished run writes for people to judge it: metrics.json, plots, reports, test predictions."""
from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix  # noqa: E402

from batch_job.preprocessing import with_channels  # noqa: E402
from batch_job.results import CLASSES  # noqa: E402
from trainer import evaluation  # noqa: E402


def markdown_table(frame: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A GitHub Markdown table (no tabulate dependency); floats formatted, missing values blank."""
    def cell(value) -> str:
        if value is None or (np.isscalar(value) and pd.isna(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return floatfmt.format(value)
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def plot_learning_curves(history_csv: Path, out: Path) -> None:
    history = pd.read_csv(history_csv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(history["epoch"] + 1, history[metric], label="train")
        ax.plot(history["epoch"] + 1, history[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, title: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def keras_images_per_second(model, x: np.ndarray, batch_size: int = 256) -> float:
    model.predict(x[:batch_size].astype(np.float32), batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0)
    return len(x) / (time.perf_counter() - started)


def write_run_report(run_dir: Path, model, config, root: Path, train_seconds: float,
                     data: evaluation.EvaluationData | None = None) -> dict:
    """Score the run's model.keras (`model`, four outputs) with trainer/evaluation.py on every subset and write the
    run folder's report: metrics.json, classification report and confusion matrix (test), test predictions."""
    data = data or evaluation.load(root)
    predict = evaluation.keras_predict(model)
    subsets, probs = evaluation.evaluate(predict, data)
    pred = {name: p.argmax(axis=1) for name, p in probs.items()}
    y_test = data.splits["test"].labels
    channels = int(model.input_shape[-1])
    metrics = {
        "name": config.name, "model": config.model, "channels": channels,
        "parameters": int(model.count_params()),
        "size_mb": round((run_dir / "model.keras").stat().st_size / 1e6, 3),
        "train_seconds": round(train_seconds, 1),
        "epochs_run": int(len(pd.read_csv(history))) if (history := run_dir / "history.csv").is_file() else None,
        "keras_images_per_second": round(keras_images_per_second(
            model, with_channels(data.pixels["validation"], channels)), 1),
        **subsets,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "classification_report.txt").write_text(
        classification_report(y_test, pred["test"], target_names=list(CLASSES), digits=4, zero_division=0))
    matrix = confusion_matrix(y_test, pred["test"], labels=range(len(CLASSES)))
    pd.DataFrame(matrix, index=list(CLASSES), columns=list(CLASSES)).to_csv(run_dir / "confusion_matrix.csv")
    plot_confusion(matrix, f"{config.name}: test (acc {metrics['test']['accuracy']:.3f})",
                   run_dir / "confusion_matrix.png")
    if history.is_file():  # an ensemble of trained runs has no training history of its own
        plot_learning_curves(history, run_dir / "learning_curves.png")
    table = pd.DataFrame(probs["test"], columns=[f"p_{c}" for c in CLASSES]).round(6)
    table.insert(0, "predicted", [CLASSES[i] for i in pred["test"]])
    table.insert(0, "label", [CLASSES[i] for i in y_test])
    table.insert(0, "path", data.names("test"))
    table.insert(3, "unique", data.masks["test_unique"])
    table.to_csv(run_dir / "test_predictions.csv", index=False)
    print(f"[{config.name}] " + ", ".join(f"{name} {s['accuracy']:.4f} (n {s['n']})" for name, s in subsets.items()
                                          if s["n"])
          + f" -> {run_dir}", flush=True)
    return metrics


def rescore_run(run_dir: Path, model_path: Path | None = None, root: Path | None = None,
                mirror: bool = False) -> dict:
    """Recompute a finished run's scores with trainer/evaluation.py from its model file (default
    run_dir/model.keras, or the .onnx file it was exported to), keeping what the run measured itself (training
    time, speeds): how runs scored before a subset existed get its numbers without training again, even when
    only their shipped ONNX file is left (git history of models/emotion.onnx). mirror averages each face with its
    horizontal mirror, as `ensemble --tta` does: a TTA run rescored from its single member's file."""
    run_dir = Path(run_dir)
    model_path = Path(model_path or run_dir / "model.keras")
    record_path = run_dir / "metrics.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json (not a finished run)")
    if model_path.suffix == ".onnx":
        predict = evaluation.onnx_predict(model_path)
    else:
        import keras

        import trainer.models  # noqa: F401  registers the custom layers saved models use
        predict = evaluation.keras_predict(keras.models.load_model(model_path, compile=False))
    subsets, _ = evaluation.evaluate(evaluation.mirrored(predict) if mirror else predict, evaluation.load(root))
    record = json.loads(record_path.read_text())
    record.update(subsets)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[{record.get('name', run_dir.name)}] rescored from {model_path}:", flush=True)
    print(evaluation.summary(subsets).to_string(index=False), flush=True)
    return record
