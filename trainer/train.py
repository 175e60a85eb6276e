"""One experiment: config -> trained best model + everything needed to judge it, in runs/<name>/.

The loop runs one epoch at a time and checkpoints after each (trainer/checkpoint.py), so `--resume` continues a
stopped run with the same result as an uninterrupted one. Per epoch: set the learning rate (cosine: a function
of the epoch; plateau: halve after patience // 3 epochs without a better validation accuracy), train on that
epoch's batches (trainer/batches.py), keep model.keras when validation accuracy is the best so far, stop early
after `early_stopping_patience` epochs without improvement.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from batch_job.preprocessing import INPUT_SIZE
from trainer import checkpoint, distill, training_set
from trainer import data as dataset
from trainer.batches import mixup, train_dataset  # noqa: F401  (mixup: part of this module's interface)
from trainer.config import TrainConfig

RUNS_DIR = Path("runs")
PLATEAU_FACTOR, PLATEAU_MIN_LR, PLATEAU_MIN_DELTA = 0.5, 1e-5, 1e-4


def balanced_indices(labels: np.ndarray, balance: str, rng: np.random.Generator, num_classes: int = 4) -> np.ndarray:
    """Indices into the training set after under- or oversampling every class to the same count."""
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    counts = [len(idx) for idx in by_class if len(idx)]
    if balance == "undersample":
        target = min(counts)
        return np.concatenate([rng.choice(idx, target, replace=False) for idx in by_class if len(idx)])
    if balance == "oversample":
        target = max(counts)
        return np.concatenate([
            np.concatenate([idx, rng.choice(idx, target - len(idx), replace=True)]) for idx in by_class if len(idx)])
    return np.arange(len(labels))


def class_weights(labels: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """Per-class loss weight n / (classes x count): every class weighs the same in total."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)


def served_accuracy(num_classes: int):
    """Accuracy over the product's four classes: argmax of the first four outputs against the label. The same
    as plain accuracy for a four-class model; for a seven-class one it is what the served model will score."""
    import keras

    def accuracy(y_true, y_pred):
        ops = keras.ops
        return ops.cast(ops.equal(ops.argmax(y_true, axis=1), ops.argmax(y_pred[:, :4], axis=1)), "float32")
    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy") if num_classes != 4 else "accuracy"


def learning_rate(config: TrainConfig, state: checkpoint.LoopState, epoch: int) -> float:
    if config.schedule == "cosine":
        return float(config.learning_rate * 0.5 * (1 + np.cos(np.pi * epoch / config.epochs)))
    return state.learning_rate  # constant, or as the plateau rule last left it


