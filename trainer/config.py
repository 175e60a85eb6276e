"""Experiment configs: plain TOML files whose keys override the defaults below (one format for every model)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from batch_job.base import ConfigError as BaseConfigError

BALANCE_CHOICES = ("none", "undersample", "oversample", "class_weight")
SCHEDULE_CHOICES = ("plateau", "cosine", "constant")


class ConfigError(BaseConfigError):
    """A config file that cannot be run; the message says which key and why (batch_job's one ConfigError,
    a ValueError)."""


@dataclass(frozen=True)
class Augment:
    flip: bool = False
    shift: float = 0.0  # fraction of the image size
    rotation: float = 0.0  # fraction of a full turn, as keras.layers.RandomRotation takes it
    zoom: float = 0.0
    contrast: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    name: str
    model: str
    model_args: dict = field(default_factory=dict)
    note: str = ""  # shown in the results table, e.g. "from scratch: ImageNet weights unavailable"
    reference: str = ""  # the reference study's row this run reproduces (results table); default: the name
    channels: int = 1  # 1 = grayscale input, 3 = RGB (the gray image repeated, as the reference study did)
    batch_size: int = 64
    epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "plateau"
    early_stopping_patience: int = 8
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) mixup of training batches; 0 = off
    balance: str = "none"
    augment: Augment = field(default_factory=Augment)
    drop_test_duplicates: bool = True  # never train or select on a copy of a test image
    drop_near_duplicates: bool = False  # also drop near copies of test images (trainer/dedup.py; ~15 s more)
    # FER+ votes of the TRAIN images (../ferplus/votes.csv; trainer/ferplus.py), never of validation or test:
    soft_targets: float = 0.0  # weight of the FER+ vote distribution in each target: 0 = FER2013 label, 1 = votes only
    drop_not_a_face: bool = False  # drop training faces whose FER+ majority is "not a face"
    min_label_share: float = 0.0  # drop training faces whose FER2013 label got less than this share of the votes
    weight_by_label_share: bool = False  # weight each training face's loss by its label's share of the votes
    extra_classes: bool = False  # also train on facial_emotion_images_extra (7 classes); the model serves 4
    more_faces: bool = False  # also train on facial_emotion_images_more (FER2013 Training happy/neutral/sad)
    # knowledge distillation (trainer/distill.py): a four-class model's probabilities mixed into each target
    teacher: str = ""  # its run folder (or .keras file), relative to the working directory; "" = none
    teacher_weight: float = 0.0  # the teacher's share of each target: 0 = labels only, 1 = teacher only
    seed: int = 42
    steps_per_epoch: int | None = None  # None = one pass over the training data; small numbers for CI
    train_limit: int | None = None  # use only this many training images (CI)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def uses_votes(self) -> bool:
        return bool(self.soft_targets or self.drop_not_a_face or self.min_label_share or self.weight_by_label_share)


def config_from_dict(raw: dict, source: str = "<dict>") -> TrainConfig:
    """Validate a parsed config; unknown keys and bad values are errors, not silent defaults."""
    raw = dict(raw)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("name", "model"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{source}: '{key}' is required and must be a non-empty string")
    augment = raw.pop("augment", {})
    if not isinstance(augment, dict):
        raise ConfigError(f"{source}: 'augment' must be a table")
    augment_keys = {f.name for f in dataclasses.fields(Augment)}
    if set(augment) - augment_keys:
        raise ConfigError(f"{source}: unknown augment key(s) {', '.join(sorted(set(augment) - augment_keys))}")
    try:
        config = TrainConfig(**raw, augment=Augment(**augment))
    except TypeError as error:
        raise ConfigError(f"{source}: {error}") from None
    _check(config, source)
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_model_args(config: TrainConfig, builder) -> list[str]:
    """model_args must be parameters of the builder; transfer models' weights must be 'imagenet' or 'none'."""
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("input_shape", "num_classes")]
    problems = [f"model_args.{key} is not an argument of {config.model} (accepted: {', '.join(accepted)})"
                for key in sorted(set(config.model_args) - set(accepted))]
    if "weights" in config.model_args and config.model_args["weights"] not in ("imagenet", "none"):
        problems.append("model_args.weights must be \"imagenet\" or \"none\"")
    if "trainable" in config.model_args and not isinstance(config.model_args["trainable"], bool):
        problems.append("model_args.trainable must be true or false")
    return problems


def _check(config: TrainConfig, source: str) -> None:
    from trainer.models import BUILDERS  # late import: models pulls in keras

    problems = []
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", config.name):
        problems.append("name must be letters, digits, '_', '-' or '.' (it names the run folder)")
    if config.model not in BUILDERS:
        problems.append(f"model '{config.model}' is not one of {', '.join(sorted(BUILDERS))}")
    elif isinstance(config.model_args, dict):
        problems += _check_model_args(config, BUILDERS[config.model])
    if config.channels not in (1, 3):
        problems.append("channels must be 1 (grayscale) or 3 (RGB)")
    if config.balance not in BALANCE_CHOICES:
        problems.append(f"balance must be one of {', '.join(BALANCE_CHOICES)}")
    if config.schedule not in SCHEDULE_CHOICES:
        problems.append(f"schedule must be one of {', '.join(SCHEDULE_CHOICES)}")
    for key in ("batch_size", "epochs", "early_stopping_patience", "seed"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
            problems.append(f"{key} must be a positive integer")
    for key in ("steps_per_epoch", "train_limit"):
        value = getattr(config, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{key} must be a positive integer")
    if not _is_number(config.learning_rate) or config.learning_rate <= 0:
        problems.append("learning_rate must be a positive number")
    if not _is_number(config.weight_decay) or config.weight_decay < 0:
        problems.append("weight_decay must be a number >= 0")
    if not _is_number(config.label_smoothing) or not 0 <= config.label_smoothing < 1:
        problems.append("label_smoothing must be in [0, 1)")
    if not _is_number(config.mixup) or config.mixup < 0:
        problems.append("mixup must be a number >= 0 (the Beta distribution's alpha; 0 = off)")
    for key in ("soft_targets", "min_label_share", "teacher_weight"):
        if not _is_number(getattr(config, key)) or not 0 <= getattr(config, key) <= 1:
            problems.append(f"{key} must be a number in [0, 1]")
    for key in ("drop_test_duplicates", "drop_near_duplicates", "drop_not_a_face", "weight_by_label_share",
                "extra_classes", "more_faces"):
        if not isinstance(getattr(config, key), bool):
            problems.append(f"{key} must be true or false")
    if isinstance(config.teacher, str) and _is_number(config.teacher_weight) and \
            bool(config.teacher) != bool(config.teacher_weight):
        problems.append("teacher and teacher_weight go together: name the teacher's run folder and give it a "
                        "weight above 0, or neither")
    for key in ("note", "reference", "teacher"):
        if not isinstance(getattr(config, key), str):
            problems.append(f"{key} must be a string")
    if not isinstance(config.augment.flip, bool):
        problems.append("augment.flip must be true or false")
    for key in ("shift", "rotation", "zoom", "contrast"):
        value = getattr(config.augment, key)
        if not _is_number(value) or not 0 <= value < 1:
            problems.append(f"augment.{key} must be a number in [0, 1)")
    if not isinstance(config.model_args, dict):
        problems.append("model_args must be a table")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return config_from_dict(raw, str(path))
