"""Ensembles and mirror-image TTA: the averaged graph computes what it claims, saves, exports and is scored."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from converter.export import check_parity, to_onnx  # noqa: E402
from tests.test_trainer_audit import make_dataset  # noqa: E402
from trainer import evaluation  # noqa: E402
from trainer.__main__ import main  # noqa: E402
from trainer.compare import load_runs  # noqa: E402
from trainer.config import config_from_dict  # noqa: E402
from trainer.ensemble import build_ensemble, load_member, run_ensemble  # noqa: E402
from trainer.models import HorizontalFlip  # noqa: E402
from trainer.train import run  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny trained runs on generated faces: one grayscale, one 'RGB' (the gray image three times)."""
    root = tmp_path_factory.mktemp("ensemble")
    data = make_dataset(root / "data")
    runs = {}
    for name, channels in (("gray", 1), ("rgb", 3)):
        config = config_from_dict({"name": name, "model": "tiny_cnn", "channels": channels, "batch_size": 8,
                                   "epochs": 1, "steps_per_epoch": 2, "seed": channels})
        runs[name] = run(config, str(data), root / "runs")
    return data, root / "runs", runs


def faces(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 1)).astype(np.float32)


def test_mirror_layer_flips_left_and_right():
    x = faces(2)
    np.testing.assert_array_equal(np.asarray(HorizontalFlip()(x)), x[:, :, ::-1, :])


def test_tta_ensemble_is_the_mean_over_members_and_mirror_images(trained):
    _, _, runs = trained
    gray, rgb = load_member(runs["gray"]), load_member(runs["rgb"])
    x = faces()
    mirrored = x[:, :, ::-1, :]
    expected = np.mean([gray.predict(x, verbose=0), gray.predict(mirrored, verbose=0),
                        rgb.predict(np.repeat(x, 3, axis=3), verbose=0),
                        rgb.predict(np.repeat(mirrored, 3, axis=3), verbose=0)], axis=0)
    model = build_ensemble({"gray": gray, "rgb": rgb}, tta=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    assert not np.allclose(expected, gray.predict(x, verbose=0), atol=1e-4)  # the members really differ


def test_alternate_ensemble_gives_each_member_one_view_in_turn(trained):
    _, _, runs = trained
    gray, rgb = load_member(runs["gray"]), load_member(runs["rgb"])
    x = faces()
    mirrored = x[:, :, ::-1, :]
    expected = np.mean([gray.predict(x, verbose=0), rgb.predict(np.repeat(mirrored, 3, axis=3), verbose=0)], axis=0)
    model = build_ensemble({"gray": gray, "rgb": rgb}, tta=False, alternate=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    swapped = np.mean([gray.predict(mirrored, verbose=0), rgb.predict(np.repeat(x, 3, axis=3), verbose=0)], axis=0)
    assert not np.allclose(expected, swapped, atol=1e-4)  # which member sees the mirror matters: order is kept
    assert len([layer for layer in model.layers if isinstance(layer, HorizontalFlip)]) == 1  # one mirror, two passes


def test_alternate_views_refuse_one_member_tta_together_and_a_run_twice(trained):
    _, _, runs = trained
    gray = load_member(runs["gray"])
    with pytest.raises(ValueError, match="two members"):
        build_ensemble({"gray": gray}, tta=False, alternate=True)
    with pytest.raises(ValueError, match="exclude each other"):
        build_ensemble({"gray": gray, "rgb": load_member(runs["rgb"])}, tta=True, alternate=True)
    data, runs_dir, _ = trained
    with pytest.raises(ValueError, match="given twice"):
        run_ensemble([runs["gray"], runs["gray"]], tta=False, runs_dir=runs_dir, data_root=str(data), alternate=True)


def test_ensemble_of_one_run_without_tta_scores_exactly_like_that_run(trained):
    data, runs_dir, runs = trained
    run_dir = run_ensemble([runs["gray"]], tta=False, runs_dir=runs_dir, name="gray_alone", data_root=str(data))
    member = json.loads((runs["gray"] / "metrics.json").read_text())
    alone = json.loads((run_dir / "metrics.json").read_text())
    for split in ("validation", "validation_unique", "test", "test_unique"):
        per_class = alone[split].pop("recall_per_class"), member[split].pop("recall_per_class")
        assert alone[split] == pytest.approx(member[split])
        assert per_class[0] == pytest.approx(per_class[1])
    ours, theirs = (pd.read_csv(r / "test_predictions.csv") for r in (run_dir, runs["gray"]))
    np.testing.assert_allclose(ours.filter(like="p_").values, theirs.filter(like="p_").values, atol=1e-5)


def test_saved_tta_ensemble_reloads_exports_to_onnx_and_is_listed_by_compare(trained):
    data, runs_dir, runs = trained
    run_dir = run_ensemble([runs["gray"], runs["rgb"]], tta=True, runs_dir=runs_dir, data_root=str(data))
    assert run_dir.name == "gray+rgb_tta"
    model = keras.models.load_model(run_dir / "model.keras", compile=False)  # custom layer is registered
    parity, _ = check_parity(model, to_onnx(model, channels=1).SerializeToString(), faces(16), tolerance=1e-5)
    assert parity.argmax_agreement == 1.0
    row = load_runs(runs_dir).set_index("model").loc["gray+rgb_tta"]
    assert row["architecture"] == "ensemble" and "TTA" in row["note"] and row["validation acc unique"] >= 0
    assert json.loads((run_dir / "config.json").read_text())["members"] == [str(runs["gray"]), str(runs["rgb"])]


def test_cli_names_a_run_without_a_model(tmp_path, capsys):
    (tmp_path / "half_done").mkdir()
    assert main(["ensemble", str(tmp_path / "half_done"), "--runs-dir", str(tmp_path)]) == 2
    assert "no model.keras" in capsys.readouterr().err


def test_rescore_from_the_exported_onnx_file_with_mirror_matches_the_tta_ensemble(trained, tmp_path):
    """A run whose model.keras is gone is rescored from its shipped ONNX file; --mirror reproduces its TTA row."""
    data, runs_dir, runs = trained
    onnx_file = tmp_path / "gray.onnx"
    member = load_member(runs["gray"])
    onnx_file.write_bytes(to_onnx(member, channels=1).SerializeToString())
    x = faces(8).astype(np.uint8)
    tta = build_ensemble({"gray": member}, tta=True).predict(x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(evaluation.mirrored(evaluation.onnx_predict(onnx_file))(x), tta, atol=1e-5)
    assert not np.allclose(evaluation.onnx_predict(onnx_file)(x), tta, atol=1e-4)  # the mirror changes the scores
    tta_dir = run_ensemble([runs["gray"]], tta=True, runs_dir=runs_dir, name="gray_tta_ref", data_root=str(data))
    for source, mirror in ((runs["gray"], False), (tta_dir, True)):
        copy = tmp_path / f"{source.name}_copy"
        copy.mkdir()
        (copy / "metrics.json").write_text((source / "metrics.json").read_text())
        assert main(["rescore", str(copy), "--model", str(onnx_file), "--data", str(data)]
                    + (["--mirror"] if mirror else [])) == 0
        expected, got = (json.loads((d / "metrics.json").read_text()) for d in (source, copy))
        for split in ("validation", "validation_unique", "test"):
            assert got[split]["accuracy"] == pytest.approx(expected[split]["accuracy"], abs=1e-9)
            assert got[split]["recall_per_class"] == pytest.approx(expected[split]["recall_per_class"], abs=1e-9)