def end_of_epoch(config: TrainConfig, state: checkpoint.LoopState, epoch: int,
                 val_accuracy: float) -> tuple[bool, bool]:
    """Update the loop state after an epoch; returns (new best: save the model, stop early)."""
    improved = val_accuracy > state.best_val_accuracy
    state.stop_wait = 0 if improved else state.stop_wait + 1
    if improved:
        state.best_val_accuracy, state.best_epoch = val_accuracy, epoch
    if config.schedule == "plateau":
        if val_accuracy > state.plateau_best + PLATEAU_MIN_DELTA:
            state.plateau_best, state.plateau_wait = val_accuracy, 0
        else:
            state.plateau_wait += 1
            if state.plateau_wait >= max(2, config.early_stopping_patience // 3):
                state.learning_rate = max(state.learning_rate * PLATEAU_FACTOR, PLATEAU_MIN_LR)
                state.plateau_wait = 0
    return improved, state.stop_wait >= config.early_stopping_patience and epoch > 0


def write_history(history: list[dict], path: Path) -> None:
    import pandas as pd

    columns = ["epoch", "accuracy", "loss", "val_accuracy", "val_loss", "learning_rate"]
    pd.DataFrame(history).reindex(columns=columns).to_csv(path, index=False)


def run(config: TrainConfig, data_root: str | None = None, runs_dir: Path = RUNS_DIR, resume: bool = False,
        epochs_now: int | None = None) -> Path:
    """Train one config; returns its run folder (model.keras, metrics.json, plots, reports).

    resume: continue from runs/<name>/checkpoint/ when there is one (else start). epochs_now: train at most this
    many epochs in this call, then stop with a checkpoint and no report (continue later with resume=True)."""
    import keras

    from trainer import report
    from trainer.models import build_model, serving_model

    keras.utils.set_random_seed(config.seed)
    root = dataset.data_dir(data_root)
    run_dir = Path(runs_dir) / config.name
    ckpt_dir = run_dir / "checkpoint"
    state = checkpoint.load_state(ckpt_dir) if resume else None
    if state is not None and state.config != json.loads(json.dumps(config.to_dict())):
        raise checkpoint.CheckpointMismatch(f"{ckpt_dir} was made with another config; train without --resume "
                                            "to start over")
    if state is not None and state.finished:
        print(f"[{config.name}] already finished ({state.epoch} epochs): nothing to resume", flush=True)
        return run_dir

    splits = dataset.load_splits(root, config.drop_test_duplicates, config.drop_near_duplicates)
    rng = np.random.default_rng(config.seed)
    train = splits["train"]
    if config.train_limit:
        train = train.subset(np.isin(np.arange(len(train)), rng.permutation(len(train))[: config.train_limit]))
    faces = training_set.build(config, root, train, set(splits["test"].digests))
    # a missing teacher fails here, before any run folder is written
    teacher = distill.teacher_file(config.teacher) if config.teacher else None
    num_classes = len(faces.classes)
    model = build_model(  # a missing ImageNet weights file fails here, before any run folder is written
        config.model, (INPUT_SIZE, INPUT_SIZE, config.channels), num_classes, **config.model_args)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    print(f"[{config.name}] data {root}: train {len(faces.paths)} ({faces.summary}), validation "
          f"{len(splits['validation'])}, test {len(splits['test'])} (copies of test images dropped: "
          f"{config.drop_test_duplicates}, near copies too: {config.drop_near_duplicates})", flush=True)
    x_train = dataset.load_pixels(faces.paths, config.channels)
    if teacher is not None:
        faces = distill.with_teacher(faces, x_train[..., :1], teacher, config.teacher_weight,
                                     run_dir / distill.CACHE_NAME)
        print(f"[{config.name}] teacher {config.teacher} (weight {config.teacher_weight}): "
              f"{faces.summary['teacher']}", flush=True)
    x_val = dataset.load_pixels(splits["validation"].paths, config.channels).astype(np.float32)
    val_data = (x_val, np.eye(num_classes, dtype=np.float32)[splits["validation"].labels])

    idx = balanced_indices(faces.labels, config.balance, rng, num_classes)
    weights = faces.weights
    if config.balance == "class_weight":
        per_class = class_weights(faces.labels, num_classes)[faces.labels]
        weights = per_class if weights is None else weights * per_class
    model.compile(
        optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
        if config.weight_decay else keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[served_accuracy(num_classes)])
    if state is not None:
        checkpoint.restore(ckpt_dir, model, state)
        print(f"[{config.name}] resumed after epoch {state.epoch} of {config.epochs} (best validation accuracy "
              f"{state.best_val_accuracy:.4f} at epoch {state.best_epoch + 1})", flush=True)
    else:
        state = checkpoint.LoopState(json.loads(json.dumps(config.to_dict())), config.learning_rate)
    print(f"[{config.name}] model {config.model}: {model.count_params():,} parameters, {num_classes} classes",
          flush=True)

    best_path = run_dir / "model.keras"
    first = state.epoch
    for epoch in range(first, config.epochs):
        if epochs_now is not None and epoch - first >= epochs_now:
            print(f"[{config.name}] stopped after epoch {epoch} of {config.epochs} (--epochs-now {epochs_now}); "
                  "continue with --resume", flush=True)
            return run_dir
        started = time.perf_counter()
        lr = learning_rate(config, state, epoch)
        model.optimizer.learning_rate.assign(lr)
        ds = train_dataset(x_train[idx], faces.targets[idx], config, epoch,
                           None if weights is None else weights[idx], num_classes)
        logs = {k: float(v[-1]) for k, v in model.fit(ds, validation_data=val_data, epochs=epoch + 1,
                                                      initial_epoch=epoch, shuffle=False,
                                                      verbose=2).history.items()}
        improved, stop = end_of_epoch(config, state, epoch, logs["val_accuracy"])
        if improved:
            model.save(best_path)
        state.history.append({"epoch": epoch, **logs, "learning_rate": lr})
        write_history(state.history, run_dir / "history.csv")
        state.epoch = epoch + 1
        state.train_seconds += time.perf_counter() - started
        checkpoint.save(ckpt_dir, model, state)
        if stop:
            print(f"[{config.name}] early stop after epoch {epoch + 1}: no better validation accuracy for "
                  f"{config.early_stopping_patience} epochs", flush=True)
            break
    checkpoint.finish(ckpt_dir, state)

    best = serving_model(keras.models.load_model(best_path, compile=False))  # seven classes -> the served four
    best.save(best_path)  # re-saved without optimizer state: a third of the size
    report.write_run_report(run_dir, best, config, root, state.train_seconds)
    return run_dir
