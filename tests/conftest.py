"""Shared fixtures: a tiny ONNX model built without TensorFlow, generated images, the shared dataset."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_job.results import CLASSES

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EMOTION_DATA_DIR") or REPO.parent / "shared" / "data" / "facial_emotion_images")
SHIPPED_MODEL = REPO / "models" / "emotion.onnx"
SHARED_PHOTOS = REPO.parent / "shared" / "photos"

needs_data = pytest.mark.skipif(not (SHARED_DATA / "test").is_dir(), reason=f"dataset not found at {SHARED_DATA}")
needs_photos = pytest.mark.skipif(not (SHARED_PHOTOS / "astronaut.png").is_file(),
                                  reason=f"photos not found at {SHARED_PHOTOS}")


def build_tiny_onnx(path: Path, seed: int = 0, classes=CLASSES) -> Path:
    """A linear softmax classifier over 48x48x1 pixels with a valid model card: real ONNX, no TensorFlow."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array((rng.standard_normal((48 * 48, len(classes))) / 2000).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([-1, 48 * 48], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 48, 48, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(classes)])],
        initializer=[weights, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"classes": json.dumps(list(classes)), "input_size": "48", "channels": "1"}.items():
        model.metadata_props.add(key=key, value=value)
    from converter.seal import seal

    save(seal(model), path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def face_like(seed: int, size: int = 48, mode: str = "L") -> Image.Image:
    """A deterministic random image (content is irrelevant to the plumbing under test)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Eight good images in nested folders, in several formats."""
    root = tmp_path / "images"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    for i, name in enumerate(["a/1.jpg", "a/2.png", "b/3.bmp", "b/deep/4.webp", "b/deep/5.tif", "6.gif",
                              "7.JPEG", "8.png"]):
        face_like(i).save(root / name)
    (root / "notes.txt").write_text("not an image and not an image name: skipped")
    return root


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a skipped test fails the run: a broken TensorFlow install or a missing ../shared must not
    go green with dozens of quiet skips."""
    if os.environ.get("CI", "").strip().lower() not in ("true", "1", "yes") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reasons = sorted({str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
                          for report in skipped})
        print(f"\nCI=true: {len(skipped)} skipped tests fail the run ({'; '.join(reasons)[:500]})")
        session.exitstatus = 1
