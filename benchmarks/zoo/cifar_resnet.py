"""Keras 3 port of the pretrained CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10.

The weights are the PyTorch ``state_dict`` arrays stored in the shared zoo
(``<zoo>/cifar10/resnet{20,32,44,56}.npz``).  The zoo is never copied into the
repository: its location defaults to ``../shared/zoo`` relative to the repository
root and can be overridden with the ``RETROQ_ZOO`` environment variable or an
explicit ``zoo_dir`` argument.

The model takes raw float32 pixels in [0, 255] (NHWC, RGB); the preprocessing
``(x / 255 - mean) / std`` is part of the model (Rescaling + Normalization).
Only built-in, serializable Keras layers are used, so the model saves as
``.keras``, reloads with ``safe_mode=True`` and converts with
``tf.lite.TFLiteConverter.from_keras_model``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

ZOO_ENV_VAR = "RETROQ_ZOO"
DEPTHS = (20, 32, 44, 56)
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
BN_EPSILON = 1e-5
# Top-1 accuracy (%) of the original PyTorch models on test_first1017.npz (zoo README).
REFERENCE_ACCURACY = {20: 91.64, 32: 92.82, 44: 93.41, 56: 92.72}

_SPLIT_FILES = {"test": "test_first1017.npz", "train": "train_subset5085.npz"}


# --------------------------------------------------------------------------- paths
def default_zoo_dir() -> Path:
    """``$RETROQ_ZOO`` if set, else ``<repo root>/../shared/zoo`` (resolved)."""
    env = os.environ.get(ZOO_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "zoo").resolve()


def _zoo_file(zoo_dir: Optional[PathLike], name: str) -> Path:
    root = Path(zoo_dir).expanduser().resolve() if zoo_dir is not None else default_zoo_dir()
    path = root / "cifar10" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"model zoo file not found: {path} (zoo directory {root}). Pass zoo_dir= "
            f"or set the {ZOO_ENV_VAR} environment variable to the directory holding "
            f"cifar10/{name} (default: ../shared/zoo relative to the repository root)."
        )
    return path


# --------------------------------------------------------------------------- data
def load_cifar(zoo_dir: Optional[PathLike] = None, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR-10 subset from the zoo.

    ``split='test'``: the first 1017 official test images (for accuracy).
    ``split='train'``: 5085 training images (calibration only, never accuracy).
    Returns ``(images float32 [N,32,32,3] in 0..255, labels int64 [N])``.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_FILES)}, got {split!r}")
    with np.load(_zoo_file(zoo_dir, _SPLIT_FILES[split])) as data:
        images = data["images"].astype(np.float32)
        labels = data["labels"].astype(np.int64)
    return images, labels


def _load_state_dict(depth: int, zoo_dir: Optional[PathLike]) -> Dict[str, np.ndarray]:
    with np.load(_zoo_file(zoo_dir, f"resnet{depth}.npz")) as data:
        return {k: np.asarray(data[k]) for k in data.files}


# --------------------------------------------------------------------------- model
def build_resnet(depth: int, zoo_dir: Optional[PathLike] = None, *, folded: bool = False):
    """Build pretrained CIFAR-10 ResNet-``depth`` (20/32/44/56) as a functional Keras model.

    Input: float32 raw pixels [N, 32, 32, 3] in [0, 255]. Output: 10 logits.
    With ``folded=True`` the BatchNorms are folded into the convolutions via
    :func:`tflite_retroq.fold_batchnorm`.
    """
    if isinstance(depth, bool) or depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")
    import keras
    from keras import layers

    sd = _load_state_dict(depth, zoo_dir)
    used = set()
    n = (depth - 2) // 6

    def take(key: str) -> np.ndarray:
        if key not in sd:
            raise KeyError(f"resnet{depth}.npz has no key {key!r}")
        used.add(key)
        return sd[key].astype(np.float32)

    pending = []  # (layer, weights) set once the graph is built

    def conv(x, key: str, stride: int, name: str):
        w = take(key + ".weight")  # [out, in, kh, kw]
        if stride == 1:
            layer = layers.Conv2D(w.shape[0], 3, strides=1, padding="same", use_bias=False, name=name)
        else:
            # PyTorch padding=1 pads top/left AND bottom/right by one; Keras 'same' with
            # stride 2 on an even input pads only bottom/right, shifting the sampling grid.
            x = layers.ZeroPadding2D(((1, 1), (1, 1)), name=name + "_pad")(x)
            layer = layers.Conv2D(w.shape[0], 3, strides=stride, padding="valid", use_bias=False, name=name)
        y = layer(x)
        pending.append((layer, [np.transpose(w, (2, 3, 1, 0))]))
        return y

    def bn(x, key: str, name: str):
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=name)
        y = layer(x)
        pending.append((layer, [take(key + s) for s in (".weight", ".bias", ".running_mean", ".running_var")]))
        if key + ".num_batches_tracked" in sd:
            used.add(key + ".num_batches_tracked")
        return y

    inputs = keras.Input(shape=(32, 32, 3), dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = layers.Normalization(
        mean=list(CIFAR_MEAN), variance=[s * s for s in CIFAR_STD], name="normalize"
    )(x)
    x = conv(x, "conv1", 1, "conv1")
    x = bn(x, "bn1", "bn1")
    x = layers.ReLU(name="relu1")(x)

    in_planes = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for block in range(n):
            stride = 2 if (block == 0 and stage > 1) else 1
            key = f"layer{stage}.{block}"
            name = f"layer{stage}_{block}"
            y = conv(x, key + ".conv1", stride, name + "_conv1")
            y = bn(y, key + ".bn1", name + "_bn1")
            y = layers.ReLU(name=name + "_relu1")(y)
            y = conv(y, key + ".conv2", 1, name + "_conv2")
            y = bn(y, key + ".bn2", name + "_bn2")
            if stride != 1 or in_planes != planes:
                shortcut = option_a_shortcut(x, planes, name=name + "_shortcut")
            else:
                shortcut = x
            x = layers.Add(name=name + "_add")([y, shortcut])
            x = layers.ReLU(name=name + "_relu2")(x)
            in_planes = planes

    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    dense = layers.Dense(10, name="linear")
    outputs = dense(x)
    pending.append((dense, [take("linear.weight").T, take("linear.bias")]))

    model = keras.Model(inputs, outputs, name=f"cifar10_resnet{depth}")
    for layer, weights in pending:
        layer.set_weights(weights)
    unused = set(sd) - used
    if unused:
        raise ValueError(f"resnet{depth}.npz has unused keys: {sorted(unused)[:8]}")

    if folded:
        from tflite_retroq import fold_batchnorm

        model = fold_batchnorm(model)
    return model


def option_a_shortcut(x, planes: int, name: str = "shortcut"):
    """Option-A shortcut with built-in layers only.

    Equals ``pad(x[:, ::2, ::2, :], channels=(planes//4, planes//4))`` (NHWC):
    ``MaxPooling2D(pool_size=1, strides=2)`` subsamples, and
    Reshape -> ZeroPadding3D -> Reshape pads the channel axis with zeros.
    """
    from keras import layers

    x = layers.MaxPooling2D(pool_size=1, strides=2, padding="valid", name=name + "_subsample")(x)
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    p = planes // 4
    x = layers.Reshape((h, w, c, 1), name=name + "_expand")(x)
    x = layers.ZeroPadding3D(((0, 0), (0, 0), (p, p)), name=name + "_chanpad")(x)
    x = layers.Reshape((h, w, c + 2 * p), name=name + "_squeeze")(x)
    return x
