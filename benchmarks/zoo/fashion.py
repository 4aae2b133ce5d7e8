"""Fashion-MNIST classifiers the benchmarks train themselves (seeded, cached), in two input conventions.

The data comes from Debian's package (`apt-get install dataset-fashion-mnist`, files under
/usr/share/datasets/fashion-mnist/); nothing is downloaded. Two models on purpose unlike the
CIFAR ResNets, so defaults are checked on more than one family:

* ``dw_bn``: depthwise-separable CNN with BatchNorm, no preprocessing layer, input pixels / 255
  in [0, 1] supplied by the caller, logits output.
* ``cnn_nobn``: plain CNN without BatchNorm, input raw pixels 0..255 (no preprocessing layer),
  softmax output. Nothing in the model tells its input scale: the tool must say what it assumed.

Trained models are cached under ``benchmarks/.cache/`` (ignored by git).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

DATA_DIR = Path(os.environ.get("RETROQ_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
CACHE = Path(__file__).resolve().parents[1] / ".cache"
KINDS = ("dw_bn", "cnn_nobn")
INPUT_RANGE = {"dw_bn": (0.0, 1.0), "cnn_nobn": (0.0, 255.0)}


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, 28, 28, 1] in 0..255, labels int64)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    img, lab = DATA_DIR / f"{prefix}-images-idx3-ubyte.gz", DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.is_file():
        raise FileNotFoundError(f"Fashion-MNIST not found at {DATA_DIR}; install it with "
                                "`apt-get install dataset-fashion-mnist` (or set RETROQ_FASHION_DIR).")
    return _idx(img).astype(np.float32)[..., None], _idx(lab).astype(np.int64)


def to_input(kind: str, pixels: np.ndarray) -> np.ndarray:
    """Pixels 0..255 in the model's own input convention."""
    return (pixels / 255.0).astype(np.float32) if kind == "dw_bn" else pixels.astype(np.float32)


def _build(kind: str):
    import keras
    inp = keras.Input((28, 28, 1), name="image")
    if kind == "dw_bn":
        x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        for filters, stride in ((32, 2), (64, 2), (64, 1)):
            x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
            x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
            x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
            x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Dense(10)(x)
    else:
        x = keras.layers.Conv2D(16, 3, activation="relu")(inp)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(32, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(64, activation="relu")(x)
        out = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out, name=f"fashion_{kind}")


def trained_model(kind: str, cache_dir: Optional[Path] = None, epochs: int = 3):
    """The trained model (cached after the first call; a few epochs on 2 CPU cores take about a minute)."""
    import keras
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")

    def fit():
        keras.utils.set_random_seed(0)
        x, y = load_fashion_mnist("train")
        model = _build(kind)
        # The raw-pixel model trains on raw pixels (a large input scale is part of what it is).
        model.compile(optimizer=keras.optimizers.Adam(1e-3 if kind == "dw_bn" else 3e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=kind == "dw_bn"),
                      metrics=["accuracy"])
        model.fit(to_input(kind, x), y, epochs=epochs, batch_size=128, verbose=0)
        return model

    return cached_model(Path(cache_dir or CACHE) / f"fashion_{kind}_e{epochs}.keras", fit)


def cached_model(path: Path, fit: Callable[[], object]):
    """The model saved at `path`, else `fit()`'s, saved there for the next run."""
    import keras
    if path.is_file():
        return keras.saving.load_model(path, compile=False)
    model = fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def eval_images(kind: str, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    x, y = load_fashion_mnist(split)
    return to_input(kind, x), y
