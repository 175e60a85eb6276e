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
from sklearn.metrics import (accuracy_score, classification_report, confusion_matrix, f1_score,  # noqa: E402
                             precision_recall_fscore_support)

from batch_job.preprocessing import CLASSES  # noqa: E402
from trainer import data as dataset  # noqa: E402


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """The reference study's columns (weighted P/R/F1, accuracy) plus macro F1."""
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)), "n": int(len(y_true))}


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
    for ax, metric in zip(axes, ("loss", "accuracy")):
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


def write_run_report(run_dir: Path, model, config, x: dict, y: dict, root: Path, splits: dict,
                     train_seconds: float) -> dict:
    """Score on validation and test (also on their images with no copy in the training data) and write the run
    folder's report. `splits` are the ones the run trained with (trainer.data.load_splits of `root`)."""
    unique_test = dataset.unique_test_mask(root)
    unique_validation = dataset.unseen_mask(splits["validation"], splits["train"])
    test_names = [str(p.relative_to(root)) for p in splits["test"].paths]
    probs = {name: model.predict(x[name].astype(np.float32), batch_size=256, verbose=0)
             for name in ("validation", "test")}
    pred = {name: p.argmax(axis=1) for name, p in probs.items()}
    metrics = {
        "name": config.name, "model": config.model, "channels": config.channels,
        "parameters": int(model.count_params()),
        "size_mb": round((run_dir / "model.keras").stat().st_size / 1e6, 3),
        "train_seconds": round(train_seconds, 1),
        "epochs_run": int(len(pd.read_csv(history))) if (history := run_dir / "history.csv").is_file() else None,
        "keras_images_per_second": round(keras_images_per_second(model, x["validation"]), 1),
        "validation": scores(y["validation"], pred["validation"]),
        "test": scores(y["test"], pred["test"]),
        "test_unique": scores(y["test"][unique_test], pred["test"][unique_test]),
        "validation_unique": scores(y["validation"][unique_validation], pred["validation"][unique_validation]),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "classification_report.txt").write_text(
        classification_report(y["test"], pred["test"], target_names=list(CLASSES), digits=4, zero_division=0))
    matrix = confusion_matrix(y["test"], pred["test"], labels=range(len(CLASSES)))
    pd.DataFrame(matrix, index=list(CLASSES), columns=list(CLASSES)).to_csv(run_dir / "confusion_matrix.csv")
    plot_confusion(matrix, f"{config.name}: test (acc {metrics['test']['accuracy']:.3f})",
                   run_dir / "confusion_matrix.png")
    if history.is_file():  # an ensemble of trained runs has no training history of its own
        plot_learning_curves(history, run_dir / "learning_curves.png")
    table = pd.DataFrame(probs["test"], columns=[f"p_{c}" for c in CLASSES]).round(6)
    table.insert(0, "predicted", [CLASSES[i] for i in pred["test"]])
    table.insert(0, "label", [CLASSES[i] for i in y["test"]])
    table.insert(0, "path", test_names)
    table.insert(3, "unique", unique_test)
    table.to_csv(run_dir / "test_predictions.csv", index=False)
    print(f"[{config.name}] test acc {metrics['test']['accuracy']:.4f} "
          f"(unique {metrics['test_unique']['accuracy']:.4f}), validation acc "
          f"{metrics['validation']['accuracy']:.4f} -> {run_dir}", flush=True)
    return metrics
