"""Keras -> ONNX with tf2onnx, a parity check on real images, and a model card in the ONNX metadata."""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batch_job.preprocessing import INPUT_SIZE, PREPROCESSING, with_channels
from batch_job.results import CLASSES

OPSET = 17


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce the Keras model within tolerance: never ship it."""


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    argmax_agreement: float


def to_onnx(model, channels: int):
    """The Keras model as an ONNX ModelProto (float32 input 'image', NHWC pixels 0-255)."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, channels), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    return proto


def check_parity(model, onnx_bytes: bytes, pixels: np.ndarray, tolerance: float) -> tuple[Parity, np.ndarray]:
    """Compare Keras and onnxruntime on the same images; raises ParityError past the tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    batch = pixels.astype(np.float32)
    expected = model.predict(batch, batch_size=256, verbose=0)
    actual = session.run(None, {session.get_inputs()[0].name: batch})[0]
    parity = Parity(len(batch), float(np.abs(expected - actual).max()),
                    float((expected.argmax(1) == actual.argmax(1)).mean()))
    if parity.max_abs_diff > tolerance or parity.argmax_agreement < 1.0:
        raise ParityError(f"ONNX differs from Keras on {parity.images} images: max |diff| "
                          f"{parity.max_abs_diff:.3g} (tolerance {tolerance:.3g}), argmax agreement "
                          f"{parity.argmax_agreement:.4%}")
    return parity, actual


def onnx_images_per_second(onnx_bytes: bytes, pixels: np.ndarray, batch: int = 256, seconds: float = 2.0) -> float:
    """onnxruntime throughput on pre-decoded images (batch 256, every core): what serving costs, decoding aside.
    A number for this machine only, and only when nothing else is running on it."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = [pixels[i:i + batch].astype(np.float32) for i in range(0, len(pixels), batch)]
    session.run(None, {name: batches[0]})  # warm-up
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for chunk in batches:
            session.run(None, {name: chunk})
            images += len(chunk)
    return images / (time.perf_counter() - started)


LICENSE = "Apache-2.0 (the weights, trained by this project; the YuNet face detector beside it: Apache-2.0)"
DATA_TERMS = {
    "FER2013": "Goodfellow et al., ICML 2013 workshop, distributed on Kaggle for research use: the training "
               "images (train, more, extra folders of ../shared/data) are FER2013 faces; check those terms before "
               "commercial use of a model trained on them",
    "FER+": "Barsoum et al. 2016, Microsoft's FER+ crowd votes (MIT licence): used as training targets or filters "
            "where a config asks (soft_targets, min_label_share) and to report FER+ agreement",
}


def training_summary(run_dir: Path) -> dict:
    """What the model was trained on, from its run's config (an ensemble: each member's): the model card's
    `training` entry."""
    def one(config: dict) -> dict:
        data = ["facial_emotion_images/train"]
        data += ["facial_emotion_images_more (happy, neutral, sad)"] if config.get("more_faces") else []
        data += ["facial_emotion_images_extra (angry, disgust, fear)"] if config.get("extra_classes") else []
        info = {"run": config.get("name"), "model": config.get("model"), "data": data,
                "classes_trained": 7 if config.get("extra_classes") else 4, "served": list(CLASSES),
                "ferplus_soft_targets": config.get("soft_targets", 0.0), "seed": config.get("seed")}
        if config.get("teacher"):  # distilled (trainer/distill.py): what the teacher was, in the same terms
            teacher = Path(config["teacher"])
            info["distilled_from"] = {"teacher": config["teacher"], "teacher_weight": config.get("teacher_weight"),
                                      **training_summary(teacher if teacher.is_dir() else teacher.parent)}
        return info

    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    if config.get("model") != "ensemble":
        return one(config)
    members = []
    for member in config.get("members", []):
        member_config = Path(member) / "config.json"
        if member_config.is_file():
            members.append(one(json.loads(member_config.read_text())))
    return {"ensemble": config.get("name"), "mirror_tta": config.get("tta", False),
            "alternate_views": config.get("alternate", False), "members": members}


