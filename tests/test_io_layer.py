"""Issue 18: one regression test (or more) per defect the attacker and maintainer reviews found beside the CLI.
Each failed before the I/O layer was unified; the numbers in the names are the issue's."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_job import formats
from batch_job.base import ModelError, UsageError
from batch_job.budget import READS
from batch_job.model import EmotionModel
from tests.cloud_helpers import (  # noqa: F401 - aws: a fixture
    CLOUD_COLUMNS,
    all_keys,
    aws,
    deployed_buckets,
    get_text,
    image_bytes,
    read_csv,
    s3_record,
    sqs_event,
    sqs_record,
)
from tests.conftest import REPO, face_like

RSS_SCRIPT_HEAD = """
import resource, sys
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def run_cli(*args: str, timeout: float = 120, env: dict | None = None, cwd: Path = REPO,
            ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "batch_job", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def noisy_photo(path: Path, seed: int, side: int = 600) -> None:
    """About 1 MB of PNG that no codec can shrink."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, "PNG")


# 1. --annotate and report hold read reservations forever ---------------------------------------------------

def test_1_annotate_releases_each_read_so_a_small_budget_never_hangs(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(16):
        noisy_photo(photos / f"{i:02d}.png", i)
    assert sum(p.stat().st_size for p in photos.iterdir()) > 16 * 1_000_000  # 4x the 4 MB read budget
    result = run_cli("run", str(photos), "--faces", "whole", "--model", str(tiny_model), "--annotate",
                     str(tmp_path / "drawn"), "-o", str(tmp_path / "out.csv"), env={"DECODE_BUDGET_MB": "16"},
                     timeout=90)  # before: hung forever after the fourth copy
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "drawn").glob("*.jpg"))) == 16


def test_1_report_thumbnails_release_their_reads(tmp_path, tiny_model):
    from batch_job.cli import main
    from batch_job.report import build_report

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        noisy_photo(photos / f"{i}.png", i, side=200)
    assert main(["run", str(photos), "--faces", "whole", "--model", str(tiny_model), "-o",
                 str(tmp_path / "out.csv")]) == 0
    before = READS.used
    build_report(str(tmp_path / "out.csv"), str(tmp_path / "r.html"), str(photos))
    assert READS.used == before == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("<div class=face><img") == 3 and page.count("class=view") == 3  # thumbnails and views


# 2. one bad item ends an API stream; odd arrays scored as faces ------------------------------------------------

BAD_ARRAYS = {
    "5 channels": np.zeros((48, 48, 5), np.uint8),
    "4-D": np.zeros((2, 48, 48, 1), np.uint8),
    "objects": np.full((48, 48), None, dtype=object),
    "int64 colour above 255": np.full((48, 48, 3), 300, np.int64),
    "negative": np.full((48, 48), -5, np.int32),
    "1-D": np.zeros(48 * 48, np.uint8),
    "2 channels": np.zeros((48, 48, 2), np.uint8),
    "bool": np.zeros((48, 48), bool),
    "complex": np.zeros((48, 48), np.complex64),
    "empty": np.zeros((0, 48), np.uint8),
    "NaN": np.full((48, 48), np.nan, np.float32),
}


@pytest.fixture(scope="module")
def scorer(tiny_model):
    from batch_job.api import Scorer

    return Scorer(model=tiny_model, faces="whole", precision="fp32")


def test_2_a_bad_item_is_its_own_error_and_the_stream_goes_on(scorer):
    good = np.asarray(face_like(1))
    images: list = [good] * 2000
    positions = {}
    for k, (name, array) in enumerate([*BAD_ARRAYS.items(), ("None", None), ("a string of no file", 3.5)]):
        positions[name] = 37 + k * 150
        images[positions[name]] = array
    results = list(scorer.score_images(iter(images)))
    assert len(results) == 2000
    bad = {k for k, result in enumerate(results) if result.error}
    assert bad == set(positions.values())
    for name, k in positions.items():
        assert results[k].failed and not results[k].faces, name
    assert all(len(result.faces) == 1 for k, result in enumerate(results) if k not in bad)


def test_2_accepted_arrays_and_paths_score_like_their_files(scorer, tmp_path):
    image = face_like(3)
    image.save(tmp_path / "a.png")
    expected = scorer.score_image(str(tmp_path / "a.png"))
    assert expected.path == str(tmp_path / "a.png") and not expected.error
    gray = np.asarray(image)
    for variant in (gray, gray[:, :, None], np.stack([gray] * 3, axis=-1), gray.astype(np.int64),
                    gray.astype(np.float32) / 255, tmp_path / "a.png", (tmp_path / "a.png").read_bytes()):
        got = scorer.score_image(variant)
        assert not got.error
        np.testing.assert_allclose(got.faces[0].probabilities, expected.faces[0].probabilities, atol=2e-3)


# 3. a corrupted model, or a card that misdescribes its graph, is refused ---------------------------------------

def test_3_flipped_bytes_in_the_graph_are_refused_at_load(tiny_model, tmp_path):
    data = bytearray(tiny_model.read_bytes())
    rng = np.random.default_rng(0)
    for at in rng.choice(np.arange(len(data) // 4, len(data) // 2), 200, replace=False):
        data[at] ^= 0x5A  # inside the weights: the graph still loads and runs
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or altered"):
        EmotionModel(bad)
    (tmp_path / "in").mkdir()
    face_like(0).save(tmp_path / "in" / "a.png")
    result = run_cli("run", str(tmp_path / "in"), "--model", str(bad), "-o", str(tmp_path / "o.csv"))
    assert result.returncode == 1 and "corrupt or altered" in result.stderr and "Traceback" not in result.stderr


def test_3_a_logits_card_on_a_softmax_graph_is_caught_by_the_reference_outputs(tmp_path):
    import onnx

    from tests.conftest import build_tiny_onnx

    path = build_tiny_onnx(tmp_path / "m.onnx")  # a softmax graph, sealed
    EmotionModel(path)
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == "output":
            entry.value = json.dumps({"meaning": "logits"})
    if not any(entry.key == "output" for entry in proto.metadata_props):
        proto.metadata_props.add(key="output", value=json.dumps({"meaning": "logits"}))
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="does not compute what its card recorded"):
        EmotionModel(path)


def test_3_an_unsealed_model_is_refused_with_the_command_that_seals_it(tmp_path):
    from tests.test_hardening import tweaked_model

    with pytest.raises(ModelError, match="converter.seal"):
        EmotionModel(tweaked_model(tmp_path / "m.onnx"))


# 4. -o onto a device node or an input -------------------------------------------------------------------------

def test_4_character_devices_are_written_in_place(tmp_path, tiny_model, image_folder):
    null = run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", "/dev/null")
    assert null.returncode == 0, null.stderr
    assert Path("/dev/null").is_char_device()
    if Path("/dev/full").exists():
        full = run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", "/dev/full")
        assert full.returncode == 1 and "No space left" in full.stderr
        assert Path("/dev/full").is_char_device()  # before: replaced by a regular file (as root)


def test_4_an_input_named_as_the_output_is_refused_whatever_its_extension(tmp_path, tiny_model):
    data = tmp_path / "scores.csv"
    face_like(0).save(data, "PNG")  # an image named .csv, given as a source
    before = data.read_bytes()
    result = run_cli("run", str(data), "--model", str(tiny_model), "-o", str(data))
    assert result.returncode == 1 and "is one of the inputs" in result.stderr
    assert data.read_bytes() == before


# 5. the formula guard is reversible --------------------------------------------------------------------------

def test_5_guarded_names_stay_distinct_and_read_back_exactly():
    from batch_job.results import ImageResult

    names = ["-minus.jpg", "'-minus.jpg", "''x.jpg", "=1+1.png", "plain.png"]
    out = io.StringIO()
    formats.write([ImageResult(name, error="boom") for name in names], out)
    cells = [line.split(",")[0] for line in out.getvalue().splitlines()[1:]]
    assert len(set(cells)) == len(names)  # before: -minus.jpg and '-minus.jpg both became '-minus.jpg
    assert [formats.restored(cell) for cell in cells] == names
    _, rows = formats.CSV.read(io.StringIO(out.getvalue()))
    assert [row[0] for row in rows] == names


# 6. SQS redelivery into another batch, several buckets --------------------------------------------------------

def test_6_a_redelivered_image_is_identifiable_and_paths_name_their_bucket(aws, tiny_model, monkeypatch):  # noqa: F811
    from batch_job.handler import handler

    with deployed_buckets(monkeypatch, tiny_model, "in-a", "out") as client:
        client.create_bucket(Bucket="in-b")
        records = {}
        for bucket, key, seq in (("in-a", "x.png", "01"), ("in-b", "x.png", "02"), ("in-a", "y.png", "03")):
            body = image_bytes(int(seq))
            client.put_object(Bucket=bucket, Key=key, Body=body)
            records[(bucket, key)] = json.dumps({"Records": [s3_record(bucket, key, body, seq)]})
        first = records[("in-a", "x.png")]
        handler(sqs_event(sqs_record(first, "m1"), sqs_record(records[("in-b", "x.png")], "m2")), None)
        handler(sqs_event(sqs_record(first, "m1"), sqs_record(records[("in-a", "y.png")], "m3")), None)  # again
        rows = [row for key in all_keys(client, "out") for row in read_csv(get_text(client, "out", key))]
    assert sorted(row["path"] for row in rows) == ["s3://in-a/x.png", "s3://in-a/x.png", "s3://in-a/y.png",
                                                   "s3://in-b/x.png"]
    unique = {(row["path"], row["source_version"]) for row in rows}
    assert len(unique) == 3 and all(version for _, version in unique)  # the consumer's dedupe key


# 7. memory: in-memory images and deep images -----------------------------------------------------------------

def test_7_in_memory_arrays_are_bounded_by_bytes_not_count(tiny_model):
    script = RSS_SCRIPT_HEAD + f"""
import numpy as np
from batch_job.api import Scorer
scorer = Scorer(model={str(tiny_model)!r}, faces="whole", precision="fp32")
base = peak_mb()
def arrays():
    for i in range(40):
        yield np.full((3000, 4000, 3), i, np.uint8)  # 12 MP, 36 MB each: 1.4 GB if all were held
results = list(scorer.score_images(arrays()))
assert len(results) == 40 and not any(r.error for r in results), [r.error for r in results if r.error][:3]
print(peak_mb() - base)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO), "DECODE_BUDGET_MB": "256"})
    assert result.returncode == 0, result.stderr
    grown = float(result.stdout.split()[-1])
    # 64 MB of arrays in flight (a quarter of the budget) + one more + the 192 MB decode budget + conversions.
    # Before: the look-ahead held 768 items, all 40 arrays, 1.4 GB and more.
    assert grown < 600, grown


