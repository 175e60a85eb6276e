"""Experiment configs: plain TOML files whose keys override the defaults below (one format for every model)."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

BALANCE_CHOICES = ("none", "undersample", "oversample", "class_weight")
SCHEDULE_CHOICES = ("plateau", "cosine", "constant")


class ConfigError(ValueError):
    """A config file that cannot be run; the message says which key and why."""


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
    channels: int = 1  # 1 = grayscale input, 3 = RGB (the gray image repeated, as the reference study did)
    batch_size: int = 64
    epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "plateau"
    early_stopping_patience: int = 8
    label_smoothing: float = 0.0
    balance: str = "none"
    augment: Augment = field(default_factory=Augment)
    drop_test_duplicates: bool = True  # never train or select on a copy of a test image
    seed: int = 42
    steps_per_epoch: int | None = None  # None = one pass over the training data; small numbers for CI
    train_limit: int | None = None  # use only this many training images (CI)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def _check(config: TrainConfig, source: str) -> None:
    from trainer.models import BUILDERS  # late import: models pulls in keras

    problems = []
    if config.model not in BUILDERS:
        problems.append(f"model '{config.model}' is not one of {', '.join(sorted(BUILDERS))}")
    if config.channels not in (1, 3):
        problems.append("channels must be 1 (grayscale) or 3 (RGB)")
    if config.balance not in BALANCE_CHOICES:
        problems.append(f"balance must be one of {', '.join(BALANCE_CHOICES)}")
    if config.schedule not in SCHEDULE_CHOICES:
        problems.append(f"schedule must be one of {', '.join(SCHEDULE_CHOICES)}")
    for key in ("batch_size", "epochs"):
        value = getattr(config, key)
        if not isinstance(value, int) or value < 1:
            problems.append(f"{key} must be a positive integer")
    if not isinstance(config.learning_rate, (int, float)) or config.learning_rate <= 0:
        problems.append("learning_rate must be a positive number")
    if not 0 <= config.label_smoothing < 1:
        problems.append("label_smoothing must be in [0, 1)")
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
