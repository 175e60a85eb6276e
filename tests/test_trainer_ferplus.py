"""FER+ votes of training faces as targets and filters, and seven-class training that still serves four classes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from batch_job.results import CLASSES
from tests.test_trainer_audit import make_dataset, save_jpeg, smooth_face
from tests.test_trainer_evaluation import votes_row
from trainer import ferplus
from trainer.config import ConfigError, config_from_dict


def frame(rows: dict) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index")


def test_distributions_over_four_classes_drop_single_votes_and_other_emotions():
    votes = frame({"a": votes_row(neutral=6, happiness=2, anger=1, NF=1),
                   "b": votes_row(sadness=4, anger=4, contempt=2)})
    dist = ferplus.distributions(votes, CLASSES)
    np.testing.assert_allclose(dist.loc["a"], [0.25, 0.75, 0, 0])  # happy 2, neutral 6; single anger/NF votes out
    np.testing.assert_allclose(dist.loc["b"], [0, 0, 1, 0])  # anger and contempt are no class of the four


def test_distributions_over_seven_classes_keep_the_extra_emotions():
    votes = frame({"b": votes_row(sadness=4, anger=4, contempt=2), "c": votes_row(fear=3, surprise=5, disgust=2)})
    dist = ferplus.distributions(votes, ferplus.SEVEN_CLASSES)
    assert list(dist.columns) == ["happy", "neutral", "sad", "surprise", "angry", "disgust", "fear"]
    np.testing.assert_allclose(dist.loc["b"], [0, 0, 0.5, 0, 0.5, 0, 0])
    np.testing.assert_allclose(dist.loc["c"], [0, 0, 0, 0.5, 0, 0.2, 0.3])


def test_not_a_face_has_no_distribution_and_keeps_its_label_as_target():
    votes = frame({"face": votes_row(happiness=8, neutral=2), "not a face": votes_row(NF=9, happiness=1)})
    assert ferplus.majority(votes).tolist() == ["happiness", "NF"]
    assert ferplus.distributions(votes).loc["not a face"].isna().all()
    targets, info = ferplus.train_targets(votes, np.array([1, 0]), CLASSES, 0.5)
    np.testing.assert_allclose(targets, [[0.4, 0.6, 0, 0],  # half one-hot neutral, half votes (0.8, 0.2)
                                         [1, 0, 0, 0]])  # no distribution: the FER2013 label, whole
    assert info == {"soft_weight": 0.5, "no_distribution": 1}


def test_label_share_is_the_labels_part_of_all_votes():
    votes = frame({"a": votes_row(neutral=6, happiness=2, anger=1, NF=1), "b": votes_row(sadness=1, NF=9)})
    np.testing.assert_allclose(ferplus.label_share(votes, ["happy", "sad"]), [0.2, 0.1])


def test_vote_options_must_be_in_range():
    with pytest.raises(ConfigError, match="soft_targets must be a number in"):
        config_from_dict({"name": "x", "model": "tiny_cnn", "soft_targets": 1.5})
    with pytest.raises(ConfigError, match="extra_classes must be true or false"):
        config_from_dict({"name": "x", "model": "tiny_cnn", "extra_classes": "yes"})


@pytest.fixture
def voted(tmp_path):
    """The generated dataset plus extra faces and FER+ votes: train/happy/0 not a face, train/sad/0 disputed."""
    root = make_dataset(tmp_path / "facial_emotion_images", plant=False)
    extra = tmp_path / "facial_emotion_images_extra"
    for k, name in enumerate(("angry", "disgust", "fear")):
        save_jpeg(smooth_face(900 + k), extra / name / f"{k}.jpg")
    save_jpeg(smooth_face(0), extra / "fear" / "9.jpg")  # the face of train/happy/0.jpg, labelled fear
    pd.DataFrame({"file": ["angry/0.jpg", "disgust/1.jpg", "fear/2.jpg", "fear/9.jpg"],
                  "near_shared_train_file": ["", "", "", "train/happy/0.jpg"]}).to_csv(extra / "MANIFEST.csv",
                                                                                        index=False)
    files = [p.relative_to(root).as_posix() for p in sorted(root.glob("train/*/*.jpg"))]
    label_column = {"happy": "happiness", "neutral": "neutral", "sad": "sadness", "surprise": "surprise"}
    rows = {f: votes_row(**{label_column[f.split("/")[1]]: 10}) for f in files}
    rows["train/happy/0.jpg"] = votes_row(NF=8, happiness=2)
    rows["train/sad/0.jpg"] = votes_row(neutral=7, sadness=3)
    rows["extra/angry/0.jpg"] = votes_row(anger=6, neutral=4)
    (tmp_path / "ferplus").mkdir()
    pd.DataFrame([{"file": f, **v} for f, v in rows.items()]).to_csv(tmp_path / "ferplus" / "votes.csv", index=False)
    return root


def build(root, **options):
    from trainer import data as dataset
    from trainer import training_set

    config = config_from_dict({"name": "x", "model": "tiny_cnn", **options})
    return training_set.build(config, root, dataset.list_split(root, "train"), set())


def names(faces, root) -> list[str]:
    return [p.relative_to(root.parent).as_posix() for p in faces.paths]


def test_training_set_drops_not_a_face_and_disputed_faces(voted):
    plain = build(voted)
    assert len(plain.paths) == 16 and plain.weights is None and plain.classes == CLASSES
    faces = build(voted, drop_not_a_face=True, min_label_share=0.5)
    dropped = set(names(plain, voted)) - set(names(faces, voted))
    assert dropped == {"facial_emotion_images/train/happy/0.jpg", "facial_emotion_images/train/sad/0.jpg"}
    assert faces.summary["dropped: not a face"] == 1 and faces.summary["dropped: label share < 0.5"] == 1


def test_training_set_weights_and_soft_targets_come_from_the_votes(voted):
    faces = build(voted, weight_by_label_share=True, soft_targets=1.0)
    at = {name.split("/", 1)[1]: k for k, name in enumerate(names(faces, voted))}
    assert faces.weights[at["train/sad/0.jpg"]] == pytest.approx(0.3)
    assert faces.weights[at["train/happy/1.jpg"]] == pytest.approx(1.0)
    np.testing.assert_allclose(faces.targets[at["train/sad/0.jpg"]], [0, 0.7, 0.3, 0])  # label distribution
    np.testing.assert_allclose(faces.targets[at["train/happy/0.jpg"]], [1, 0, 0, 0])  # not a face: its label


def test_extra_classes_add_the_three_emotions_as_classes_four_to_six(voted):
    faces = build(voted, extra_classes=True, soft_targets=0.5)
    assert faces.classes == ferplus.SEVEN_CLASSES and faces.summary["extra faces"] == 3  # fear/9.jpg left out
    assert faces.summary["extra faces dropped: near a train face"] == 1
    extra = [k for k, p in enumerate(faces.paths) if p.parent.parent.name == "facial_emotion_images_extra"]
    assert sorted(faces.labels[extra]) == [4, 5, 6]
    angry = next(k for k in extra if faces.labels[k] == 4)
    np.testing.assert_allclose(faces.targets[angry], [0, 0.2, 0, 0, 0.8, 0, 0])  # 0.5 one-hot + 0.5 (0.4, 0.6)


def test_more_faces_join_train_under_their_labels_with_their_votes(voted):
    more = voted.parent / "facial_emotion_images_more"
    save_jpeg(smooth_face(950), more / "happy" / "3.jpg")
    save_jpeg(smooth_face(951), more / "sad" / "7.jpg")
    votes = pd.read_csv(voted.parent / "ferplus" / "votes.csv")
    more_votes = pd.DataFrame([{"file": "more/sad/7.jpg", **votes_row(neutral=6, sadness=4)}])
    pd.concat([votes, more_votes]).to_csv(voted.parent / "ferplus" / "votes.csv", index=False)
    plain = build(voted)
    faces = build(voted, more_faces=True, soft_targets=1.0)
    assert faces.classes == CLASSES and faces.summary["more faces"] == 2
    assert len(faces.paths) == len(plain.paths) + 2
    at = {name: k for k, name in enumerate(names(faces, voted))}
    assert faces.labels[at["facial_emotion_images_more/happy/3.jpg"]] == CLASSES.index("happy")
    sad = at["facial_emotion_images_more/sad/7.jpg"]
    assert faces.labels[sad] == CLASSES.index("sad")
    np.testing.assert_allclose(faces.targets[sad], [0, 0.6, 0.4, 0])  # its votes, found under more/
    np.testing.assert_allclose(faces.targets[at["facial_emotion_images_more/happy/3.jpg"]], [1, 0, 0, 0])


def test_more_faces_without_the_folder_is_a_clear_error(voted):
    with pytest.raises(FileNotFoundError, match="facial_emotion_images_more"):
        build(voted, more_faces=True)


def test_seven_class_run_serves_and_exports_the_four_classes_in_order(voted, tmp_path):
    keras = pytest.importorskip("keras")
    from batch_job.model import EmotionModel
    from converter.export import export
    from trainer.train import run

    config = config_from_dict({"name": "seven", "model": "tiny_cnn", "batch_size": 8, "epochs": 1,
                               "steps_per_epoch": 2, "extra_classes": True, "soft_targets": 0.3,
                               "drop_not_a_face": True})
    run_dir = run(config, str(voted), tmp_path / "runs")
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    probs = model.predict(np.random.default_rng(0).integers(0, 256, (5, 48, 48, 1)).astype(np.float32), verbose=0)
    assert probs.shape == (5, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert json.loads((run_dir / "config.json").read_text())["extra_classes"] is True
    export(run_dir / "model.keras", tmp_path / "out" / "seven.onnx", str(voted))
    served = EmotionModel(tmp_path / "out" / "seven.onnx")
    assert served.card.classes == ("happy", "neutral", "sad", "surprise")
    assert served.predict(np.zeros((2, 48, 48, 1), np.uint8)).shape == (2, 4)
