"""Small Fashion-MNIST classifiers of the families the tool is measured on but nobody here tuned on.

Each family differs from the zoo's CIFAR ResNets in architecture, input convention or output:

* ``res_raw_bn``: residual CNN with BatchNorm on raw pixels 0..255 (no preprocessing layer), logits.
* ``dense_bn_softmax``: a dense head with BatchNorm after a small conv stem, [0, 1] input, softmax output.
* ``dw_bn_rescale``: depthwise-separable with BatchNorm behind a Rescaling(1/255) front, logits.
* ``vgg_nobn_norm``: VGG-style, no BatchNorm, input normalized outside the model ((x/255 - 0.286) / 0.353).
* ``silu_se_bn``: SiLU + squeeze-excite + BatchNorm, [-1, 1] input behind Rescaling(1/127.5, -1), logits.

With ``cnn_nobn`` / ``dw_bn`` (benchmarks/zoo/fashion.py) and ``vit`` / ``conv_attn``
(benchmarks/zoo/fashion_attention.py) they make the unseen-family set of benchmarks/zoo_models.py.
Trained for a few epochs on 20000 training images (seeded), cached under ``benchmarks/.cache/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from benchmarks.zoo.fashion import CACHE, cached_model, load_fashion_mnist

KINDS = ("res_raw_bn", "dense_bn_softmax", "dw_bn_rescale", "vgg_nobn_norm", "silu_se_bn")
FASHION_MEAN, FASHION_STD = 0.286, 0.353
# What the user would pass as input flags: only the normalized-input model needs them (nothing in it says).
INPUT_FLAGS: Dict[str, dict] = {"vgg_nobn_norm": {"mean": (FASHION_MEAN * 255,), "std": (FASHION_STD * 255,),
                                                  "value_range": (0.0, 255.0)}}


def to_input(kind: str, pixels: np.ndarray) -> np.ndarray:
    """Pixels 0..255 in the model's own input convention."""
    if kind == "dense_bn_softmax":
        return (pixels / 255.0).astype(np.float32)
    if kind == "vgg_nobn_norm":
        return ((pixels / 255.0 - FASHION_MEAN) / FASHION_STD).astype(np.float32)
    return pixels.astype(np.float32)


def _conv_bn(keras, x, filters, stride=1, act="relu"):
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.Activation(act)(x) if act else x


def build(kind: str):
    import keras
    inp = keras.Input((28, 28, 1), name="image")
    softmax = False
    if kind == "res_raw_bn":
        x = _conv_bn(keras, inp, 16)
        for filters, stride in ((16, 1), (32, 2), (64, 2)):
            y = _conv_bn(keras, x, filters, stride)
            y = _conv_bn(keras, y, filters, 1, act=None)
            if stride != 1 or x.shape[-1] != filters:
                x = keras.layers.BatchNormalization(momentum=0.9)(
                    keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
        x = keras.layers.GlobalAveragePooling2D()(x)
    elif kind == "dense_bn_softmax":
        x = _conv_bn(keras, inp, 16, 2)
        x = _conv_bn(keras, x, 32, 2)
        x = keras.layers.Flatten()(x)
        for units in (128, 64):
            x = keras.layers.Dense(units, use_bias=False)(x)
            x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(x))
        softmax = True
    elif kind == "dw_bn_rescale":
        x = keras.layers.Rescaling(1 / 255.0)(inp)
        x = _conv_bn(keras, x, 16)
        for filters, stride in ((32, 2), (64, 2), (64, 1)):
            x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
            x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(momentum=0.9)(x))
            x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
            x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(momentum=0.9)(x))
        x = keras.layers.GlobalAveragePooling2D()(x)
    elif kind == "vgg_nobn_norm":
        x = inp
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(64, activation="relu")(x)
    elif kind == "silu_se_bn":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
        x = _conv_bn(keras, x, 16, act="silu")
        for filters, stride in ((32, 2), (64, 2)):
            x = _conv_bn(keras, x, filters, stride, act="silu")
            s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
            s = keras.layers.Conv2D(filters // 4, 1, activation="silu")(s)
            s = keras.layers.Conv2D(filters, 1, activation="sigmoid")(s)
            x = keras.layers.Multiply()([x, s])
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        raise ValueError(f"kind must be one of {KINDS}")
    out = keras.layers.Dense(10, activation="softmax" if softmax else None)(x)
    return keras.Model(inp, out, name=f"fashion_{kind}")


def trained_model(kind: str, cache_dir: Optional[Path] = None, epochs: int = 3, train_images: int = 20000):
    """The trained model, cached after the first call."""
    import keras

    def fit():
        keras.utils.set_random_seed(0)
        x, y = load_fashion_mnist("train")
        model = build(kind)
        softmax = kind == "dense_bn_softmax"
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax))
        model.fit(to_input(kind, x[:train_images]), y[:train_images], epochs=epochs, batch_size=128, verbose=0)
        return model

    return cached_model(Path(cache_dir or CACHE) / f"fashion_{kind}_e{epochs}_n{train_images}.keras", fit)


def eval_images(kind: str, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    x, y = load_fashion_mnist(split)
    return to_input(kind, x), y
