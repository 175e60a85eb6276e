"""python -m batch_job run: the CSV contract, bad inputs, exit codes, streaming."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_job.cli import main
from batch_job.formats import COLUMNS
from batch_job.model import EmotionModel
from batch_job.pipeline import decoded
from batch_job.preprocessing import load_image
from batch_job.results import CLASSES
from batch_job.sources import Item
from tests.conftest import REPO, face_like


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_job", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_scores_a_nested_folder_into_one_row_per_image(image_folder, tiny_model, tmp_path):
    out = tmp_path / "out.csv"
    result = run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = read_rows(out)
    assert [r["path"] for r in rows] == ["6.gif", "7.JPEG", "8.png", "a/1.jpg", "a/2.png", "b/3.bmp",
                                         "b/deep/4.webp", "b/deep/5.tif"]
    for row in rows:
        probs = np.array([float(row[f"p_{c}"]) for c in CLASSES])
        assert probs.sum() == pytest.approx(1, abs=1e-5)
        assert row["emotion"] == CLASSES[probs.argmax()] and float(row["confidence"]) == probs.max()
        assert row["error"] == ""
    assert "scored 8 images, 8 faces, 0 without a face, 0 errors" in result.stderr and "images/s" in result.stderr


def test_cli_probabilities_are_the_model_on_the_shared_preprocessing(image_folder, tiny_model, tmp_path):
    out = tmp_path / "out.csv"
    assert main(["run", str(image_folder), "--model", str(tiny_model), "-o", str(out), "--batch-size", "3"]) == 0
    rows = read_rows(out)
    pixels = np.stack([load_image(image_folder / r["path"]) for r in rows])
    expected = EmotionModel(tiny_model).predict(pixels)
    got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def make_bad_inputs(folder: Path) -> dict[str, str]:
    """Every kind of bad input, with the words its error must contain."""
    (folder / "empty.jpg").write_bytes(b"")
    good = io.BytesIO()
    face_like(9, size=300).save(good, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(good.getvalue()[:2000])
    (folder / "text.png").write_text("this is not a picture")
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    return {"empty.jpg": "empty file", "truncated.jpg": "cannot decode", "text.png": "not a recognised image",
            "bomb.png": "too large"}


def test_bad_inputs_get_error_rows_and_the_batch_completes(image_folder, tiny_model, tmp_path):
    expected_errors = make_bad_inputs(image_folder)
    out = tmp_path / "out.csv"
    result = run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", str(out), "--batch-size", "4")
    assert result.returncode == 3, result.stderr
    rows = {r["path"]: r for r in read_rows(out)}
    assert len(rows) == 8 + len(expected_errors)
    for name, words in expected_errors.items():
        assert words in rows[name]["error"] and rows[name]["emotion"] == "" and rows[name]["p_happy"] == ""
    assert sum(1 for r in rows.values() if r["emotion"]) == 8
    assert ", 4 errors, 1 skipped (not images) in" in result.stderr


def test_single_files_and_several_sources(image_folder, tiny_model, tmp_path):
    out = tmp_path / "out.csv"
    one = image_folder / "a" / "1.jpg"
    assert main(["run", str(one), str(image_folder / "b"), "--model", str(tiny_model), "-o", str(out)]) == 0
    paths = [r["path"] for r in read_rows(out)]
    assert paths == [str(one), f"{image_folder / 'b'}/3.bmp", f"{image_folder / 'b'}/deep/4.webp",
                     f"{image_folder / 'b'}/deep/5.tif"]


def test_stdout_output(image_folder, tiny_model):
    result = run_cli("run", str(image_folder / "a"), "--model", str(tiny_model), "-o", "-")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 3


@pytest.mark.parametrize("args, code, words", [
    (["run", "{folder}", "--model", "/nonexistent/model.onnx"], 1, "model file not found"),
    (["run", "/nonexistent/folder", "--model", "{model}"], 1, "no such file or folder"),
    (["run", "{empty}", "--model", "{model}", "-o", "{out}"], 1, "no image or video files found"),
    (["run", "{folder}", "--model", "{model}", "-o", "/nonexistent/dir/out.csv"], 1, "output folder does not exist"),
    (["run", "{folder}", "--batch-size", "0"], 2, "must be at least 1"),
    (["run"], 2, "SOURCE"),
])
def test_errors_exit_with_one_line_and_no_traceback(args, code, words, image_folder, tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.format(folder=image_folder, model=tiny_model, empty=tmp_path / "empty", out=tmp_path / "o.csv")
            for a in args]
    result = run_cli(*args)
    assert result.returncode == code
    assert words in result.stderr and "Traceback" not in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o.csv").exists()


def test_a_failed_run_leaves_no_partial_csv(image_folder, tmp_path):
    out = tmp_path / "out.csv"
    assert main(["run", str(image_folder), "--model", "/nonexistent.onnx", "-o", str(out)]) == 1
    assert not out.exists() and list(tmp_path.glob(".predictions-*")) == []


def test_model_with_other_classes_is_refused(tmp_path):
    from batch_job.model import ModelError
    from tests.conftest import build_tiny_onnx

    path = build_tiny_onnx(tmp_path / "other.onnx", classes=("angry", "happy", "sad", "calm"))
    with pytest.raises(ModelError, match="classes"):
        EmotionModel(path)


def test_decoding_is_bounded_so_memory_stays_flat():
    consumed = 0

    def items():
        nonlocal consumed
        for i in range(1000):
            consumed += 1
            yield Item(str(i), lambda: b"")

    seen = 0
    for _item, _ in decoded(items(), lambda item: item.path, workers=4, lookahead=16):
        seen += 1
        assert consumed - seen < 16  # never more than the look-ahead held at once
    assert seen == 1000


def test_decoding_keeps_input_order_even_when_items_finish_out_of_order():
    import random
    import time

    def slow(item):
        time.sleep(random.random() / 200)
        return item.path

    out = [result for _, result in decoded((Item(str(i), bytes) for i in range(200)), slow, workers=8,
                                           lookahead=32)]
    assert out == [str(i) for i in range(200)]


@pytest.mark.parametrize("argv, suggestion", [(["run", "x", "--fromat", "csv"], "did you mean --format?"),
                                              (["rnu", "x"], "did you mean run?"),
                                              (["run", "x", "--anotate", "d"], "did you mean --annotate?")])
def test_a_mistyped_option_or_command_gets_a_suggestion(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and suggestion in capsys.readouterr().err
