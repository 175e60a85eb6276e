"""Trained runs, and optionally their mirror image, averaged into one Keras model: `python -m trainer ensemble`.

Averaging softmax outputs is the cheapest accuracy left once models are trained: test-time augmentation
(the face and its horizontal mirror, as the training augmentation flipped faces) and ensembles of runs. With
`alternate`, members take turns: the first sees the face, the second its mirror, and so on, one pass per member:
two members cost what one member with its mirror costs, with the diversity of both runs and both views. The
average is one Keras graph, so the converter exports it as a single ONNX model and the runtime needs no
change; the run folder it writes has a trained run's metrics and report, so `compare` lists it too.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
from keras import layers

from batch_job.preprocessing import INPUT_SIZE
from trainer import data as dataset
from trainer import report
from trainer.models import HorizontalFlip


def load_member(run_dir: Path) -> keras.Model:
    path = Path(run_dir) / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no model.keras (train it first: python -m trainer run CONFIG)")
    return keras.models.load_model(path, compile=False)


def build_ensemble(members: dict[str, keras.Model], tta: bool, name: str = "ensemble",
                   alternate: bool = False) -> keras.Model:
    """One grayscale 0-255 input; each member (RGB members get the gray image three times, as in training)
    sees the face, and with tta also its mirror; with alternate, members in turn see the face or the mirror
    (in the order given). The output is the mean of all those softmax vectors."""
    if tta and alternate:
        raise ValueError("tta (every member sees both views) and alternate (each member sees one) exclude each other")
    if alternate and len(members) < 2:
        raise ValueError("alternate views need two members or more (the first sees the face, the second its mirror)")
    image = keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 1), name="image")
    both = [image, HorizontalFlip(name="mirror")(image)] if tta or alternate else [image]
    outputs = []
    for k, (member_name, member) in enumerate(members.items()):
        member.name = member_name  # layer names must be unique in the graph: two runs of one builder clash
        channels = int(member.input_shape[-1])
        for view in [both[k % 2]] if alternate else both:
            outputs.append(member(view if channels == 1 else layers.Concatenate()([view] * channels)))
    average = outputs[0] if len(outputs) == 1 else layers.Average(name="average")(outputs)
    return keras.Model(image, average, name=name)


def default_name(run_dirs: list[Path], tta: bool, alternate: bool = False) -> str:
    return "+".join(Path(r).name for r in run_dirs) + ("_tta" if tta else "") + ("_alt" if alternate else "")


def run_ensemble(run_dirs: list[Path], tta: bool, runs_dir: Path, name: str | None = None,
                 data_root: str | None = None, alternate: bool = False) -> Path:
    """Build, save and score the ensemble like a trained run: runs/<name>/ with model.keras and metrics.json."""
    run_dirs = [Path(r) for r in run_dirs]
    if len({r.name for r in run_dirs}) < len(run_dirs):
        raise ValueError("a run given twice: each member must be a different run")
    name = name or default_name(run_dirs, tta, alternate)
    members = {r.name: load_member(r) for r in run_dirs}
    model = build_ensemble(members, tta, name="ensemble", alternate=alternate)
    run_dir = Path(runs_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    config = {"name": name, "model": "ensemble", "members": [str(r) for r in run_dirs], "tta": tta,
              "alternate": alternate,
              "note": ("mirror-image TTA, " if tta else "") + f"mean of {len(run_dirs)} run(s)"
              + (", members in turn on the face and on its mirror" if alternate else "")}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    member_seconds = [json.loads((r / "metrics.json").read_text()).get("train_seconds", np.nan)
                      if (r / "metrics.json").is_file() else np.nan for r in run_dirs]
    report.write_run_report(run_dir, model, SimpleNamespace(name=name, model="ensemble"),
                            dataset.data_dir(data_root), float(np.sum(member_seconds)))
    return run_dir
