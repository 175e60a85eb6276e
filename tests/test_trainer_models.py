"""Every model builder builds, takes one training step on a tiny batch, and survives a save/load round trip."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer import models  # noqa: E402
from trainer.models import BUILDERS, WeightsUnavailable, build_model  # noqa: E402

TRANSFER = ("vgg16_tl", "resnet_v2_tl", "efficientnet_tl")
# Transfer bases take 32x32 here (their minimum) to keep the test quick; ours take the real 48x48.
SHAPES = {name: (32, 32, 3) if name in TRANSFER else (48, 48, 3) for name in BUILDERS}
SHAPES["simple_cnn"] = (48, 48, 1)  # grayscale input path too
SHAPES["efficientnet_tl"] = (32, 32, 1)  # gray -> RGB inside the graph


def tiny_batch(shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape)).astype(np.float32)  # 0-255 pixels: every model rescales itself
    y = np.eye(4, dtype=np.float32)[np.arange(n) % 4]
    return x, y


def test_the_original_builders_are_still_there():
    assert {"resnet_like", "vgg_bn", "tiny_cnn"} <= set(BUILDERS)
    assert build_model("resnet_like", (48, 48, 3), 4).count_params() == 298_084  # the reference's count


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_trains_one_step_and_round_trips_through_keras_file(name, tmp_path):
    args = {"weights": "none"} if name in TRANSFER else {}
    model = build_model(name, SHAPES[name], 4, **args)
    x, y = tiny_batch(SHAPES[name])
    # eager: one step on four images costs a fraction of tracing the graph (the real runs use graph mode)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (4, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), probs, atol=1e-5)


def test_frozen_transfer_base_keeps_its_weights_while_the_head_learns():
    model = models.vgg16_tl((32, 32, 3), 4, weights="none", trainable=False)
    base = next(layer for layer in model.layers if layer.name == "vgg16")
    head = model.layers[-1]
    base_before, head_before = [w.copy() for w in base.get_weights()], head.get_weights()[0].copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy", run_eagerly=True)
    model.train_on_batch(*tiny_batch((32, 32, 3)))
    assert all(np.array_equal(a, b) for a, b in zip(base_before, base.get_weights(), strict=True))
    assert not np.array_equal(head_before, head.get_weights()[0])
    assert len(model.trainable_weights) == 4  # two dense layers: kernel and bias each


def test_vgg16_preprocessing_in_graph_subtracts_the_imagenet_mean_from_0_255_pixels():
    model = models.vgg16_tl((32, 32, 1), 4, weights="none")
    preprocess = keras.Model(model.input, model.get_layer("vgg16_preprocess").output)
    out = np.asarray(preprocess(np.full((1, 32, 32, 1), 100.0, np.float32)))
    assert out.shape == (1, 32, 32, 3)  # gray repeated to three channels
    np.testing.assert_allclose(out[0, 0, 0], 100.0 - np.array(models.CAFFE_MEAN_BGR), rtol=1e-5)


def test_resnet_v2_preprocessing_maps_0_255_to_minus_1_1_and_can_upsample():
    model = models.resnet_v2_tl((48, 48, 3), 4, weights="none", upsample=64)
    assert model.get_layer("upsample").output.shape[1:3] == (64, 64)
    preprocess = keras.Model(model.input, model.get_layer("resnet_v2_preprocess").output)
    out = np.asarray(preprocess(np.stack([np.zeros((48, 48, 3)), np.full((48, 48, 3), 255.0)]).astype(np.float32)))
    np.testing.assert_allclose([out[0].min(), out[1].max()], [-1.0, 1.0], atol=1e-5)


def test_simple_cnn_kernel_argument_sets_every_conv_kernel():
    model = models.simple_cnn((48, 48, 3), 4, kernel=2)
    kernels = {layer.kernel_size for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    assert kernels == {(2, 2)}


def test_wide_resnet_has_one_residual_add_per_block():
    model = models.wide_resnet((48, 48, 1), 4, widths=(8, 16, 32), blocks_per_stage=[1, 2, 1])
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 4
    assert model.layers[-3].output.shape[-1] == 32  # global pooling over the last stage's width


def test_imagenet_weights_missing_from_the_keras_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as error:
        models.vgg16_tl((48, 48, 3), 4, weights="imagenet")
    message = str(error.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message and "_scratch" in message


@pytest.mark.parametrize("application", sorted(models.IMAGENET_FILES))
def test_imagenet_weights_found_in_the_keras_cache_are_used(application, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / models.IMAGENET_FILES[application]).write_bytes(b"placeholder")
    assert models.imagenet_weights(application, "imagenet") == "imagenet"  # keras then loads it offline
    assert models.imagenet_weights(application, "none") is None


@pytest.mark.parametrize("name, shape, args", [
    ("simple_cnn", (48, 48, 3), {"kernel": 2}),
    ("larger_cnn", (48, 48, 3), {"widths": (16, 8)}),
    ("wide_resnet", (48, 48, 1), {"widths": (8, 16), "blocks_per_stage": 1}),
])
def test_new_builders_export_to_onnx_with_parity(name, shape, args):
    pytest.importorskip("tf2onnx")
    from converter.export import check_parity, to_onnx

    model = build_model(name, shape, 4, **args)
    x, _ = tiny_batch(shape, n=8)
    parity, _ = check_parity(model, to_onnx(model, shape[-1]).SerializeToString(), x.astype(np.uint8), 1e-4)
    assert parity.argmax_agreement == 1.0


@pytest.mark.parametrize("name, args", [("vgg_bn", {"widths": [8, 16, 32], "convs_per_block": [1, 1]}),
                                        ("wide_resnet", {"widths": [8, 16, 32], "blocks_per_stage": [1, 1]})])
def test_a_per_block_list_shorter_than_widths_is_an_error_not_a_smaller_model(name, args):
    from trainer.models import build_model

    with pytest.raises(ValueError, match="entries but widths has 3"):
        build_model(name, (48, 48, 1), 4, **args)
