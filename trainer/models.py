"""Model builders: each a short function whose layers read like the architecture table.

Every model takes uint8-range pixels (0-255) and rescales them itself, so the exported ONNX graph needs
nothing but the shared preprocessing in front of it.
"""
from __future__ import annotations

import os
from pathlib import Path

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="trainer")
class HorizontalFlip(layers.Layer):
    """The mirror image of an NHWC batch, every time (RandomFlip is random and off at inference): test-time
    augmentation inside the graph, so the exported ONNX model needs nothing from the runtime."""

    def call(self, inputs):
        return inputs[:, :, ::-1, :]


@keras.saving.register_keras_serializable(package="trainer")
class ServedClasses(layers.Layer):
    """The first `count` softmax outputs, renormalised: a model trained on seven classes (the product's four
    first, then angry, disgust, fear) serves the four, so the exported ONNX output stays (N, 4)."""

    def __init__(self, count: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.count = count

    def call(self, inputs):
        kept = inputs[:, : self.count]
        return kept / keras.ops.sum(kept, axis=1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "count": self.count}


def serving_model(model: keras.Model, count: int = 4) -> keras.Model:
    """`model` with only its first `count` classes (see ServedClasses); a four-class model is returned as is."""
    if int(model.output_shape[-1]) == count:
        return model
    return keras.Model(model.inputs, ServedClasses(count, name="served_classes")(model.outputs[0]), name=model.name)


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


def _same_length(name: str, values, widths) -> None:
    """A per-block list must name every block: a short one would silently build a smaller model."""
    if len(values) != len(widths):
        raise ValueError(f"{name} has {len(values)} entries but widths has {len(widths)}")


def vgg_bn(input_shape, num_classes, widths=(32, 64, 128, 256), convs_per_block=2, dropout=0.3, l2=0.0):
    """VGG-style stacks of 3x3 conv + batch norm, max-pool between blocks, global pooling head."""
    inputs, x = _inputs(input_shape)
    if isinstance(convs_per_block, int):
        convs_per_block = [convs_per_block] * len(widths)
    _same_length("convs_per_block", convs_per_block, widths)
    for width, convs in zip(widths, convs_per_block, strict=True):
        for _ in range(convs):
            x = _conv_bn(x, width, l2=l2)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="vgg_bn")


def simple_cnn(input_shape, num_classes, kernel=3, widths=(64, 32, 32), dense=512, dropout=0.2):
    """The reference study's first model: three conv + max-pool + dropout blocks, one dense layer."""
    inputs, x = _inputs(input_shape)
    for width in widths:
        x = layers.Conv2D(width, kernel, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    x = layers.Dropout(2 * dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="simple_cnn")


def larger_cnn(input_shape, num_classes, kernel=2, widths=(256, 128, 64, 32), dense=(512, 128), dropout=0.2):
    """The reference's "more filters" model: four conv + batch norm + LeakyReLU blocks, two dense layers."""
    inputs, x = _inputs(input_shape)
    for width in widths:
        x = layers.Conv2D(width, kernel, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(0.1)(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    for units in dense:
        x = layers.Dense(units, activation="relu")(x)
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="larger_cnn")


def _preact_block(x, width, stride, dropout, l2):
    """Pre-activation residual block (He et al. 2016): BN-ReLU-conv, BN-ReLU-(dropout)-conv, plus shortcut."""
    reg = keras.regularizers.L2(l2) if l2 else None
    y = layers.BatchNormalization()(x)
    y = layers.Activation("relu")(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(y)
    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(y)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    if dropout:
        y = layers.Dropout(dropout)(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg)(y)
    return layers.Add()([y, shortcut])


def wide_resnet(input_shape, num_classes, widths=(32, 64, 128, 256), blocks_per_stage=2, dropout=0.2,
                head_dropout=0.3, l2=0.0):
    """Our recipe: a conv stem, then pre-activation residual stages (stride 2 from the second), GAP head."""
    inputs, x = _inputs(input_shape)
    if isinstance(blocks_per_stage, int):
        blocks_per_stage = [blocks_per_stage] * len(widths)
    _same_length("blocks_per_stage", blocks_per_stage, widths)
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False)(x)
    for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage, strict=True)):
        for block in range(blocks):
            x = _preact_block(x, width, 2 if stage and not block else 1, dropout, l2)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(head_dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="wide_resnet")


