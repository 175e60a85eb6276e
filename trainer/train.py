"""One experiment: config -> trained best model + everything needed to judge it, in runs/<name>/."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from batch_job.preprocessing import CLASSES, INPUT_SIZE
from trainer import data as dataset
from trainer.config import TrainConfig

RUNS_DIR = Path("runs")


def balanced_indices(labels: np.ndarray, balance: str, rng: np.random.Generator) -> np.ndarray:
    """Indices into the training set after under- or oversampling every class to the same count."""
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
    counts = [len(idx) for idx in by_class if len(idx)]
    if balance == "undersample":
        target = min(counts)
        return np.concatenate([rng.choice(idx, target, replace=False) for idx in by_class if len(idx)])
    if balance == "oversample":
        target = max(counts)
        return np.concatenate([
            np.concatenate([idx, rng.choice(idx, target - len(idx), replace=True)]) for idx in by_class if len(idx)])
    return np.arange(len(labels))


def class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(float)
    return {c: float(len(labels) / (len(CLASSES) * n)) for c, n in enumerate(counts) if n}


def augmenter(config: TrainConfig):
    import keras
    from keras import layers

    aug = config.augment
    steps = []
    if aug.flip:
        steps.append(layers.RandomFlip("horizontal", seed=config.seed))
    if aug.rotation:
        steps.append(layers.RandomRotation(aug.rotation, fill_mode="nearest", seed=config.seed))
    if aug.shift:
        steps.append(layers.RandomTranslation(aug.shift, aug.shift, fill_mode="nearest", seed=config.seed))
    if aug.zoom:
        steps.append(layers.RandomZoom(aug.zoom, fill_mode="nearest", seed=config.seed))
    if aug.contrast:
        steps.append(layers.RandomContrast(aug.contrast, value_range=(0, 255), seed=config.seed))
    return keras.Sequential(steps, name="augment") if steps else None


def mixup(images, labels, alpha: float):
    """Mix each image and one-hot label with another of the batch, weight lambda ~ Beta(alpha, alpha)."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    a, b = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
    lam = a / (a + b)
    partner = tf.random.shuffle(tf.range(n))
    lam_x, lam_y = tf.reshape(lam, [-1, 1, 1, 1]), tf.reshape(lam, [-1, 1])
    return (images * lam_x + tf.gather(images, partner) * (1 - lam_x),
            labels * lam_y + tf.gather(labels, partner) * (1 - lam_y))


def train_dataset(x: np.ndarray, y: np.ndarray, config: TrainConfig):
    import tensorflow as tf

    one_hot = np.eye(len(CLASSES), dtype=np.float32)[y]
    ds = tf.data.Dataset.from_tensor_slices((x, one_hot)).shuffle(len(x), seed=config.seed,
                                                                  reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b))
    aug = augmenter(config)
    if aug is not None:
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    if config.mixup:
        ds = ds.map(lambda a, b: mixup(a, b, config.mixup), num_parallel_calls=tf.data.AUTOTUNE)
    if config.steps_per_epoch:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


def lr_callback(config: TrainConfig):
    import keras

    if config.schedule == "plateau":
        return keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max", factor=0.5,
                                                 patience=max(2, config.early_stopping_patience // 3), min_lr=1e-5)
    if config.schedule == "cosine":
        return keras.callbacks.LearningRateScheduler(
            lambda epoch: config.learning_rate * 0.5 * (1 + np.cos(np.pi * epoch / config.epochs)))
    return None


def run(config: TrainConfig, data_root: str | None = None, runs_dir: Path = RUNS_DIR) -> Path:
    """Train one config; returns its run folder (model.keras, metrics.json, plots, reports)."""
    import keras

    from trainer import report
    from trainer.models import build_model

    keras.utils.set_random_seed(config.seed)
    root = dataset.data_dir(data_root)
    model = build_model(  # first: a missing ImageNet weights file fails here, before any run folder or data
        config.model, (INPUT_SIZE, INPUT_SIZE, config.channels), len(CLASSES), **config.model_args)
    run_dir = Path(runs_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    splits = dataset.load_splits(root, config.drop_test_duplicates, config.drop_near_duplicates)
    rng = np.random.default_rng(config.seed)
    train = splits["train"]
    if config.train_limit:
        train = train.subset(np.isin(np.arange(len(train)), rng.permutation(len(train))[: config.train_limit]))
    print(f"[{config.name}] data {root}: train {len(train)}, validation {len(splits['validation'])}, "
          f"test {len(splits['test'])} (copies of test images dropped: {config.drop_test_duplicates}, "
          f"near copies too: {config.drop_near_duplicates})", flush=True)
    x = {name: dataset.load_pixels(split.paths, config.channels)
         for name, split in (("train", train), ("validation", splits["validation"]), ("test", splits["test"]))}
    y = {"train": train.labels, "validation": splits["validation"].labels, "test": splits["test"].labels}

    idx = balanced_indices(y["train"], config.balance, rng)
    ds = train_dataset(x["train"][idx], y["train"][idx], config)
    val_ds = (x["validation"].astype(np.float32), np.eye(len(CLASSES), dtype=np.float32)[y["validation"]])

    model.compile(
        optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay or None)
        if config.weight_decay else keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"])
    print(f"[{config.name}] model {config.model}: {model.count_params():,} parameters", flush=True)

    best_path = run_dir / "model.keras"
    callbacks = [
        keras.callbacks.ModelCheckpoint(best_path, monitor="val_accuracy", mode="max", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.early_stopping_patience),
        keras.callbacks.CSVLogger(run_dir / "history.csv"),
    ]
    if (schedule := lr_callback(config)) is not None:
        callbacks.append(schedule)
    started = time.perf_counter()
    model.fit(ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
              class_weight=class_weights(y["train"]) if config.balance == "class_weight" else None,
              callbacks=callbacks, verbose=2)
    train_seconds = time.perf_counter() - started

    best = keras.models.load_model(best_path, compile=False)
    best.save(best_path)  # re-save without optimizer state: a third of the size
    report.write_run_report(run_dir, best, config, root, train_seconds)
    return run_dir
