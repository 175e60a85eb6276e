"""trainer/evaluation.py: every subset and metric on a generated dataset with answers worked out by hand, the
near-copy rule, the FER+ majority rule, and the shipped model card recomputed by the same module."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from batch_job.preprocessing import load_image
from batch_job.results import CLASSES
from tests.conftest import SHARED_DATA, SHIPPED_MODEL, needs_data
from tests.test_trainer_audit import save_jpeg, smooth_face
from trainer import evaluation, ferplus

VOTE_COLUMNS = list(ferplus.VOTE_COLUMNS)


def votes_row(**counts) -> dict:
    return {column: counts.get(column, 0) for column in VOTE_COLUMNS}


def test_majority_drops_single_votes_needs_more_than_half_and_ties_have_none():
    rows = {
        "single sadness vote dropped: 5 of 9": votes_row(happiness=5, neutral=4, sadness=1),
        "tie": votes_row(happiness=5, neutral=5),
        "plain majority": votes_row(happiness=6, neutral=4),
        "every vote single": votes_row(**{c: 1 for c in VOTE_COLUMNS}),
        "not a face": votes_row(NF=10),
        "4 of 10 is no majority": votes_row(happiness=4, neutral=3, sadness=3),
        "three singles dropped: 5 of 7": votes_row(happiness=5, neutral=2, sadness=1, anger=1, fear=1),
    }
    got = ferplus.majority(pd.DataFrame.from_dict(rows, orient="index")).to_dict()
    assert got == {"single sadness vote dropped: 5 of 9": "happiness", "tie": "", "plain majority": "happiness",
                   "every vote single": "", "not a face": "NF", "4 of 10 is no majority": "",
                   "three singles dropped: 5 of 7": "happiness"}


def test_nearest_distance_is_rms_of_block_means_and_sees_mirror_images():
    rng = np.random.default_rng(0)
    pool = rng.integers(40, 200, (3, 48, 48, 1)).astype(np.uint8)
    query = np.stack([pool[0] + 12, pool[1][:, ::-1], rng.integers(40, 200, (48, 48, 1)).astype(np.uint8)])
    distance = evaluation.nearest_distance(query, pool)
    assert distance[0] == pytest.approx(12.0, abs=1e-4)  # every block mean 12 grey levels brighter
    assert distance[1] == pytest.approx(0.0, abs=1e-4)  # the mirror image of a pool face
    assert distance[2] > evaluation.NEAR_COPY_DISTANCE  # an unrelated face


def dim_face(seed: int) -> Image.Image:
    """A smooth face with grey levels 30-190, so it can be brightened by 20 without clipping."""
    pixels = np.asarray(smooth_face(seed), dtype=np.float32)
    return Image.fromarray((30 + pixels * 160 / 255).astype(np.uint8))


def brighter(image: Image.Image, levels: int) -> Image.Image:
    return Image.fromarray((np.asarray(image, dtype=np.int16) + levels).clip(0, 255).astype(np.uint8))


# validation file -> (predicted class, FER+ votes or None); the comment says what each one tests
VALIDATION = {
    "happy/30000.jpg": ("happy", votes_row(happiness=10)),  # new face: peer; FER+ agrees, predicted right
    "happy/30001.jpg": ("neutral", votes_row(happiness=5, neutral=4, sadness=1)),  # train face re-encoded: near copy
    "happy/30007.jpg": ("happy", votes_row(happiness=5, neutral=5)),  # byte copy of a train face; FER+ tie
    "neutral/30002.jpg": ("neutral", votes_row(NF=6, neutral=4)),  # a train face mirrored; FER+: not a face
    "neutral/30009.jpg": ("neutral", None),  # a test face re-encoded (near copy of a Training row); no votes
    "sad/30004.jpg": ("neutral", votes_row(neutral=8, sadness=2)),  # a train face + 10 grey levels: near
    "sad/30005.jpg": ("happy", votes_row(anger=7, sadness=3)),  # the same train face + 20: not near, peer
    "surprise/20000.jpg": ("surprise", votes_row(unknown=6, surprise=4)),  # a FER2013 Training row: never peer
    "surprise/30006.jpg": ("surprise", votes_row(surprise=10)),  # byte copy of validation row 20000
    "surprise/30008.jpg": ("sad", votes_row(surprise=6, fear=4)),  # near copy of an extra (angry) face
}
TEST = {"happy/1.jpg": "happy", "neutral/2.jpg": "happy", "sad/3.jpg": "sad", "surprise/4.jpg": "surprise"}


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A dataset whose every subset and score is known, and an oracle model predicting what the tables say."""
    base = tmp_path_factory.mktemp("evaluation")
    root = base / "facial_emotion_images"
    train = {"happy/100.jpg": smooth_face(100), "neutral/101.jpg": smooth_face(101),
             "sad/102.jpg": smooth_face(102), "sad/104.jpg": dim_face(104)}
    for name, image in train.items():
        save_jpeg(image, root / "train" / name)
    for k, name in enumerate(TEST):
        save_jpeg(smooth_face(200 + k), root / "test" / name)
    shutil.copy(root / "train/sad/102.jpg", root / "test/sad/3.jpg")  # test face with a copy in train
    extra = base / "facial_emotion_images_extra"
    save_jpeg(smooth_face(300), extra / "angry/5.jpg")

    val = root / "validation"
    save_jpeg(smooth_face(400), val / "happy/30000.jpg")
    save_jpeg(Image.open(root / "train/happy/100.jpg"), val / "happy/30001.jpg", quality=60)
    (val / "happy").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "train/happy/100.jpg", val / "happy/30007.jpg")
    save_jpeg(smooth_face(101).transpose(Image.Transpose.FLIP_LEFT_RIGHT), val / "neutral/30002.jpg")
    save_jpeg(Image.open(root / "test/neutral/2.jpg"), val / "neutral/30009.jpg", quality=60)
    save_jpeg(brighter(dim_face(104), 10), val / "sad/30004.jpg")
    save_jpeg(brighter(dim_face(104), 20), val / "sad/30005.jpg")
    save_jpeg(smooth_face(401), val / "surprise/20000.jpg")
    shutil.copy(val / "surprise/20000.jpg", val / "surprise/30006.jpg")
    save_jpeg(Image.open(extra / "angry/5.jpg"), val / "surprise/30008.jpg", quality=60)

    votes = [{"split": "validation", "file": f"validation/{name}", **counts}
             for name, (_, counts) in VALIDATION.items() if counts is not None]
    (base / "ferplus").mkdir()
    pd.DataFrame(votes).to_csv(base / "ferplus" / "votes.csv", index=False)

    predicted = {load_image(val / name).tobytes(): CLASSES.index(cls) for name, (cls, _) in VALIDATION.items()}
    predicted |= {load_image(root / "test" / name).tobytes(): CLASSES.index(cls) for name, cls in TEST.items()}

    def oracle(pixels: np.ndarray) -> np.ndarray:
        return np.eye(len(CLASSES), dtype=np.float32)[[predicted[p.tobytes()] for p in pixels]]

    return evaluation.load(root), oracle