def tiny_cnn(input_shape, num_classes, width=8):
    """A few thousand parameters: for tests and CI, where only the plumbing matters."""
    inputs, x = _inputs(input_shape)
    x = layers.Conv2D(width, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


# Transfer learning from keras.applications. Each takes 0-255 pixels like every model here: grayscale is
# repeated to three channels in the graph, optionally resized up, then the application's own preprocessing.
# The file Keras would download for include_top=False: without network, it must already be in the cache.
IMAGENET_FILES = {
    "VGG16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "ResNet50V2": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "EfficientNetB0": "efficientnetb0_notop.h5",
}
IMAGENET_URLS = {
    "VGG16": "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/",
    "ResNet50V2": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    "EfficientNetB0": "https://storage.googleapis.com/keras-applications/",
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg16.preprocess_input


class WeightsUnavailable(FileNotFoundError):
    """ImageNet weights were asked for but are not in the Keras cache (and cannot be downloaded here)."""


def keras_cache_dir() -> Path:
    """Where keras.utils.get_file keeps downloads: $KERAS_HOME/models, default ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def imagenet_weights(application: str, weights):
    """'imagenet' when the cached file is there (Keras then loads it offline), None for 'none'/None."""
    if weights in (None, "none"):
        return None
    if weights != "imagenet":
        raise ValueError(f"weights must be 'imagenet' or 'none', not {weights!r}")
    path = keras_cache_dir() / IMAGENET_FILES[application]
    if not path.is_file():
        raise WeightsUnavailable(
            f"{application} ImageNet weights not found: place {IMAGENET_FILES[application]} (from "
            f"{IMAGENET_URLS[application]}{IMAGENET_FILES[application]}) at {path}, or use the config's "
            "_scratch variant (weights = \"none\")")
    return "imagenet"


def _transfer(application: str, input_shape, num_classes, weights, trainable, upsample, dense, dropout):
    weights = imagenet_weights(application, weights)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    if upsample and upsample != input_shape[0]:
        x = layers.Resizing(upsample, upsample, interpolation="bilinear", name="upsample")(x)
    size = int(x.shape[1])
    if application == "VGG16":
        # caffe mode: RGB->BGR then minus the ImageNet mean. Our three channels are the same gray image, so
        # the channel swap is the identity and only the per-channel mean remains.
        x = layers.Normalization(mean=CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0), name="vgg16_preprocess")(x)
        base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=(size, size, 3))
    elif application == "ResNet50V2":
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="resnet_v2_preprocess")(x)  # tf mode: [-1, 1]
        base = keras.applications.ResNet50V2(include_top=False, weights=weights, input_shape=(size, size, 3))
    else:  # EfficientNetB0 rescales and normalises inside its own graph: it takes 0-255 as is.
        base = keras.applications.EfficientNetB0(include_top=False, weights=weights, input_shape=(size, size, 3))
    base.trainable = bool(trainable)
    x = base(x, training=False if not trainable else None)  # a frozen base keeps batch norm in inference mode
    x = layers.GlobalAveragePooling2D()(x)
    if dense:
        x = layers.Dense(dense, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"{application.lower()}_tl")


def vgg16_tl(input_shape, num_classes, weights="imagenet", trainable=False, upsample=None, dense=256, dropout=0.3):
    """VGG16 convolutional base (14.7M params) + small dense head. 48x48 is above its 32x32 minimum."""
    return _transfer("VGG16", input_shape, num_classes, weights, trainable, upsample, dense, dropout)


def resnet_v2_tl(input_shape, num_classes, weights="imagenet", trainable=False, upsample=None, dense=256,
                 dropout=0.3):
    """ResNet50V2 base (23.6M params); minimum input 32x32, a 48x48 face ends as a 2x2 feature map."""
    return _transfer("ResNet50V2", input_shape, num_classes, weights, trainable, upsample, dense, dropout)


def efficientnet_tl(input_shape, num_classes, weights="imagenet", trainable=False, upsample=None, dense=256,
                    dropout=0.3):
    """EfficientNetB0 base (4.0M params); minimum input 32x32."""
    return _transfer("EfficientNetB0", input_shape, num_classes, weights, trainable, upsample, dense, dropout)


BUILDERS = {
    "resnet_like": resnet_like, "vgg_bn": vgg_bn, "tiny_cnn": tiny_cnn,
    "simple_cnn": simple_cnn, "larger_cnn": larger_cnn, "wide_resnet": wide_resnet,
    "vgg16_tl": vgg16_tl, "resnet_v2_tl": resnet_v2_tl, "efficientnet_tl": efficientnet_tl,
}


def build_model(name: str, input_shape, num_classes: int, **model_args) -> keras.Model:
    return BUILDERS[name](input_shape, num_classes, **model_args)
