"""The results table is rebuilt from run folders, matched to the reference study, and written as CSV/MD/PNG."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from trainer.__main__ import main
from trainer.compare import REFERENCE_README, SCRATCH_NOTE, compare, load_reference, load_runs

REFERENCE = """# Reference results to beat

Some prose, then the table.

| model                 | precision | recall | f1     | test acc |
|-----------------------|-----------|--------|--------|----------|
| simple_cnn_rgb        | 0.5430    | 0.5391 | 0.5191 | 0.5391   |
| vgg16_tl_trainable    | 0.6349    | 0.6094 | 0.6011 | 0.6094   |
| vgg16_tl (frozen)     | 0.3473    | 0.3047 | 0.2985 | 0.3047   |
| resnet_like           | 0.6892    | 0.6797 | 0.6735 | 0.6797   |

| images | n | accuracy |
|--------|---|----------|
| test   | 1 | 0.5      |
"""


def scores(acc, f1=None, n=128):
    return {"accuracy": acc, "precision": acc + 0.01, "recall": acc, "f1": f1 if f1 is not None else acc - 0.02,
            "macro_f1": acc - 0.03, "n": n}


def fake_run(runs: Path, name: str, test_acc: float, config: dict | None = None, **extra) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    metrics = {"name": name, "model": (config or {}).get("model", "resnet_like"), "channels": 3,
               "parameters": 298084, "size_mb": 3.7, "train_seconds": 1200.0, "epochs_run": 20,
               "keras_images_per_second": 900.0, "validation": scores(test_acc - 0.05, n=4977),
               "test": scores(test_acc), "test_unique": scores(test_acc - 0.04, n=111), **extra}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.json").write_text(json.dumps({"name": name, "model": metrics["model"], **(config or {})}))
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    runs = tmp_path / "runs"
    fake_run(runs, "resnet_like", 0.70)
    fake_run(runs, "simple_cnn_rgb", 0.55, {"note": "grayscale repeated to RGB"}, onnx_images_per_second=4000.0)
    fake_run(runs, "vgg16_tl_trainable_scratch", 0.62,
             {"model": "vgg16_tl", "model_args": {"weights": "none"}, "reference": "vgg16_tl_trainable"})
    fake_run(runs, "wide_resnet_aug", 0.74, {"note": "our recipe"})
    (runs / "still_training").mkdir()
    (runs / "still_training" / "config.json").write_text("{}")  # no metrics.json yet: not in the table
    return runs


@pytest.fixture
def reference(tmp_path) -> Path:
    path = tmp_path / "README.md"
    path.write_text(REFERENCE)
    return path


def test_reference_table_is_parsed_with_variants_split_off(reference):
    ref = load_reference(reference)
    assert list(ref["model"]) == ["simple_cnn_rgb", "vgg16_tl_trainable", "vgg16_tl", "resnet_like"]
    assert list(ref["variant"]) == ["", "", "frozen", ""]
    assert ref.loc[3, "test acc"] == 0.6797 and ref.loc[0, "f1"] == 0.5191


@pytest.mark.skipif(not REFERENCE_README.is_file(), reason="reference study not in ../shared")
def test_the_real_reference_study_has_eleven_rows_best_resnet_like():
    ref = load_reference(REFERENCE_README)
    assert len(ref) == 11
    assert ref.loc[ref["test acc"].idxmax(), "model"] == "resnet_like" and ref["test acc"].max() == 0.6797


def test_results_table_has_one_row_per_finished_run_best_first_with_known_values(runs, reference, tmp_path):
    table = compare(runs, tmp_path / "results", reference)
    assert list(table["model"]) == ["wide_resnet_aug", "resnet_like", "vgg16_tl_trainable_scratch", "simple_cnn_rgb"]
    row = table.set_index("model").loc["resnet_like"]
    assert (row["test acc"], row["precision"], row["recall"]) == (0.70, 0.71, 0.70)
    assert row["f1"] == pytest.approx(0.68) and row["macro F1"] == pytest.approx(0.67)
    assert row["test acc unique"] == pytest.approx(0.66) and row["unique n"] == 111
    assert row["validation acc"] == pytest.approx(0.65)
    assert (row["parameters"], row["size MB"], row["training time s"], row["keras images/s"]) == (
        298084, 3.7, 1200.0, 900.0)
    indexed = table.set_index("model")
    assert indexed.loc["simple_cnn_rgb", "onnx images/s"] == 4000.0
    assert pd.isna(indexed.loc["resnet_like", "onnx images/s"])


def test_reference_accuracy_is_matched_by_name_or_by_the_config_reference_key(runs, reference, tmp_path):
    table = compare(runs, tmp_path / "results", reference).set_index("model")
    assert table.loc["resnet_like", "reference test acc"] == 0.6797
    assert table.loc["vgg16_tl_trainable_scratch", "reference test acc"] == 0.6094
    assert pd.isna(table.loc["wide_resnet_aug", "reference test acc"])


def test_notes_come_from_the_config_or_say_from_scratch(runs):
    notes = load_runs(runs).set_index("model")["note"]
    assert notes["simple_cnn_rgb"] == "grayscale repeated to RGB"
    assert notes["vgg16_tl_trainable_scratch"] == SCRATCH_NOTE
    assert notes["resnet_like"] == ""


def test_csv_markdown_and_png_are_written(runs, reference, tmp_path):
    out = tmp_path / "results"
    table = compare(runs, out, reference)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv").fillna({"note": ""}), table, check_dtype=False)
    markdown = (out / "results.md").read_text()
    assert "| wide_resnet_aug | 0.7500 | 0.7400 | 0.7200 | 0.7400 | 0.7000 |" in markdown
    assert "20.0 min" in markdown and "298,084" in markdown
    assert "## Ours vs the reference study" in markdown
    assert "| vgg16_tl (frozen) | 0.3047 | 0.2985 | not run yet |" in markdown
    assert "| vgg16_tl_trainable | 0.6094 | 0.6011 | vgg16_tl_trainable_scratch | 0.6200 | 0.5800 | 0.6000 | " \
           "+0.0106 | from scratch" in markdown
    assert "wide_resnet_aug 0.7400" in markdown  # runs with no reference row are listed too
    image = Image.open(out / "results.png")
    assert image.format == "PNG" and image.size[0] > 400


def test_onnx_column_only_when_some_run_measured_it(tmp_path):
    fake_run(tmp_path / "runs", "resnet_like", 0.7)
    table = compare(tmp_path / "runs", tmp_path / "results")
    assert "onnx images/s" not in table and "reference test acc" not in table
    assert "onnx images/s" not in (tmp_path / "results" / "results.md").read_text()


def test_compare_cli_writes_results_and_names_the_best_run(runs, reference, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--runs-dir", str(runs), "--out", str(out), "--reference", str(reference)]) == 0
    assert "best test acc: wide_resnet_aug 0.7400" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"results.csv", "results.md", "results.png"}


def test_compare_cli_without_finished_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main(["compare", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 1
    assert "no finished runs" in capsys.readouterr().err


def test_peer_row_and_new_subsets_are_tabulated_with_the_peer_last(runs, reference, tmp_path, capsys):
    fake_run(runs, "fer_peer", 0.84, {"model": "fer_mini_xception", "peer": True, "note": "another project's"},
             peer={**scores(0.78, n=839)}, fer_plus={**scores(0.81, n=4536), "excluded": {"no majority": 358}})
    fake_run(runs, "ours_new", 0.72, peer=scores(0.75, n=839), fer_plus=scores(0.80, n=4536),
             validation_unique=scores(0.71, n=4671))
    table = compare(runs, tmp_path / "results", reference)
    assert table["model"].iloc[-1] == "fer_peer"  # best test acc, but its test images are its training data
    indexed = table.set_index("model")
    assert (indexed.loc["ours_new", "peer acc"], indexed.loc["ours_new", "peer n"]) == (0.75, 839)
    assert indexed.loc["fer_peer", "FER+ agreement"] == 0.81 and indexed.loc["ours_new", "FER+ n"] == 4536
    assert pd.isna(indexed.loc["resnet_like", "peer acc"])  # scored before the subset existed
    assert pd.isna(indexed.loc["fer_peer", "reference test acc"])
    markdown = (tmp_path / "results" / "results.md").read_text()
    assert "| ours_new | 0.7300 | 0.7200 | 0.7000 | 0.7200 | 0.6800 | 0.6700 | 0.7100 | 0.7500 | 0.8000 |" in markdown
    assert "n = 839" in markdown and "n = 4536" in markdown
    assert "fer_peer 0.8400" not in markdown  # not listed among our runs without a reference row
    assert main(["compare", "--runs-dir", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert "best test acc: wide_resnet_aug" in capsys.readouterr().out
