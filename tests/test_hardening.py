"""Hostile inputs, names, outputs and signals (issue 10): each numbered defect has its regression test here.
Every one of them lost a run, hung, corrupted the CSV or exhausted memory before the fix."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_job import budget as budget_module
from batch_job.base import ImageError, ModelError
from batch_job.cli import main
from batch_job.formats import COLUMNS
from batch_job.local import display_name, original_name
from batch_job.model import EmotionModel
from batch_job.preprocessing import load_image
from tests.conftest import REPO, build_tiny_onnx, face_like


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_job", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        face_like(i).save(root / f"{i}.png")
    return root


# 1. Memory -----------------------------------------------------------------------------------------------

def test_memory_budget_makes_big_decodes_take_turns_and_lets_an_oversize_one_run_alone():
    pool = budget_module.MemoryBudget(1000)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(amount):
        with pool.hold(amount):
            with lock:
                inside[0] += amount
                most[0] = max(most[0], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= amount

    threads = [threading.Thread(target=work, args=(400,)) for _ in range(12)] + [threading.Thread(target=work,
                                                                                                  args=(5000,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)  # nobody starved, nothing deadlocked
    assert most[0] == 5000 or most[0] <= 1000
    assert pool.peak <= 5000 and pool.used == 0


def test_decodes_of_huge_images_stay_within_the_budget_with_many_workers(tmp_path, tiny_model, monkeypatch):
    """Six 3000x3000 RGBA PNGs (72 MB each to decode) through 32 workers with a 100 MB decode budget."""
    from batch_job import analysis, pipeline
    from batch_job.sources import open_sources

    flat = Image.new("RGBA", (3000, 3000), (90, 120, 150, 255))
    for i in range(6):
        flat.save(tmp_path / f"{i}.png")
    decodes = budget_module.MemoryBudget(100 * 1024 * 1024)
    monkeypatch.setattr(analysis, "DECODES", decodes)
    results = list(pipeline.predict(open_sources([str(tmp_path)]).items(), EmotionModel(tiny_model), workers=32,
                                    faces="detect"))
    assert [r.error for r in results] == ["no face found"] * 6  # every one decoded and looked at
    cost = 3000 * 3000 * (4 + 4)
    assert decodes.peak <= max(decodes.total, cost) and decodes.peak < 2 * cost


def test_a_symlink_to_dev_zero_and_an_oversize_file_get_error_rows(folder, tiny_model, tmp_path):
    os.symlink("/dev/zero", folder / "zero.jpg")
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: costs no disk
    out = tmp_path / "out.csv"
    result = run_cli("run", str(folder), "--model", str(tiny_model), "-o", str(out), timeout=60)
    assert result.returncode == 3, result.stderr
    rows = {r["path"]: r for r in rows_of(out)}
    assert "not a regular file (a character device)" in rows["zero.jpg"]["error"]
    assert "file too large" in rows["huge.jpg"]["error"]
    assert sum(bool(r["emotion"]) for r in rows.values()) == 3


# 2. Non-UTF-8 names --------------------------------------------------------------------------------------

def test_a_non_utf8_file_name_gets_a_readable_reversible_row(folder, tiny_model, tmp_path):
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        face_like(7).save(f, "PNG")
    out = tmp_path / "out.csv"
    result = run_cli("run", str(folder), "--model", str(tiny_model), "-o", str(out), "--faces", "whole")
    assert result.returncode == 0, result.stderr
    rows = rows_of(out)
    (odd,) = [r for r in rows if "caf" in r["path"]]
    assert odd["path"] == '"caf\\xe9.png"' and odd["emotion"]
    assert original_name(odd["path"]) == b"caf\xe9.png"
    for name in ["plain.jpg", 'quote".jpg', '"starts with a quote.jpg', "back\\slash.png", "élan.png"]:
        assert original_name(display_name(name)) == name.encode("utf-8")


# 3. CSV integrity ----------------------------------------------------------------------------------------

def test_carriage_returns_in_names_stay_in_their_row_and_formulas_are_neutralised(folder, tiny_model, tmp_path):
    face_like(8).save(folder / "a\rb.png")
    face_like(9).save(folder / "=HYPERLINK(1).png")
    face_like(10).save(folder / "-2+3.png")
    out = tmp_path / "out.csv"
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(out), "--faces", "whole"]) == 0
    rows = rows_of(out)
    assert len(rows) == 6
    paths = {r["path"] for r in rows}
    assert "a\rb.png" in paths and "'=HYPERLINK(1).png" in paths and "'-2+3.png" in paths
    raw = tmp_path / "raw.csv"
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(raw), "--faces", "whole",
                 "--raw-csv"]) == 0
    assert {r["path"] for r in rows_of(raw)} >= {"=HYPERLINK(1).png", "-2+3.png"}


# 4. Special files ----------------------------------------------------------------------------------------

def test_a_fifo_named_like_an_image_gets_an_error_row_instead_of_hanging(folder, tiny_model, tmp_path):
    os.mkfifo(folder / "x.jpg")
    out = tmp_path / "out.csv"
    result = run_cli("run", str(folder), "--model", str(tiny_model), "-o", str(out), timeout=60)
    assert result.returncode == 3
    rows = {r["path"]: r for r in rows_of(out)}
    assert "not a regular file (a FIFO)" in rows["x.jpg"]["error"]
    assert not list(tmp_path.glob(".predictions-*"))


def test_symlinked_folders_are_followed_once_and_loops_are_reported(folder, tiny_model, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    face_like(11).save(elsewhere / "linked.png")
    os.symlink(elsewhere, folder / "link")
    os.symlink(folder, folder / "loop")
    out = tmp_path / "out.csv"
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(out)]) == 3
    rows = {r["path"]: r for r in rows_of(out)}
    assert rows["link/linked.png"]["emotion"]
    assert "symlink loop" in rows["loop"]["error"]


# 5. Folder errors ----------------------------------------------------------------------------------------

def test_an_unreadable_subfolder_gets_an_error_row_and_the_run_goes_on(folder, tiny_model, tmp_path, monkeypatch):
    (folder / "locked").mkdir()
    face_like(12).save(folder / "locked" / "hidden.png")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out.csv"
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(out)]) == 3
    rows = rows_of(out)
    assert [r["path"] for r in rows] == ["0.png", "1.png", "2.png", "locked"]
    assert rows[-1]["error"] == "cannot read folder: Permission denied"


def test_a_path_longer_than_path_max_is_an_error_row(tmp_path, tiny_model, monkeypatch):
    deep = tmp_path / "deep"
    deep.mkdir()
    face_like(1).save(deep / "ok.png")
    monkeypatch.chdir(deep)
    for _ in range(18):  # 18 folders of 250 characters: past Linux's 4,096-byte PATH_MAX, built step by step
        os.mkdir("d" * 250)
        os.chdir("d" * 250)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.csv"
    status = main(["run", str(deep), "--model", str(tiny_model), "-o", str(out)])
    rows = rows_of(out)
    assert status == 3 and rows[0]["path"] == "ok.png" and rows[0]["emotion"]
    assert any("File name too long" in r["error"] for r in rows[1:])


# 6. Output failures --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dest, words", [
    ("{tmp}", "is a folder"),
    ("/proc/x.csv", "cannot write to /proc"),
    ("{folder}/0.png", "is one of the inputs"),
])
def test_bad_destinations_are_refused_before_scoring(dest, words, folder, tiny_model, tmp_path):
    before = (folder / "0.png").read_bytes()
    result = run_cli("run", str(folder), "--model", str(tiny_model), "-o", dest.format(tmp=tmp_path, folder=folder))
    assert result.returncode == 1 and words in result.stderr and "Traceback" not in result.stderr
    assert "scored" not in result.stderr and (folder / "0.png").read_bytes() == before


def test_a_full_disk_mid_run_keeps_the_complete_csv_elsewhere_and_says_where(folder, tiny_model, tmp_path,
                                                                           monkeypatch, capsys):
    from batch_job import destinations

    real_write_all = destinations.SpillingFile._write_all

    def write_all(self, chunk):
        if self.spilled_to is None:
            self.file.write(chunk[: len(chunk) // 2])  # half of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_all(self, chunk)

    monkeypatch.setattr(destinations.SpillingFile, "_write_all", write_all)
    out = tmp_path / "out.csv"
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "the complete output is at" in err
    kept = Path(err.split("the complete output is at ")[1].split()[0])
    assert [r["path"] for r in rows_of(kept)] == ["0.png", "1.png", "2.png"] and not out.exists()
    kept.unlink()


def test_a_refused_s3_upload_keeps_the_csv_and_names_it(folder, tiny_model, monkeypatch, capsys):
    from batch_job import s3
    from batch_job.base import DestinationError

    monkeypatch.setattr(s3, "check_destination", lambda url: ("bucket", "key.csv"))

    def refuse(path, url, content_type):
        raise DestinationError(f"cannot upload {url}: AccessDenied: Access Denied")
    monkeypatch.setattr(s3, "upload_file", refuse)
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", "s3://bucket/key.csv"]) == 1
    err = capsys.readouterr().err
    assert "AccessDenied" in err and "the complete output is kept at" in err
    kept = Path(err.split("kept at ")[1].split()[0])
    assert len(rows_of(kept)) == 3
    kept.unlink()


def test_stdout_into_a_closed_pipe_ends_quietly(folder, tiny_model):
    for i in range(3, 60):
        face_like(i).save(folder / f"{i}.png")
    command = (f"{sys.executable} -m batch_job run {folder} --model {tiny_model} -o - --faces whole | head -n 1; "
               "echo status=${PIPESTATUS[0]}")
    result = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("path,face,")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert "status=141" in result.stdout or "status=0" in result.stdout


# 7. Signals ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory) -> Path:
    """Enough big noise images that a one-worker run takes several seconds."""
    big = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (700, 900), dtype=np.uint8)).save(big / f"{i}.png", compress_level=0)
    return big


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signals_stop_the_run_cleanly_without_leftovers(signum, status, slow_folder, tmp_path, tiny_model):
    out = tmp_path / "out.csv"
    # A shell that runs the test suite in the background (`make test &`, nohup) makes its children ignore SIGINT,
    # and Python keeps an ignored SIGINT ignored, as a background job should: give the child the default, as a
    # terminal's foreground job has, so that what is tested is the program's handling, not the caller's shell.
    child = subprocess.Popen([sys.executable, "-m", "batch_job", "run", str(slow_folder), "--model",
                              str(tiny_model), "-o", str(out), "--workers", "1"], cwd=REPO, stderr=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".predictions-*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the destination is checked (its temporary file made) just before scoring starts
    time.sleep(0.5)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == status, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".predictions-*"))


# 8. Duplicates -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", ["{folder}/1.png", "{folder}/", "{folder}/./"])
def test_a_source_inside_another_is_scored_once(extra, folder, tiny_model, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert main(["run", str(folder), extra.format(folder=folder), "--model", str(tiny_model), "-o", str(out)]) == 0
    paths = [r["path"] for r in rows_of(out)]
    assert paths == ["0.png", "1.png", "2.png"]
    assert "scored once" in capsys.readouterr().err


# 9. Model contract ---------------------------------------------------------------------------------------

def tweaked_model(path: Path, card: dict | None = None, outputs: int = 4, softmax: bool = True,
                  sealed: bool = False) -> Path:
    """A linear model whose card says `card`; `sealed`: with its integrity entries (else only the contract
    checks, which run first, can judge it)."""
    from onnx import TensorProto, helper, numpy_helper, save

    from converter.seal import seal

    weights = numpy_helper.from_array(np.full((48 * 48, outputs), 1e-4, np.float32), "W")
    shape = numpy_helper.from_array(np.array([-1, 48 * 48], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["image", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits" if softmax else "out"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["out"], axis=1))
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 48, 48, 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", outputs])],
                              initializer=[weights, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {"classes": json.dumps(["happy", "neutral", "sad", "surprise"]), "input_size": "48", "channels": "1",
             **(card or {})}
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    save(seal(model) if sealed else model, path)
    return path


@pytest.mark.parametrize("card, outputs, softmax, words", [
    ({"input_size": "64"}, 4, True, "does not match its card"),
    ({"channels": "3"}, 4, True, "does not match its card"),
    ({}, 3, True, "outputs shape [2, 3]"),
    ({}, 4, False, "not probabilities"),
])
def test_a_model_that_contradicts_its_card_is_refused_at_load(card, outputs, softmax, words, tmp_path):
    path = tweaked_model(tmp_path / "m.onnx", card, outputs, softmax)
    with pytest.raises(ModelError, match=words.replace("[", r"\[").replace("]", r"\]")):
        EmotionModel(path)
    result = run_cli("run", str(tmp_path), "--model", str(path), "-o", str(tmp_path / "o.csv"))
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_logits_model_whose_card_says_so_gets_softmax(tmp_path):
    path = tweaked_model(tmp_path / "m.onnx", {"output": json.dumps({"meaning": "logits"})}, softmax=False, sealed=True)
    probs = EmotionModel(path).predict(np.full((3, 48, 48, 1), 200, np.uint8))
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert probs.max() <= 1


def test_model_path_naming_a_folder_says_so(tmp_path, folder):
    result = run_cli("run", str(folder), "--model", str(tmp_path), "-o", str(tmp_path / "o.csv"))
    assert result.returncode == 1 and "is a folder" in result.stderr


# 10. Odd pixels ------------------------------------------------------------------------------------------

def test_float_tiffs_are_scaled_by_their_range_and_nan_is_an_error():
    unit = np.zeros((48, 48), np.float32)
    unit[:, 24:] = 1.0  # right half white, in [0, 1]
    buffer = io.BytesIO()
    Image.fromarray(unit, mode="F").save(buffer, "TIFF")
    pixels = load_image(buffer.getvalue())[:, :, 0]
    assert pixels[:, :20].max() == 0 and pixels[:, 28:].min() == 255
    unit[3, 3] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(unit, mode="F").save(buffer, "TIFF")
    with pytest.raises(ImageError, match="NaN"):
        load_image(buffer.getvalue())


def test_library_warnings_reach_stderr_as_one_formatted_line(folder, tiny_model, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 1
    good = io.BytesIO()
    face_like(3).save(good, "JPEG", exif=exif.tobytes())
    data = good.getvalue()
    start = data.index(b"Exif\x00\x00")
    corrupt = data[:start + 6] + b"\xff" * 20 + data[start + 26:]  # a broken TIFF header inside the EXIF block
    (folder / "bad_exif.jpg").write_bytes(corrupt)
    result = run_cli("run", str(folder), "--model", str(tiny_model), "-o", str(tmp_path / "o.csv"))
    assert "Warning:" not in result.stderr and "warnings.warn" not in result.stderr
    for line in result.stderr.splitlines()[:-1]:
        assert line.startswith("warning: ")


# 11. Small things ----------------------------------------------------------------------------------------

def test_output_csv_permissions_follow_the_umask(folder, tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out.csv"
        assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("value", ["100000000", "12345678901234567890"])
def test_batch_size_is_bounded(value, folder):
    result = run_cli("run", str(folder), "--batch-size", value)
    assert result.returncode == 2 and "must be at most 4096" in result.stderr and "Traceback" not in result.stderr


def test_files_that_are_not_images_are_counted_as_skipped(folder, tiny_model, tmp_path, capsys):
    (folder / "notes.txt").write_text("x")
    (folder / "data.csv").write_text("x")
    assert main(["run", str(folder), "--model", str(tiny_model), "-o", str(tmp_path / "o.csv")]) == 0
    assert "0 errors, 2 skipped (not images)" in capsys.readouterr().err


def test_no_oserror_escapes_as_a_traceback(tmp_path, tiny_model):
    tmp_model = build_tiny_onnx(tmp_path / "m.onnx")
    for args in (["run", "/dev/null/x", "--model", str(tmp_model)],
                 ["run", str(tmp_path), "--model", str(tmp_model), "-o", "/dev/null/x/y.csv"]):
        result = run_cli(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr


def test_peak_memory_stays_under_the_documented_bound_with_32_workers_on_huge_images(tmp_path):
    """README: peak RSS is about 250 MB plus DECODE_BUDGET_MB (bench/memory.py measures the full set)."""
    sys.path.insert(0, str(REPO / "bench"))
    import memory

    memory.build(tmp_path, pngs=3, jpegs=1)  # 49 MP RGBA PNGs (374 MB each to decode) and a 100 MP JPEG
    result = memory.measure(tmp_path, budget_mb=512, workers=32)
    assert result["exit_status"] == 0 and result["rows"] == 4 and result["refused"] == 0  # all scored
    assert result["peak_rss_mb"] < 250 + 512 + 100, result


def test_a_face_the_model_scores_as_nan_is_an_error_row_not_a_confident_happy(tmp_path, tiny_model, monkeypatch):
    """argmax of a NaN row is class 0; a broken graph's NaN must not become 'happy' with confidence nan."""
    from batch_job import pipeline
    from batch_job.sources import open_sources

    face_like(1).save(tmp_path / "fine.png")
    Image.new("L", (48, 48), 255).save(tmp_path / "white.png")
    model = EmotionModel(tiny_model)
    honest = model.predict

    def nan_on_white(pixels):
        out = honest(pixels).copy()
        out[pixels.reshape(len(pixels), -1).min(axis=1) == 255] = np.nan
        return out
    monkeypatch.setattr(model, "predict", nan_on_white)
    results = {r.path: r for r in pipeline.predict(open_sources([str(tmp_path)]).items(), model, faces="whole")}
    assert results["white.png"].error == "the emotion model gave no finite probabilities for face 1"
    assert results["white.png"].faces == () and results["white.png"].failed
    fine = results["fine.png"]
    assert fine.error == "" and len(fine.faces) == 1
    np.testing.assert_allclose(fine.faces[0].probabilities, honest(np.asarray(face_like(1))[None, :, :, None])[0],
                               atol=1e-6)