@pytest.mark.parametrize("mode", ["F", "I;16"])
def test_7_deep_images_stay_within_their_decode_estimate(tmp_path, mode):
    side = 3000  # 9 MP
    pixels = (np.linspace(0, 1 if mode == "F" else 65535, side * side).reshape(side, side)).astype(
        np.float32 if mode == "F" else np.uint16)
    path = tmp_path / ("deep.tif" if mode == "F" else "deep.png")
    Image.fromarray(pixels, mode=mode if mode == "F" else None).save(path)
    script = RSS_SCRIPT_HEAD + f"""
from batch_job.preprocessing import open_image, decode_cost, decode_gray
data = open({str(path)!r}, "rb").read()
image = open_image(data)
estimate = decode_cost(image) / 2**20
base = peak_mb()
gray = decode_gray(image)
assert gray.image.mode == "L" and gray.image.size == ({side}, {side})
print(estimate, peak_mb() - base)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    estimate, grown = (float(v) for v in result.stdout.split())
    assert grown <= estimate, (grown, estimate)  # before: 4-5 float copies, ~16 bytes a pixel, 2x the estimate


# 8. importing the library leaves the host's global state alone --------------------------------------------------

def test_8_import_does_not_change_pillow_or_warnings():
    script = """
import warnings
import numpy, onnxruntime, boto3  # their own import-time filters are theirs
from PIL import Image
limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
import batch_job, batch_job.api, batch_job.preprocessing, batch_job.pipeline, batch_job.report, batch_job.handler
assert Image.MAX_IMAGE_PIXELS == limit, Image.MAX_IMAGE_PIXELS
assert list(warnings.filters) == filters
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# 9. JSON Lines outside the command line -----------------------------------------------------------------------

