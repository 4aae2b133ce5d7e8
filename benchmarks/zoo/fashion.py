"""Fashion-MNIST models trained here (seeded, a few epochs on CPU) and cached, never committed.

Two models, each with its own input convention and no preprocessing layer (so input-space
detection has nothing to read; the caller states the range, e.g. ``InputSpec`` / ``--input-range``):

* ``"dw_bn"``: depthwise-separable CNN with BatchNorm (Conv 3x3 stem, three DW 3x3 + PW 1x1 blocks,
  global average pooling, Dense). Input: pixels / 255 in [0, 1], float32 [N, 28, 28, 1]. Output: 10 logits.
  Depthwise layers have widely different per-channel ranges, which is where per-tensor weights hurt.
* ``"cnn_nobn"``: plain CNN without BatchNorm (two Conv 3x3 + max-pool, Dense 64, Dense 10).
  Input: raw pixels 0..255, float32 [N, 28, 28, 1]. Output: softmax probabilities.
  Trained on pixels / 255; the 1/255 is then folded into the first convolution's kernel, so the
  model is exactly the trained one applied to raw pixels.

The data is the Debian/Ubuntu package ``dataset-fashion-mnist`` (IDX gzip files under
``/usr/share/datasets/fashion-mnist``; override with ``$FASHION_MNIST_DIR``). Trained models are
cached as ``.keras`` under ``benchmarks/.cache/`` (git-ignored), keyed by kind, epochs and seed.
Float top-1 on the 10k test images (seed 0, default epochs, this machine) is in ``FLOAT_TOP1``.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

DATA_ENV_VAR = "FASHION_MNIST_DIR"
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
KINDS = ("dw_bn", "cnn_nobn")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
# Model input value range (the caller scales pixels to it; see eval_images).
INPUT_RANGE = {"dw_bn": (0.0, 1.0), "cnn_nobn": (0.0, 255.0)}
DEFAULT_EPOCHS = {"dw_bn": 4, "cnn_nobn": 3}
# Float top-1 (%) on the 10k test images, seed 0, DEFAULT_EPOCHS (measured when this file was written).
FLOAT_TOP1 = {"dw_bn": 82.69, "cnn_nobn": 89.40}

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def data_dir() -> Path:
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic:#x} (got {got:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` for ``split`` 'train' (60k) or 'test' (10k)."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = data_dir()
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: missing {', '.join(missing)}. Install it with "
            f"`apt-get install dataset-fashion-mnist` or set {DATA_ENV_VAR} to a directory holding the IDX .gz files.")
    images = _read_idx(paths[0], 0x00000803)
    labels = _read_idx(paths[1], 0x00000801).astype(np.int64)
    return images, labels


def _to_input(images_u8: np.ndarray, kind: str) -> np.ndarray:
    x = images_u8.astype(np.float32)[..., None]
    return x / 255.0 if kind == "dw_bn" else x


def eval_images(kind: str, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """The ``split`` images in ``kind``'s input convention (float32 [N, 28, 28, 1]) and their labels."""
    _check_kind(kind)
    images, labels = load_fashion_mnist(split)
    return _to_input(images, kind), labels


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown Fashion-MNIST model kind {kind!r}; choose one of {KINDS}")


def build(kind: str):
    """The untrained architecture (both take [N, 28, 28, 1] float32)."""
    _check_kind(kind)
    import keras
    from keras import layers
    inp = keras.Input((28, 28, 1), name="image")
    if kind == "dw_bn":
        x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
        x = layers.BatchNormalization(name="stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        for i, (filters, stride) in enumerate(((32, 1), (64, 2), (64, 1))):
            x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
            x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
            x = layers.ReLU(name=f"dw{i}_relu")(x)
            x = layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
            x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
            x = layers.ReLU(name=f"pw{i}_relu")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        out = layers.Dense(10, name="logits")(x)
        return keras.Model(inp, out, name="fashion_dw_bn")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv0")(inp)
    x = layers.MaxPooling2D(name="pool0")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Reshape((7 * 7 * 32,), name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="fc0")(x)
    out = layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="fashion_cnn_nobn")


def default_cache_dir() -> Path:
    return Path(__file__).resolve().parents[1] / ".cache"


def trained_model(kind: str, cache_dir: Optional[PathLike] = None, epochs: Optional[int] = None, seed: int = 0):
    """The trained ``kind`` model, loaded from the cache or trained (seeded) and cached first.

    Training uses the 60k training images (Adam, batch 128); ``epochs`` defaults to
    ``DEFAULT_EPOCHS[kind]`` (dw_bn about 2 min, cnn_nobn under 1 min on 2 shared CPU cores).
    """
    _check_kind(kind)
    epochs = DEFAULT_EPOCHS[kind] if epochs is None else int(epochs)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"fashion_{kind}_e{epochs}_s{seed}.keras"
    import keras
    if path.is_file():
        return keras.models.load_model(str(path), safe_mode=True)
    model = _train(kind, epochs, seed)
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.keras")
    try:
        model.save(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return model


def _train(kind: str, epochs: int, seed: int):
    import keras
    keras.utils.set_random_seed(seed)
    images, labels = load_fashion_mnist("train")
    x = images.astype(np.float32)[..., None] / 255.0  # both train on [0, 1]; cnn_nobn folds 1/255 in after
    model = build(kind)
    logits = kind == "dw_bn"
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits), metrics=["accuracy"])
    model.fit(x, labels, batch_size=128, epochs=epochs, verbose=0, shuffle=True)
    if kind == "cnn_nobn":
        conv = model.get_layer("conv0")
        kernel, bias = conv.get_weights()
        conv.set_weights([kernel / 255.0, bias])  # now takes raw 0..255 pixels
    return model
