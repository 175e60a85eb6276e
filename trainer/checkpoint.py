"""Resumable training: runs/<name>/checkpoint/ after every epoch, so a run continues where it stopped.

A checkpoint holds everything the next epoch depends on: every model variable (weights, batch-norm statistics,
dropout seed states), every optimizer variable (step count, moments, learning rate) and the loop's own state
(epochs done, best validation accuracy, early-stopping and plateau counters). The input pipeline needs no
state: each epoch's order and augmentation are functions of (seed, epoch) (trainer/train.py). Resuming
therefore gives the weights an uninterrupted run would have given.

Files: state.json (loop state, the config it belongs to, and the name of the variables file) and
variables-<epoch>.npz; the state file is replaced last, so a process killed while saving leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STATE = "state.json"


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to another config or another model: resuming from it would be wrong."""


@dataclass
class LoopState:
    config: dict
    learning_rate: float
    epoch: int = 0  # epochs completed
    best_val_accuracy: float = -1.0  # -1 = no epoch yet
    best_epoch: int = -1
    stop_wait: int = 0  # epochs without improvement (early stopping)
    plateau_best: float = -1.0
    plateau_wait: int = 0
    train_seconds: float = 0.0  # summed over every session that trained this run
    finished: bool = False
    variables: str = ""  # file name of the variables saved with this state
    history: list = field(default_factory=list)  # one dict of logs per epoch


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(folder: Path, model, state: LoopState) -> None:
    """Variables of the model and its optimizer, then the loop state that points at them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"variables-{state.epoch}.npz"
    arrays = {f"model_{k}": np.asarray(v.numpy()) for k, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{k}": np.asarray(v.numpy()) for k, v in enumerate(model.optimizer.variables)})

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    _write_atomically(folder / name, write_npz)
    state.variables = name
    _write_atomically(folder / STATE, lambda tmp: tmp.write_text(json.dumps(dataclasses.asdict(state), indent=2)))
    for old in folder.glob("variables-*.npz"):
        if old.name != name:
            old.unlink()


def load_state(folder: Path) -> LoopState | None:
    path = Path(folder) / STATE
    if not path.is_file():
        return None
    return LoopState(**json.loads(path.read_text()))


def restore(folder: Path, model, state: LoopState) -> None:
    """Put the saved variables back into a freshly built and compiled model (same config, same seed)."""
    with np.load(Path(folder) / state.variables) as saved:
        model_arrays = [saved[f"model_{k}"] for k in range(sum(key.startswith("model_") for key in saved.files))]
        optimizer_arrays = [saved[f"optimizer_{k}"]
                            for k in range(sum(key.startswith("optimizer_") for key in saved.files))]
    model.optimizer.build(model.trainable_variables)
    for target, arrays, what in ((model.variables, model_arrays, "model"),
                                 (model.optimizer.variables, optimizer_arrays, "optimizer")):
        if len(target) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(target, arrays, strict=True)):
            raise CheckpointMismatch(f"{folder}: the saved {what} variables do not fit this model "
                                     "(was the checkpoint made with another config?)")
        for variable, array in zip(target, arrays, strict=True):
            variable.assign(array)


def finish(folder: Path, state: LoopState) -> None:
    """Mark the run finished and drop the variables (the best model is model.keras); state.json stays so that
    --resume on a finished run says so instead of training again."""
    state.finished = True
    _write_atomically(Path(folder) / STATE, lambda tmp: tmp.write_text(json.dumps(dataclasses.asdict(state), indent=2)))
    for old in Path(folder).glob("variables-*.npz"):
        old.unlink()
