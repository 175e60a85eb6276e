"""The model in models/: its accuracy recomputed from the CLI's own CSV, and trainer/runtime identity."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from batch_job.evaluate import evaluate
from batch_job.model import EmotionModel
from batch_job.preprocessing import CLASSES
from tests.conftest import REPO, SHARED_DATA, SHIPPED_MODEL, needs_data

REFERENCE_TEST_ACCURACY = 0.6797

pytestmark = needs_data


def test_the_model_ships_with_the_repository():
    assert SHIPPED_MODEL.is_file() and SHIPPED_MODEL.stat().st_size < 10_000_000
    assert SHIPPED_MODEL.with_suffix(".keras").is_file()


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / "test.csv"
    result = subprocess.run([sys.executable, "-m", "batch_job", "run", str(SHARED_DATA / "test"), "-o", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_shipped_model_beats_the_reference_on_the_128_test_images(test_csv):
    result = evaluate(str(test_csv))
    assert result["images"] == 128
    assert result["accuracy"] > REFERENCE_TEST_ACCURACY


def test_model_card_metrics_match_what_the_cli_measures(test_csv):
    card = json.loads(EmotionModel().card.properties["metrics"])
    assert evaluate(str(test_csv))["accuracy"] == pytest.approx(card["test"]["accuracy"], abs=1e-9)


def test_trainer_pixels_through_the_model_equal_the_cli_rows(test_csv):
    """Trainer and runtime share one preprocessing: the trainer's arrays give the CLI's probabilities."""
    from trainer.data import list_split, load_pixels

    split = list_split(SHARED_DATA, "test")
    with open(test_csv, newline="") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    model = EmotionModel()
    expected = model.predict(load_pixels(split.paths, model.card.channels))
    got = np.array([[float(rows[p.relative_to(SHARED_DATA / "test").as_posix()][f"p_{c}"]) for c in CLASSES]
                    for p in split.paths])
    np.testing.assert_allclose(got, expected, atol=2e-6)
