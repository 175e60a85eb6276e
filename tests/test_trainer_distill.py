"""Distillation: the teacher's probabilities reach the student's targets, as mixed, cached and validated."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tests.test_trainer_audit import make_dataset  # noqa: E402
from trainer import distill  # noqa: E402
from trainer import train as train_module  # noqa: E402
from trainer.config import ConfigError, config_from_dict  # noqa: E402
from trainer.data import load_pixels  # noqa: E402

TINY = {"model": "tiny_cnn", "batch_size": 8, "epochs": 1, "steps_per_epoch": 2}


def test_mix_weights_teacher_and_label_and_leaves_auxiliary_faces_alone():
    labels = np.array([0, 3, 5])  # happy, surprise, and a seven-class student's "disgust" face
    targets = np.eye(7, dtype=np.float32)[labels]
    teacher = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32)
    mixed = distill.mix(targets, labels, teacher, 0.4)
    np.testing.assert_allclose(mixed[0], [0.8, 0.12, 0.04, 0.04, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(mixed[1], [0.04, 0.04, 0.08, 0.84, 0, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(mixed[2], targets[2])  # the teacher has no disgust output: label kept
    np.testing.assert_allclose(mixed.sum(axis=1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="not in"):
        distill.mix(targets, labels, teacher, 1.5)


@pytest.mark.parametrize("keys, message", [
    ({"teacher": "runs/x"}, "go together"),
    ({"teacher_weight": 0.5}, "go together"),
    ({"teacher": "runs/x", "teacher_weight": 2}, "teacher_weight must be"),
    ({"teacher": 3, "teacher_weight": 0.5}, "teacher must be a string"),
])
def test_config_refuses_half_a_teacher(keys, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"name": "student", **TINY, **keys})


def test_student_trains_on_the_teachers_cached_probabilities(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    teacher_dir = train_module.run(config_from_dict({"name": "teacher", **TINY}), str(data), runs)

    seen = []
    original = train_module.train_dataset

    def spy(x, y, *args, **kwargs):
        seen.append(np.array(y))
        return original(x, y, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_dataset", spy)
    student = config_from_dict({"name": "student", **TINY, "seed": 3, "teacher": str(teacher_dir),
                                "teacher_weight": 0.5})
    student_dir = train_module.run(student, str(data), runs)

    cache = student_dir / distill.CACHE_NAME
    with np.load(cache) as saved:
        keys, cached = saved["keys"].tolist(), saved["probabilities"]
    pixels = load_pixels([Path(k) for k in keys]).astype(np.float32)
    model = keras.models.load_model(teacher_dir / "model.keras", compile=False)
    np.testing.assert_allclose(cached, model.predict(pixels, verbose=0), atol=1e-5)
    labels = np.array([["happy", "neutral", "sad", "surprise"].index(k.split("/")[-2]) for k in keys])
    expected = distill.mix(np.eye(4, dtype=np.float32)[labels], labels, cached, 0.5)
    np.testing.assert_allclose(seen[0], expected, atol=1e-6)  # balance "none": the epoch sees every face in order

    stamp = cache.stat().st_mtime_ns
    again = config_from_dict({"name": "student", **TINY, "seed": 3, "teacher": str(teacher_dir),
                              "teacher_weight": 0.5, "epochs": 2})
    train_module.run(again, str(data), runs)
    assert cache.stat().st_mtime_ns == stamp  # same teacher, same faces: read, not recomputed


def test_missing_teacher_fails_before_any_run_folder_is_written(tmp_path):
    data = make_dataset(tmp_path / "data")
    config = config_from_dict({"name": "student", **TINY, "teacher": str(tmp_path / "nowhere"),
                               "teacher_weight": 0.5})
    with pytest.raises(FileNotFoundError, match="no such model file"):
        train_module.run(config, str(data), tmp_path / "runs")
    assert not (tmp_path / "runs" / "student").exists()


def test_model_card_says_what_a_student_was_distilled_from(tmp_path):
    from converter.export import training_summary

    def write(folder, config):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(json.dumps(config))
        return tmp_path / folder

    member = write("all7", {"name": "all7", "model": "vgg_bn", "extra_classes": True, "more_faces": True, "seed": 1})
    teacher = write("teacher_tta", {"name": "teacher_tta", "model": "ensemble", "members": [str(member)], "tta": True})
    student = write("kd", {"name": "kd", "model": "vgg_bn", "extra_classes": True, "teacher": str(teacher),
                           "teacher_weight": 0.7, "seed": 2})
    card = training_summary(student)
    assert (card["run"], card["classes_trained"], card["seed"]) == ("kd", 7, 2)
    assert card["distilled_from"]["teacher_weight"] == 0.7
    assert card["distilled_from"]["mirror_tta"] is True
    assert [m["run"] for m in card["distilled_from"]["members"]] == ["all7"]
    assert "distilled_from" not in training_summary(member)


def test_a_damaged_cache_is_scored_again_and_replaced(tmp_path, monkeypatch):
    model_file = tmp_path / "teacher.keras"
    model_file.write_bytes(b"stands in for a model")
    calls = []

    def scored(path, pixels):
        calls.append(path)
        return np.full((len(pixels), 4), 0.25, dtype=np.float32)

    monkeypatch.setattr(distill, "teacher_probabilities", scored)
    cache = tmp_path / distill.CACHE_NAME
    cache.write_bytes(b"PK\x03\x04 truncated")  # a run killed while writing it
    pixels = np.zeros((3, 48, 48, 1), dtype=np.uint8)
    keys = ["a.jpg", "b.jpg", "c.jpg"]
    first = distill.cached_probabilities(model_file, pixels, keys, cache)
    again = distill.cached_probabilities(model_file, pixels, keys, cache)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1  # the damaged file was replaced by a readable one
    distill.cached_probabilities(model_file, pixels, keys[:2] + ["d.jpg"], cache)
    assert len(calls) == 2  # other faces: scored again