def test_9_a_trimmed_upload_key_keeps_its_jsonl_name_within_s3s_limit():
    from batch_job.events import S3Object, output_name

    prefix = "predictions/"
    name = output_name([S3Object("bucket", "k" * 1100, "1")], prefix, ".jsonl")
    assert name.endswith(".jsonl") and len((prefix + name).encode()) <= 1024


def test_9_shard_parts_merge_and_athena_follow_the_format(tmp_path, tiny_model, capsys):
    from batch_job import bulk_run
    from batch_job.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        face_like(i).save(images / f"{i}.png")
    run = tmp_path / "run"
    for index in range(2):
        assert main(["run", str(images), "--shard", f"{index}/2", "--format", "jsonl", "--model", str(tiny_model),
                     "-o", f"{run}/"]) == 0
    parts = sorted((run / "parts").iterdir())
    assert [p.suffix for p in parts] == [".jsonl", ".jsonl"]
    assert all(json.loads(line)["path"] for p in parts for line in p.read_text().splitlines())
    merged = io.StringIO()
    assert bulk_run.merge(bulk_run.part_texts(str(run)), merged) == (2, 6)
    assert [json.loads(line)["path"] for line in merged.getvalue().splitlines()] == [f"{i}.png" for i in range(6)]
    ddl = bulk_run.athena_ddl("june", "s3://out/runs/june/", "jsonl")
    assert "JsonSerDe" in ddl and "`confidence` double" in ddl and "skip.header" not in ddl
    assert main(["merge", str(run), "-o", str(tmp_path / "all.csv")]) == 0  # JSON parts -> one CSV
    assert (tmp_path / "all.csv").read_text().startswith("path,face,")


