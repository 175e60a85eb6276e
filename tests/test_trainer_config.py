"""Configs: every shipped file loads; a bad one is a ConfigError that names the key; run-all plans from them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.__main__ import CONFIGS_DIR, main, plan_run_all
from trainer.compare import REFERENCE_README, load_reference
from trainer.config import ConfigError, config_from_dict, load_config

CONFIG_FILES = sorted(CONFIGS_DIR.glob("*.toml"))
REFERENCE_ROWS = ("simple_cnn_grayscale", "simple_cnn_rgb", "simple_cnn_rgb_2x2_under", "simple_cnn_rgb_2x2_over",
                  "larger_cnn_rgb", "vgg16_tl", "vgg16_tl_trainable", "resnetV2_tl", "resnetV2_tl_trainable",
                  "efficientnet_tl", "resnet_like")
GOOD = {"name": "x", "model": "tiny_cnn"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_is_named_after_its_file(path):
    config = load_config(path)
    assert config.name == path.stem  # run-all --only NAME and runs/NAME/ rely on it


def test_there_is_a_config_for_each_reference_row_and_a_scratch_variant_for_each_transfer_row():
    names = {p.stem for p in CONFIG_FILES}
    assert set(REFERENCE_ROWS) <= names
    scratch = [load_config(CONFIGS_DIR / f"{n}.toml") for n in names if n.endswith("_scratch")]
    assert all(c.model_args["weights"] == "none" for c in scratch)
    transfer_rows = [load_config(CONFIGS_DIR / f"{n}.toml") for n in REFERENCE_ROWS]
    transfer_rows = [c for c in transfer_rows if c.model_args.get("weights") == "imagenet"]
    assert len(transfer_rows) == 5
    for row in transfer_rows:  # same architecture, same frozen/trainable choice, only the weights differ
        variants = [c for c in scratch if c.reference == row.name]
        assert [(c.model, c.model_args["trainable"]) for c in variants] == [(row.model, row.model_args["trainable"])]


@pytest.mark.skipif(not REFERENCE_README.is_file(), reason="reference study not in ../shared")
def test_reference_row_names_in_the_study_match_our_config_names():
    assert tuple(load_reference(REFERENCE_README)["model"]) == REFERENCE_ROWS


def test_reference_configs_follow_the_studys_findings():
    config = {name: load_config(CONFIGS_DIR / f"{name}.toml") for name in REFERENCE_ROWS}
    assert config["simple_cnn_grayscale"].channels == 1 and config["simple_cnn_rgb"].channels == 3
    assert config["simple_cnn_rgb_2x2_under"].balance == "undersample"
    assert config["simple_cnn_rgb_2x2_over"].balance == "oversample"
    assert config["simple_cnn_rgb_2x2_over"].model_args["kernel"] == 2
    assert all(c.batch_size == 32 for c in config.values())
    assert config["vgg16_tl"].model_args["trainable"] is False
    assert config["vgg16_tl_trainable"].model_args["trainable"] is True
    assert config["resnetV2_tl"].model_args["weights"] == "imagenet"


def test_top_recipe_uses_strong_augmentation_label_smoothing_mixup_and_cosine():
    config = load_config(CONFIGS_DIR / "wide_resnet_aug.toml")
    assert config.schedule == "cosine" and config.label_smoothing > 0 and config.mixup > 0
    assert config.augment.flip and config.augment.shift and config.augment.contrast
    assert config.drop_near_duplicates


@pytest.mark.parametrize("raw, key", [
    ({**GOOD, "learning_rat": 0.1}, "learning_rat"),
    ({**GOOD, "model": "resnet9000"}, "resnet9000"),
    ({**GOOD, "balance": "smote"}, "balance"),
    ({**GOOD, "schedule": "warmup"}, "schedule"),
    ({**GOOD, "channels": 2}, "channels"),
    ({**GOOD, "epochs": "ten"}, "epochs"),
    ({**GOOD, "batch_size": 0}, "batch_size"),
    ({**GOOD, "learning_rate": -1}, "learning_rate"),
    ({**GOOD, "label_smoothing": 1.5}, "label_smoothing"),
    ({**GOOD, "mixup": -0.2}, "mixup"),
    ({**GOOD, "drop_near_duplicates": "yes"}, "drop_near_duplicates"),
    ({**GOOD, "note": 3}, "note"),
    ({**GOOD, "name": "../escape"}, "name"),
    ({"model": "tiny_cnn"}, "name"),
    ({**GOOD, "augment": {"flip": True, "blur": 0.1}}, "blur"),
    ({**GOOD, "augment": {"shift": 2.0}}, "augment.shift"),
    ({**GOOD, "model_args": {"widht": 8}}, "model_args.widht"),
    ({"name": "x", "model": "vgg16_tl", "model_args": {"weights": "places365"}}, "model_args.weights"),
    ({"name": "x", "model": "vgg16_tl", "model_args": {"trainable": "yes"}}, "model_args.trainable"),
])
def test_bad_config_is_a_config_error_naming_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(raw, "bad.toml")


def test_config_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nmodel = "tiny_cnn"\nbalance = "smote"\n')
    with pytest.raises(ConfigError, match="broken.toml: .*balance must be one of none, undersample"):
        load_config(path)


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path):
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_new_keys_default_off_and_reach_config_json():
    config = config_from_dict(GOOD)
    assert (config.mixup, config.drop_near_duplicates, config.note, config.reference) == (0.0, False, "", "")
    as_json = json.loads(json.dumps(config_from_dict({**GOOD, "note": "n", "mixup": 0.2}).to_dict()))
    assert as_json["note"] == "n" and as_json["mixup"] == 0.2


def test_run_with_a_bad_config_exits_2_with_the_reason(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\nmodel = "nope"\n')
    assert main(["run", str(path)]) == 2
    assert "model 'nope' is not one of" in capsys.readouterr().err


def _write(configs: Path, name: str, body: str) -> None:
    (configs / f"{name}.toml").write_text(f'name = "{name}"\n{body}\n')


def test_run_all_plan_skips_finished_runs_missing_weights_and_ci_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    configs, runs = tmp_path / "configs", tmp_path / "runs"
    configs.mkdir()
    _write(configs, "ci_tiny", 'model = "tiny_cnn"')
    _write(configs, "a_done", 'model = "tiny_cnn"')
    _write(configs, "b_todo", 'model = "tiny_cnn"')
    _write(configs, "c_imagenet", 'model = "vgg16_tl"\nmodel_args = { weights = "imagenet" }')
    _write(configs, "d_scratch", 'model = "vgg16_tl"\nmodel_args = { weights = "none" }')
    _write(configs, "e_broken", 'model = "tiny_cnn"\nepochs = 0')
    (runs / "a_done").mkdir(parents=True)
    (runs / "a_done" / "metrics.json").write_text("{}")

    plan = {path.stem: action for path, _, action in plan_run_all(configs, runs, None, force=False)}
    assert set(plan) == {"a_done", "b_todo", "c_imagenet", "d_scratch", "e_broken"}
    assert plan["a_done"].startswith("skip: already done")
    assert plan["b_todo"] == plan["d_scratch"] == "run"
    assert plan["c_imagenet"].startswith("skip:") and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in plan[
        "c_imagenet"]
    assert plan["e_broken"].startswith("skip: bad config") and "epochs" in plan["e_broken"]

    forced = {p.stem: a for p, _, a in plan_run_all(configs, runs, ["a_done", "ci_tiny"], force=True)}
    assert forced == {"a_done": "run", "ci_tiny": "run"}
    with pytest.raises(ConfigError, match="no config named zzz"):
        plan_run_all(configs, runs, ["zzz"], force=False)


def test_run_all_dry_run_lists_the_shipped_configs_without_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert main(["run-all", "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    assert "simple_cnn_rgb: run" in printed and "vgg16_tl: skip: VGG16 ImageNet weights not found" in printed
    assert "ci_tiny" not in printed
    assert not (tmp_path / "runs").exists()