def model_card(name: str, channels: int, parity: Parity, metrics: dict) -> dict[str, str]:
    """String key/values for ONNX metadata_props; the runtime reads classes, input_size and channels."""
    return {
        "model_name": name,
        "classes": json.dumps(list(CLASSES)),
        "input_size": str(INPUT_SIZE),
        "channels": str(channels),
        "input": json.dumps({"name": "image", "dtype": "float32", "shape": ["N", INPUT_SIZE, INPUT_SIZE, channels],
                             "layout": "NHWC", "range": [0, 255], "color": "grayscale" if channels == 1 else "rgb"}),
        "output": json.dumps({"dtype": "float32", "shape": ["N", len(CLASSES)], "meaning": "softmax probabilities"}),
        "preprocessing": PREPROCESSING + " (batch_job.preprocessing.load_image)",
        "parity": json.dumps(parity.__dict__),
        "metrics": json.dumps(metrics),
        "license": LICENSE,
        "data": json.dumps(DATA_TERMS),
    }


def export(keras_path: Path, output: Path, data_root: str | None = None, tolerance: float = 1e-4) -> dict:
    """Convert, prove parity on real validation and test images, score the ONNX graph with trainer/evaluation.py
    (the trainer's own metrics code, on the same subsets), write the card."""
    import keras
    import onnx

    import trainer.models  # noqa: F401  registers the custom layers (HorizontalFlip) a saved ensemble uses
    from trainer import evaluation

    model = keras.models.load_model(keras_path, compile=False)
    if int(model.output_shape[-1]) != len(CLASSES):
        raise ValueError(f"{keras_path} has {model.output_shape[-1]} outputs; the runtime serves {len(CLASSES)} "
                          f"({', '.join(CLASSES)}): export a run's four-class model.keras")
    channels = int(model.input_shape[-1])
    data = evaluation.load(data_root)
    proto = to_onnx(model, channels)

    onnx_bytes = proto.SerializeToString()
    probabilities, parity, inputs = {}, None, {}
    for name, gray in data.pixels.items():
        inputs[name] = with_channels(gray, channels)
        split_parity, probabilities[name] = check_parity(model, onnx_bytes, inputs[name], tolerance)
        parity = split_parity if parity is None else Parity(parity.images + split_parity.images,
                                                            max(parity.max_abs_diff, split_parity.max_abs_diff),
                                                            min(parity.argmax_agreement, split_parity.argmax_agreement))
    metrics = evaluation.metrics_from_probabilities(probabilities, data)

    speed = round(onnx_images_per_second(onnx_bytes, inputs["validation"]), 1)
    card = model_card(keras_path.parent.name if keras_path.name == "model.keras" else keras_path.stem,
                      channels, parity, metrics)
    card["onnx_images_per_second"] = json.dumps({"images_per_second": speed, "batch": 256,
                                                 "cpus": os.cpu_count(), "machine": platform.machine()})
    run_metrics = keras_path.parent / "metrics.json"
    if keras_path.name == "model.keras" and run_metrics.is_file():  # a run folder: its results-table row gets it
        run_record = json.loads(run_metrics.read_text())
        run_record["onnx_images_per_second"] = speed
        run_metrics.write_text(json.dumps(run_record, indent=2) + "\n")
    card["training"] = json.dumps(training_summary(keras_path.parent))
    for key, value in card.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = "Facial emotion classifier (happy, neutral, sad, surprise); see metadata for the model card."
    from converter.seal import FP32_TOLERANCE, seal

    proto = seal(proto, FP32_TOLERANCE)
    card.update({entry.key: entry.value for entry in proto.metadata_props if entry.key in ("graph_sha256", "reference")})
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, output)
    readable = {k: (json.loads(v) if v[:1] in "[{" else v) for k, v in card.items()}
    output.with_suffix(".json").write_text(json.dumps(readable, indent=2) + "\n")
    if keras_path.resolve() != output.with_suffix(".keras").resolve():
        shutil.copyfile(keras_path, output.with_suffix(".keras"))
    return readable