def test_9_s3_outputs_carry_their_formats_content_type(aws, tiny_model, monkeypatch):  # noqa: F811
    from batch_job.handler import handler

    monkeypatch.setenv("OUTPUT_FORMAT", "jsonl")
    with deployed_buckets(monkeypatch, tiny_model, "in-j", "out-j") as client:
        body = image_bytes(1)
        client.put_object(Bucket="in-j", Key="a.png", Body=body)
        result = handler({"Records": [s3_record("in-j", "a.png", body, "01")]}, None)
        key = result["output"].removeprefix("s3://out-j/")
        assert key.endswith(".jsonl")
        assert client.head_object(Bucket="out-j", Key=key)["ContentType"] == "application/x-ndjson"
        record = json.loads(get_text(client, "out-j", key).splitlines()[0])
        assert list(record) == CLOUD_COLUMNS and record["path"] == "s3://in-j/a.png"


# 10. bad precision values are refused like bad face modes -----------------------------------------------------

def test_10_precision_is_checked_wherever_it_comes_from(tiny_model, image_folder, tmp_path):
    from batch_job.api import Scorer

    with pytest.raises(UsageError, match="precision must be one of fp32, int8, auto, not 'banana'"):
        Scorer(model=tiny_model, precision="banana")
    with pytest.raises(ValueError):  # UsageError is a ValueError for API callers
        Scorer(model=tiny_model, faces="sideways")
    result = run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", str(tmp_path / "o.csv"),
                     env={"PRECISION": "int9"})
    assert result.returncode == 2 and "PRECISION must be one of fp32, int8, auto, not 'int9'" in result.stderr
    assert not (tmp_path / "o.csv").exists()


