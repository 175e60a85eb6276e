"""Model builders: each a short function whose layers read like the architecture table.

Every model takes uint8-range pixels (0-255) and rescales them itself, so the exported ONNX graph needs
nothing but the shared preprocessing in front of it.
"""
from __future__ import annotations

import keras
from keras import layers


def _inputs(input_shape):
    inputs = keras.Input(shape=input_shape, name="image")
    return inputs, layers.Rescaling(1.0 / 255)(inputs)


def _conv_bn(x, filters, kernel=3, l2=0.0):
    reg = keras.regularizers.L2(l2) if l2 else None
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def resnet_like(input_shape, num_classes, widths=(32, 64, 128)):
    """The reference study's best model: three residual blocks with 1x1 conv shortcuts, no batch norm."""
    inputs, x = _inputs(input_shape)
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        y = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        y = layers.Conv2D(width, 3, padding="same", activation="relu")(y)
        if not last:
            y = layers.MaxPooling2D(2)(y)
        shortcut = layers.Conv2D(width, 1, strides=1 if last else 2)(x)
        x = layers.Add()([y, shortcut])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet_like")


def vgg_bn(input_shape, num_classes, widths=(32, 64, 128, 256), convs_per_block=2, dropout=0.3, l2=0.0):
    """VGG-style stacks of 3x3 conv + batch norm, max-pool between blocks, global pooling head."""
    inputs, x = _inputs(input_shape)
    if isinstance(convs_per_block, int):
        convs_per_block = [convs_per_block] * len(widths)
    for width, convs in zip(widths, convs_per_block):
        for _ in range(convs):
            x = _conv_bn(x, width, l2=l2)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="vgg_bn")


def tiny_cnn(input_shape, num_classes, width=8):
    """A few thousand parameters: for tests and CI, where only the plumbing matters."""
    inputs, x = _inputs(input_shape)
    x = layers.Conv2D(width, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


BUILDERS = {"resnet_like": resnet_like, "vgg_bn": vgg_bn, "tiny_cnn": tiny_cnn}


def build_model(name: str, input_shape, num_classes: int, **model_args) -> keras.Model:
    return BUILDERS[name](input_shape, num_classes, **model_args)