def names_in(data, subset: str) -> set[str]:
    split = evaluation.SPLIT_OF[subset]
    return {n.split("/", 1)[1] for n, keep in zip(data.names(split), data.masks[subset], strict=True) if keep}


def test_subsets_hold_exactly_the_images_their_definitions_name(known):
    data, _ = known
    assert names_in(data, "test") == set(TEST)
    assert names_in(data, "test_unique") == set(TEST) - {"sad/3.jpg"}
    assert names_in(data, "validation") == set(VALIDATION)
    assert names_in(data, "validation_unique") == set(VALIDATION) - {"happy/30007.jpg"}
    # near copies of train (re-encoded, mirrored, +10 grey levels), of a test face, of a Training row of
    # validation and of an extra face are out; +20 grey levels is beyond NEAR_COPY_DISTANCE (15)
    assert names_in(data, "peer") == {"happy/30000.jpg", "sad/30005.jpg"}
    assert names_in(data, "fer_plus") == {"happy/30000.jpg", "happy/30001.jpg", "sad/30004.jpg",
                                          "surprise/30006.jpg", "surprise/30008.jpg"}


def test_every_metric_matches_the_hand_worked_answer(known):
    data, oracle = known
    metrics, probabilities = evaluation.evaluate(oracle, data)
    accuracy = {name: (m["accuracy"], m["n"]) for name, m in metrics.items()}
    assert accuracy == {
        "test": (3 / 4, 4), "test_unique": (2 / 3, 3),  # neutral/2 predicted happy
        "validation": (6 / 10, 10), "validation_unique": (5 / 9, 9),  # 30001, 30004, 30005, 30008 wrong
        "peer": (1 / 2, 2),  # 30000 right, 30005 wrong
        "fer_plus": (3 / 5, 5),  # against the crowd: 30004 (voted neutral) is right, 30001 and 30008 wrong
    }
    assert metrics["fer_plus"]["excluded"] == {"no votes": 1, "no majority": 1, "not a face": 1, "unknown": 1,
                                               "other emotion": 1}
    assert probabilities["validation"].shape == (10, 4) and probabilities["test"].shape == (4, 4)


def test_keras_and_onnx_predict_functions_agree_with_the_model(known, tmp_path):
    keras = pytest.importorskip("keras")
    from converter.export import to_onnx
    from trainer.models import build_model

    data, _ = known
    keras.utils.set_random_seed(0)
    model = build_model("tiny_cnn", (48, 48, 3), 4)  # RGB: both wrappers must repeat the gray channel
    path = tmp_path / "tiny.onnx"
    path.write_bytes(to_onnx(model, 3).SerializeToString())
    by_keras, _ = evaluation.evaluate(evaluation.keras_predict(model), data)
    by_onnx, _ = evaluation.evaluate(evaluation.onnx_predict(path), data)
    assert by_keras == by_onnx


@needs_data
def test_shipped_model_card_metrics_are_what_the_evaluation_module_measures():
    card = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())["metrics"]
    data = evaluation.load(SHARED_DATA)
    metrics, _ = evaluation.evaluate(evaluation.onnx_predict(SHIPPED_MODEL), data)
    assert {"test", "validation", "validation_unique", "peer", "fer_plus"} <= set(card) <= set(metrics)
    for subset, scores in card.items():
        assert metrics[subset]["n"] == scores["n"], subset
        for key in ("accuracy", "precision", "recall", "f1", "macro_f1"):
            assert metrics[subset][key] == pytest.approx(scores[key], abs=1e-12), (subset, key)
