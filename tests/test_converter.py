"""Keras -> ONNX: parity on real images, loud failure past tolerance, a model card the runtime reads."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO, SHARED_DATA, needs_data

keras = pytest.importorskip("keras")

from batch_job.model import EmotionModel  # noqa: E402
from converter.export import ParityError, check_parity, export, to_onnx  # noqa: E402
from trainer import data as dataset  # noqa: E402
from trainer.models import build_model  # noqa: E402


def real_pixels(n: int, split: str = "validation", channels: int = 1) -> np.ndarray:
    paths = dataset.list_split(SHARED_DATA, split).paths
    step = max(1, len(paths) // n)
    return dataset.load_pixels(paths[::step][:n], channels)


@pytest.fixture(scope="module")
def small_keras_model():
    keras.utils.set_random_seed(0)
    return build_model("vgg_bn", (48, 48, 1), 4, widths=[8, 16], convs_per_block=1)


@needs_data
def test_onnx_matches_keras_on_real_images(small_keras_model):
    proto = to_onnx(small_keras_model, channels=1)
    parity, probs = check_parity(small_keras_model, proto.SerializeToString(), real_pixels(300), tolerance=1e-5)
    assert parity.images == 300 and parity.max_abs_diff < 1e-5 and parity.argmax_agreement == 1.0
    assert probs.shape == (300, 4)


@needs_data
def test_parity_check_fails_loudly_for_a_different_graph(small_keras_model):
    keras.utils.set_random_seed(1)
    other = build_model("vgg_bn", (48, 48, 1), 4, widths=[8, 16], convs_per_block=1)
    with pytest.raises(ParityError, match="differs from Keras"):
        check_parity(small_keras_model, to_onnx(other, 1).SerializeToString(), real_pixels(64), tolerance=1e-4)


@needs_data
def test_export_embeds_a_model_card_the_runtime_reads(small_keras_model, tmp_path):
    keras_path = tmp_path / "run" / "model.keras"
    keras_path.parent.mkdir()
    small_keras_model.save(keras_path)
    (keras_path.parent / "metrics.json").write_text(json.dumps({"name": "run"}))
    card = export(keras_path, tmp_path / "out" / "emotion.onnx", str(SHARED_DATA))
    model = EmotionModel(tmp_path / "out" / "emotion.onnx")
    assert model.card.classes == ("happy", "neutral", "sad", "surprise")
    assert model.card.input_size == 48 and model.card.channels == 1
    metrics = json.loads(model.card.properties["metrics"])
    assert metrics["test"]["n"] == 128 and metrics["test_unique"]["n"] < 128
    assert metrics["validation"]["n"] == len(dataset.list_split(SHARED_DATA, "validation"))
    assert 4000 < metrics["validation_unique"]["n"] < metrics["validation"]["n"]  # 306 copies of train images
    assert card["parity"]["max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "out" / "emotion.json").read_text())["model_name"] == "run"
    speed = card["onnx_images_per_second"]["images_per_second"]
    assert speed > 0 and json.loads((keras_path.parent / "metrics.json").read_text())["onnx_images_per_second"] == speed


@needs_data
def test_shipped_onnx_matches_shipped_keras_model_on_real_images():
    model = keras.models.load_model(REPO / "models" / "emotion.keras", compile=False)
    onnx_bytes = (REPO / "models" / "emotion.onnx").read_bytes()
    parity, _ = check_parity(model, onnx_bytes, real_pixels(512, channels=int(model.input_shape[-1])), 1e-4)
    assert parity.argmax_agreement == 1.0


def test_int8_ensemble_keeps_every_members_head_in_float(tmp_path):
    """An ensemble has a dense head per member and view; quantizing any of them rounds the averaged
    probabilities to multiples of 1/255 (sums off by ~0.008, ties). Every head and the average stay float."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantType

    from converter.export import Parity, model_card
    from converter.quantize import float_tail, quantize
    from trainer.ensemble import build_ensemble

    members = {}
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        members[f"m{seed}"] = build_model("vgg_bn", (48, 48, 1), 4, widths=[8, 16], convs_per_block=1)
    proto = to_onnx(build_ensemble(members, tta=True), channels=1)
    tail = set(float_tail(proto))
    heads = [node for node in proto.graph.node if node.op_type in ("MatMul", "Gemm", "Softmax")]
    assert len([node for node in heads if node.op_type == "Softmax"]) >= 2  # one per member at least
    assert {node.name for node in heads} <= tail
    assert not any(node.op_type == "Conv" and node.name in tail for node in proto.graph.node)
    output = proto.graph.output[0].name
    assert any(output in node.output and node.name in tail for node in proto.graph.node)

    for key, value in model_card("ens", 1, Parity(1, 0.0, 1.0), {}).items():
        proto.metadata_props.add(key=key, value=value)
    source, target = tmp_path / "ens.onnx", tmp_path / "ens.int8.onnx"
    onnx.save(proto, str(source))
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 256, (16, 48, 48, 1)).astype(np.float32) for _ in range(2)]
    quantize(source, target, "image", calibration, QuantType.QInt8, False, CalibrationMethod.MinMax)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"image": rng.integers(0, 256, (64, 48, 48, 1)).astype(np.float32)})[0]
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(target)).graph.node)  # it is INT8
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
