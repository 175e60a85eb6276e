"""Resumable training: a run stopped and resumed ends with the weights, optimizer state and history of an
uninterrupted one, because every batch is a function of (seed, epoch) and the checkpoint holds the rest."""
from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tests.test_trainer_audit import make_dataset  # noqa: E402
from trainer.batches import train_dataset  # noqa: E402
from trainer.checkpoint import CheckpointMismatch, load_state  # noqa: E402
from trainer.config import config_from_dict  # noqa: E402
from trainer.train import run  # noqa: E402

# batch norm, dropout, every augmentation, mixup and the plateau schedule: everything that has state or randomness
TINY = {"name": "tiny", "model": "vgg_bn", "model_args": {"widths": [4, 8], "convs_per_block": 1, "dropout": 0.3},
        "batch_size": 8, "epochs": 3, "steps_per_epoch": 2, "mixup": 0.2, "schedule": "plateau",
        "early_stopping_patience": 3, "augment": {"flip": True, "shift": 0.1, "rotation": 0.05, "zoom": 0.1,
                                                  "contrast": 0.1}}


def saved_variables(run_dir):
    state = load_state(run_dir / "checkpoint")
    with np.load(run_dir / "checkpoint" / state.variables) as saved:
        return state.epoch, {key: saved[key] for key in saved.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = str(make_dataset(root / "data"))
    config = config_from_dict(TINY)
    whole = run(config, data, root / "whole", epochs_now=2)  # two epochs in one go, then stopped
    after_two_whole = saved_variables(whole)
    pieces = run(config, data, root / "pieces", epochs_now=1)
    after_one = saved_variables(pieces)
    run(config, data, root / "pieces", resume=True, epochs_now=1)
    after_two_pieces = saved_variables(pieces)
    for run_dir in (whole, pieces):
        run(config, data, run_dir.parent, resume=True)  # to the end, with report
    return {"data": data, "config": config, "whole": whole, "pieces": pieces, "after_one": after_one,
            "after_two_whole": after_two_whole, "after_two_pieces": after_two_pieces}


def test_resumed_checkpoint_equals_the_uninterrupted_one(runs):
    epoch_whole, whole = runs["after_two_whole"]
    epoch_pieces, pieces = runs["after_two_pieces"]
    assert epoch_whole == epoch_pieces == 2
    assert whole.keys() == pieces.keys() and any(k.startswith("optimizer_") for k in whole)
    for key in whole:
        np.testing.assert_array_equal(whole[key], pieces[key], err_msg=key)
    _, after_one = runs["after_one"]
    assert any(not np.array_equal(after_one[k], whole[k]) for k in whole)  # the second epoch did train


def test_resumed_run_ends_with_the_same_model_and_history(runs):
    import keras

    models = [keras.models.load_model(runs[name] / "model.keras", compile=False) for name in ("whole", "pieces")]
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    histories = [(runs[name] / "history.csv").read_text() for name in ("whole", "pieces")]
    assert histories[0] == histories[1] and len(histories[0].splitlines()) == 1 + 3
    metrics = [json.loads((runs[name] / "metrics.json").read_text()) for name in ("whole", "pieces")]
    assert metrics[0]["validation"] == metrics[1]["validation"] and metrics[0]["epochs_run"] == 3


def test_resume_refuses_a_checkpoint_of_another_config(runs, tmp_path):
    run(runs["config"], runs["data"], tmp_path, epochs_now=1)
    other = config_from_dict({**TINY, "learning_rate": 0.01})
    with pytest.raises(CheckpointMismatch, match="another config"):
        run(other, runs["data"], tmp_path, resume=True)


def test_resuming_a_finished_run_does_not_train_again(runs, capsys):
    metrics = runs["whole"] / "metrics.json"
    before = metrics.stat().st_mtime_ns
    run(runs["config"], runs["data"], runs["whole"].parent, resume=True)
    assert "already finished" in capsys.readouterr().out
    assert metrics.stat().st_mtime_ns == before


def test_batches_are_a_function_of_seed_and_epoch():
    x = np.random.default_rng(0).integers(0, 256, (20, 48, 48, 1)).astype(np.uint8)
    y = np.arange(20) % 4

    def first_batch(config, epoch):
        images, labels = next(iter(train_dataset(x, y, config, epoch)))
        return images.numpy(), labels.numpy()

    plain = config_from_dict({"name": "plain", "model": "tiny_cnn", "batch_size": 8})
    images, _ = first_batch(plain, 1)
    order = [next(k for k, face in enumerate(x) if np.array_equal(face, image)) for image in images.astype(np.uint8)]
    assert order != [next(k for k, face in enumerate(x) if np.array_equal(face, image))
                     for image in first_batch(plain, 0)[0].astype(np.uint8)]  # a new order every epoch

    augmented = config_from_dict({**TINY, "steps_per_epoch": None})
    again = first_batch(augmented, 1)
    np.testing.assert_array_equal(first_batch(augmented, 1)[0], again[0])
    np.testing.assert_array_equal(first_batch(augmented, 1)[1], again[1])
    assert not any(np.array_equal(again[0][0], face.astype(np.float32)) for face in x)  # augmented and mixed
