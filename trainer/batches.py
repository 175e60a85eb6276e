"""Training batches as a pure function of (seed, epoch): the order, the augmentation and mixup of every batch.

Nothing random in the pipeline keeps state: epoch e's order is a permutation drawn from numpy's generator
seeded with (seed, e), and batch b of epoch e draws its augmentation and mixup from stateless TensorFlow ops
seeded with fold_in(fold_in(seed, e), b). So a run resumed at epoch e sees exactly the batches an
uninterrupted run sees (trainer/checkpoint.py), and parallel map workers cannot reorder random draws.
"""
from __future__ import annotations

import numpy as np

from trainer.config import TrainConfig


def augment_layers(config: TrainConfig) -> list:
    """The configured Keras augmentation layers (flip, rotation, shift, zoom, contrast), in that order."""
    from keras import layers

    aug = config.augment
    steps = []
    if aug.flip:
        steps.append(layers.RandomFlip("horizontal"))
    if aug.rotation:
        steps.append(layers.RandomRotation(aug.rotation, fill_mode="nearest"))
    if aug.shift:
        steps.append(layers.RandomTranslation(aug.shift, aug.shift, fill_mode="nearest"))
    if aug.zoom:
        steps.append(layers.RandomZoom(aug.zoom, fill_mode="nearest"))
    if aug.contrast:
        steps.append(layers.RandomContrast(aug.contrast, value_range=(0, 255)))
    for layer in steps:  # they run inside tf.data, whatever Keras backend trains the model
        layer.backend.set_backend("tensorflow")
    return steps


def stateless_seed(seed):
    """A keras SeedGenerator that hands out fold_in(seed, 1), fold_in(seed, 2), ...: one fresh seed per random
    draw of a layer, derived from `seed` (a (2,) tensor) and nothing else."""
    import keras
    import tensorflow as tf

    class StatelessSeed(keras.random.SeedGenerator):
        def __init__(self, base):  # no super().__init__: no state variable on purpose
            self._base, self._draws = base, 0

        def next(self, ordered=True):
            self._draws += 1
            return tf.random.experimental.stateless_fold_in(self._base, self._draws)

    return StatelessSeed(seed)


def augment(images, layers: list, seed):
    """Apply each augmentation layer with its own seed, fold_in(seed, layer index)."""
    import tensorflow as tf

    for k, layer in enumerate(layers):
        transformation = layer.get_random_transformation(
            images, training=True, seed=stateless_seed(tf.random.experimental.stateless_fold_in(seed, k)))
        images = layer.transform_images(images, transformation, training=True)
    return images


def mixup(images, labels, alpha: float, seed=(0, 0)):
    """Mix each image and label with another of the batch, weight lambda ~ Beta(alpha, alpha); seeded."""
    import tensorflow as tf

    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    fold = tf.random.experimental.stateless_fold_in
    n = tf.shape(images)[0]
    a = tf.random.stateless_gamma([n], seed=fold(seed, 1), alpha=alpha)
    b = tf.random.stateless_gamma([n], seed=fold(seed, 2), alpha=alpha)
    lam = a / (a + b)
    partner = tf.random.experimental.stateless_shuffle(tf.range(n), seed=fold(seed, 3))
    lam_x, lam_y = tf.reshape(lam, [-1, 1, 1, 1]), tf.reshape(lam, [-1, 1])
    return (images * lam_x + tf.gather(images, partner) * (1 - lam_x),
            labels * lam_y + tf.gather(labels, partner) * (1 - lam_y))


def epoch_order(n: int, config: TrainConfig, epoch: int) -> np.ndarray:
    """Indices of epoch `epoch`: one permutation of 0..n-1, or steps_per_epoch x batch_size indices taken from
    permutations drawn one after another."""
    rng = np.random.default_rng([config.seed, epoch])
    wanted = config.steps_per_epoch * config.batch_size if config.steps_per_epoch else n
    return np.concatenate([rng.permutation(n) for _ in range(-(-wanted // n))])[:wanted]


def train_dataset(x: np.ndarray, y: np.ndarray, config: TrainConfig, epoch: int = 0,
                  weights: np.ndarray | None = None, num_classes: int = 4):
    """tf.data batches of epoch `epoch`: (float32 images, targets[, sample weights]). `y` is class indices
    (one-hot targets are made here) or already (N, classes) targets (soft labels)."""
    import tensorflow as tf

    targets = np.eye(num_classes, dtype=np.float32)[y] if np.ndim(y) == 1 else np.asarray(y, dtype=np.float32)
    images, targets = tf.constant(x), tf.constant(targets)
    sample_weights = None if weights is None else tf.constant(np.asarray(weights, dtype=np.float32))
    layers = augment_layers(config)
    base = tf.random.experimental.stateless_fold_in(tf.constant([config.seed, 0], tf.int64), epoch)
    order = epoch_order(len(x), config, epoch)

    def make_batch(step, index):
        seed = tf.random.experimental.stateless_fold_in(base, step)
        batch_x, batch_y = tf.cast(tf.gather(images, index), tf.float32), tf.gather(targets, index)
        if layers:
            batch_x = augment(batch_x, layers, tf.random.experimental.stateless_fold_in(seed, 1))
        if config.mixup:
            batch_x, batch_y = mixup(batch_x, batch_y, config.mixup, tf.random.experimental.stateless_fold_in(seed, 2))
        if sample_weights is None:
            return batch_x, batch_y
        return batch_x, batch_y, tf.gather(sample_weights, index)

    ds = tf.data.Dataset.from_tensor_slices(order).batch(config.batch_size).enumerate()
    return ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
