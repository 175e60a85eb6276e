"""The package as people install and call it: the wheel, the console script, the library API, JSON Lines."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_job import Scorer, __version__
from batch_job.cli import main
from batch_job.formats import COLUMNS
from batch_job.results import CLASSES
from tests.conftest import REPO, SHARED_PHOTOS, face_like, needs_photos


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed (--no-deps: the runtime dependencies come from this test
    run's environment through a .pth file, so no network is needed). Returns its bin folder."""
    import shutil

    work = tmp_path_factory.mktemp("wheel")
    leftovers = [REPO / "build", REPO / "emotion_batch_scoring.egg-info"]
    existed = {path: path.exists() for path in leftovers}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    for path in leftovers:  # setuptools builds inside the source tree: leave the checkout as it was
        if not existed[path]:
            shutil.rmtree(path, ignore_errors=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (work / "dist").glob("emotion_batch_scoring-*.whl")
    env_dir = work / "env"
    venv.create(env_dir, with_pip=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "runtime-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return env_dir / "bin"


def test_the_wheel_carries_the_models_and_the_console_script(installed):
    version = subprocess.run([str(installed / "emotion-batch"), "--version"], capture_output=True, text=True,
                             cwd="/", timeout=60)
    assert version.returncode == 0, version.stderr
    name = json.loads((REPO / "models" / "emotion.json").read_text())["model_name"]  # the shipped model's card
    assert version.stdout.strip() in (f"emotion-batch {__version__} (model {name}, face detector YuNet)",
                                      f"emotion-batch {__version__} (model {name}, INT8 on this CPU, face detector YuNet)")


def test_the_installed_command_scores_images_from_outside_the_repository(installed, tmp_path):
    for i in range(2):
        face_like(i).save(tmp_path / f"{i}.png")
    result = subprocess.run([str(installed / "emotion-batch"), "run", str(tmp_path), "-o", "out.csv"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "PYTHONPATH")})
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["path"] for r in rows] == ["0.png", "1.png"] and all(r["emotion"] in CLASSES for r in rows)
    where = subprocess.run([str(installed / "python"), "-c", "import batch_job.model as m; print(m.default_model_path())"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert "site-packages/batch_job/models/emotion.onnx" in where.stdout  # found inside the package


def test_help_is_the_same_for_the_console_script_and_python_dash_m(installed):
    script = subprocess.run([str(installed / "emotion-batch"), "--help"], capture_output=True, text=True, timeout=60)
    module = subprocess.run([sys.executable, "-m", "batch_job", "--help"], capture_output=True, text=True, cwd=REPO,
                            timeout=60)
    assert script.stdout == module.stdout and "emotion-batch" in script.stdout


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_photos
def test_json_lines_output_matches_the_csv_field_for_field(tmp_path):
    csv_out, jsonl_out = tmp_path / "p.csv", tmp_path / "p.jsonl"
    assert main(["run", str(SHARED_PHOTOS), "-o", str(csv_out)]) == 0
    assert main(["run", str(SHARED_PHOTOS), "-o", str(jsonl_out)]) == 0  # the format comes from the extension
    rows = read_csv(csv_out)
    records = [json.loads(line) for line in jsonl_out.read_text().splitlines()]
    assert len(records) == len(rows) == 32
    for row, record in zip(rows, records, strict=True):
        assert list(record) == COLUMNS
        for column in COLUMNS:
            value = record[column]
            assert ("" if value is None else str(value)) == row[column] or float(value) == float(row[column])
        assert isinstance(record["face"], int) and isinstance(record["p_happy"], float)


@needs_photos
def test_the_api_gives_the_clis_probabilities(tmp_path):
    out = tmp_path / "p.csv"
    assert main(["run", str(SHARED_PHOTOS), "-o", str(out)]) == 0
    rows = read_csv(out)
    scorer = Scorer()
    results = list(scorer.score(SHARED_PHOTOS))
    api_rows = [(r.path, face) for r in results for face in r.faces]
    assert len(api_rows) == len(rows)
    for row, (path, face) in zip(rows, api_rows, strict=True):
        assert row["path"] == path and int(row["face"]) == face.number
        assert tuple(int(row[k]) for k in ("left", "top", "width", "height")) == face.box
        np.testing.assert_allclose([float(row[f"p_{c}"]) for c in CLASSES], face.probabilities, atol=1e-6)
        assert row["emotion"] == face.emotion
    # one image from memory: a PIL image, its numpy array and its encoded bytes all give the same answer
    photo = Image.open(SHARED_PHOTOS / "astronaut.png").convert("RGB")
    encoded = io.BytesIO()
    photo.save(encoded, "PNG")
    answers = [scorer.score_image(x) for x in (photo, np.asarray(photo), encoded.getvalue())]
    for answer in answers:
        (face,) = answer.faces
        assert face.box == (178, 63, 92, 111) and face.emotion == "happy"
        np.testing.assert_allclose(face.probabilities, answers[0].faces[0].probabilities, atol=1e-6)
    assert scorer.score_image(np.zeros((10, 10, 3), np.float32)).faces  # a tiny float image: scored whole


def test_the_api_reports_bad_inputs_as_results_not_exceptions():
    scorer = Scorer(faces="whole")
    results = list(scorer.score_images([b"not an image", np.full((48, 48), 0.5, np.float32), face_like(1)],
                                       names=["junk", "gray", "face"]))
    assert [r.path for r in results] == ["junk", "gray", "face"]
    assert "not a recognised image" in results[0].error and not results[0].faces
    assert results[1].faces and results[2].faces and results[1].faces[0].emotion in CLASSES
    [odd] = scorer.score_images([object()])  # type: ignore[list-item]
    assert odd.failed and "not an image: expected a PIL image, a numpy array, bytes or a file path" in odd.error
    with pytest.raises(ValueError, match="faces must be one of"):
        Scorer(faces="sideways")


def test_importing_the_api_does_not_import_tensorflow():
    code = "import sys, batch_job; batch_job.Scorer; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "False False"


def test_the_wheel_is_the_runtime_only_with_its_licences_and_types(installed):
    site = next(installed.parent.glob("lib/python3*/site-packages"))
    assert (site / "batch_job" / "py.typed").is_file() and (site / "batch_job" / "rates.json").is_file()
    assert not (site / "trainer").exists() and not (site / "converter").exists()  # TensorFlow's side stays out
    (info,) = site.glob("emotion_batch_scoring-*.dist-info")
    metadata = (info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    licences = {p.name for p in info.rglob("*LICENSE*")}
    assert {"LICENSE", "face_detection_yunet.LICENSE"} <= licences
