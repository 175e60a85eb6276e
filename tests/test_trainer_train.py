"""Training plumbing: mixup mixes images and labels alike; a tiny run writes the full run folder, compare reads it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tests.test_trainer_audit import make_dataset  # noqa: E402
from trainer.compare import load_runs  # noqa: E402
from trainer.config import config_from_dict  # noqa: E402
from trainer.train import mixup, run, train_dataset  # noqa: E402

RUN_FILES = {"config.json", "history.csv", "metrics.json", "model.keras", "learning_curves.png",
             "confusion_matrix.png", "confusion_matrix.csv", "classification_report.txt", "test_predictions.csv",
             "checkpoint"}


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    tf.random.set_seed(0)
    classes = np.arange(8) % 4
    images = tf.constant(np.broadcast_to(classes[:, None, None, None], (8, 4, 4, 1)), tf.float32)  # pixel = class
    labels = tf.constant(np.eye(4)[classes], tf.float32)
    mixed_x, mixed_y = (np.asarray(t) for t in mixup(images, labels, 0.4))
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, atol=1e-6)
    # lam * own + (1 - lam) * partner for both, so every pixel equals the label-weighted mean class index
    np.testing.assert_allclose(mixed_x[:, 0, 0, 0], mixed_y @ np.arange(4), atol=1e-4)
    assert ((mixed_y > 1e-3) & (mixed_y < 1 - 1e-3)).any()  # something really was mixed


def test_train_dataset_applies_mixup_only_when_configured():
    x = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1)).astype(np.uint8)
    y = np.arange(8) % 4
    plain = config_from_dict({"name": "a", "model": "tiny_cnn", "batch_size": 8})
    mixed = config_from_dict({"name": "b", "model": "tiny_cnn", "batch_size": 8, "mixup": 0.4})
    _, plain_labels = next(iter(train_dataset(x, y, plain)))
    _, mixed_labels = next(iter(train_dataset(x, y, mixed)))
    assert set(np.unique(plain_labels)) == {0.0, 1.0}
    assert not set(np.unique(mixed_labels)) <= {0.0, 1.0}


def test_tiny_run_writes_the_run_folder_and_compare_reads_it(tmp_path):
    data = make_dataset(tmp_path / "data")
    shutil.copy(data / "train/happy/3.jpg", data / "validation/happy/copy_of_train.jpg")
    config = config_from_dict({"name": "tiny", "model": "tiny_cnn", "batch_size": 8, "epochs": 1,
                               "steps_per_epoch": 2, "mixup": 0.2, "drop_near_duplicates": True,
                               "note": "plumbing only"})
    run_dir = run(config, str(data), tmp_path / "runs")
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] == 8 and metrics["test_unique"]["n"] == 7  # test/sad/0.jpg has a copy in train
    # reported on the whole validation folder (trainer/evaluation.py), though training selected its epoch without
    # validation/happy/requality.jpg, a re-encoded copy of a test image
    assert metrics["validation"]["n"] == 11
    assert metrics["validation_unique"]["n"] == 10  # validation/happy/copy_of_train.jpg is a copy of a train image
    assert metrics["peer"]["n"] == 0  # no file is named after a FER2013 test-part row
    assert json.loads((run_dir / "config.json").read_text())["drop_near_duplicates"] is True
    row = load_runs(tmp_path / "runs").iloc[0]
    assert (row["model"], row["note"], row["test acc"]) == ("tiny", "plumbing only", metrics["test"]["accuracy"])