# 11. Ctrl-C while starting, concurrent runs, --annotate's default output, misnamed outputs ----------------------

def test_11_ctrl_c_while_the_libraries_load_is_one_line(image_folder, tmp_path):
    for delay in (0.05, 0.15, 0.3):
        process = subprocess.Popen([sys.executable, "-m", "batch_job", "run", str(image_folder), "-o",
                                    str(tmp_path / "o.csv")], cwd=REPO, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert "Traceback" not in err, (delay, err)
        assert process.returncode in (0, 130, -signal.SIGINT), (delay, process.returncode, err)


@pytest.mark.parametrize("interrupt, status, line", [
    (KeyboardInterrupt(), 130, "error: interrupted; nothing written"),
    ("SIGTERM", 143, "error: stopped by SIGTERM; nothing written")])
def test_11_an_interrupt_turned_into_an_import_error_is_still_one_line(monkeypatch, capsys, interrupt, status, line):
    """The timing test above hits this one time in several: onnxruntime's extension, interrupted while it
    loads, raises ImportError("initialization failed") from the interrupt. Made to happen every time here."""
    from batch_job import cli

    stop = cli.Stopped(signal.SIGTERM) if interrupt == "SIGTERM" else interrupt

    def loading(argv):
        raise ImportError("initialization failed") from stop
    monkeypatch.setattr(cli, "_main", loading)
    assert cli.main([]) == status
    assert capsys.readouterr().err.strip() == line


def test_11_an_import_error_of_its_own_is_not_taken_for_an_interrupt(monkeypatch):
    from batch_job import cli

    def loading(argv):
        raise ImportError("no module named onnxruntime") from OSError("libgomp.so.1: cannot open")
    monkeypatch.setattr(cli, "_main", loading)
    with pytest.raises(ImportError, match="no module named onnxruntime") as raised:
        cli.main([])
    assert isinstance(raised.value.__cause__, OSError)  # its own cause kept for the traceback


def test_11_a_second_run_to_the_same_output_fails_instead_of_racing(tmp_path, tiny_model, image_folder):
    from batch_job.destinations import OutputLock

    out = tmp_path / "o.csv"
    held = OutputLock(str(out))
    try:
        result = run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", str(out))
        assert result.returncode == 1 and "another run is writing" in result.stderr
        assert not out.exists()
    finally:
        held.release()
    assert run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", str(out)).returncode == 0
    assert not (tmp_path / ".o.csv.lock").exists()


def test_11_annotate_without_output_writes_into_its_folder(tmp_path, tiny_model, image_folder):
    earlier = tmp_path / "predictions.csv"
    earlier.write_text("an earlier run's predictions\n")
    result = run_cli("run", str(image_folder), "--model", str(tiny_model), "--annotate", "drawn", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert earlier.read_text() == "an earlier run's predictions\n"
    assert (tmp_path / "drawn" / "predictions.csv").read_text().startswith("path,face,")
    assert "drawn" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("name, status, words", [("out.xlsx", 2, "names a .xlsx file"),
                                                  ("out.json", 2, "names a .json file"),
                                                  ("out.dat", 0, "warning: output")])
def test_11_an_output_named_for_another_format_is_refused_or_warned(name, status, words, tmp_path, tiny_model,
                                                                   image_folder):
    result = run_cli("run", str(image_folder), "--model", str(tiny_model), "-o", str(tmp_path / name))
    assert result.returncode == status and words in result.stderr
    assert (tmp_path / name).exists() == (status == 0)


@pytest.mark.parametrize("argv", [["--help"], ["cost", "--images", "1000"], ["submit", "--help"], ["status", "--help"]])
def test_the_light_commands_load_no_numpy_pillow_or_onnxruntime(argv):
    script = f"""
import sys
from batch_job.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(sorted(m for m in ("numpy", "PIL", "onnxruntime") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
