"""MLPerf Tiny reference models from the shared zoo (``<zoo>/mlperf_tiny/``), never copied here.

* ``ic_resnet8``: CIFAR-10 ResNet-8, input raw pixels 0..255 (no preprocessing layer), softmax output.
* ``vww_mobilenetv1_96``: Visual Wake Words MobileNetV1 0.25 at 96x96, input pixels / 255 in [0, 1],
  2 classes. A Keras 2 ``.h5`` that ``tflite_retroq.load_model`` loads through its legacy path.

Each comes with MLPerf's own int8 ``.tflite`` calibrated on real images: the bar a data-free result
should clear. ``eval_images`` gives the CIFAR-10 zoo images in each model's own input convention
(VWW has no person images here: resized CIFAR images measure fidelity to float, not accuracy).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from .cifar_resnet import default_zoo_dir, load_cifar

PathLike = Union[str, os.PathLike]

MODELS = ("ic_resnet8", "vww_mobilenetv1_96")
# What the zoo README states about each model's input: (value_range, float top-1 on test_first1017 or None).
INPUT_RANGE = {"ic_resnet8": (0.0, 255.0), "vww_mobilenetv1_96": (0.0, 1.0)}
FLOAT_TOP1 = {"ic_resnet8": 88.00, "vww_mobilenetv1_96": None}


def _path(name: str, suffix: str, zoo_dir: Optional[PathLike]) -> Path:
    if name not in MODELS:
        raise ValueError(f"unknown MLPerf Tiny model {name!r}; choose one of {MODELS}")
    root = Path(zoo_dir).expanduser().resolve() if zoo_dir is not None else default_zoo_dir()
    path = root / "mlperf_tiny" / f"{name}{suffix}"
    if not path.is_file():
        raise FileNotFoundError(f"MLPerf Tiny file not found: {path}; set RETROQ_ZOO or pass zoo_dir=.")
    return path


def model_path(name: str, zoo_dir: Optional[PathLike] = None) -> Path:
    return _path(name, ".h5", zoo_dir)


def load_model(name: str, zoo_dir: Optional[PathLike] = None):
    """The float Keras model, loaded the way a user's would be (safe_mode, legacy .h5 handling)."""
    from tflite_retroq import load_model as rq_load
    return rq_load(str(model_path(name, zoo_dir)))


def reference_tflite(name: str, zoo_dir: Optional[PathLike] = None) -> bytes:
    """MLPerf's own full-int8 model (int8 I/O), calibrated on real images."""
    return _path(name, "_int8_reference.tflite", zoo_dir).read_bytes()


def eval_images(name: str, zoo_dir: Optional[PathLike] = None, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 zoo images in the model's input convention: (images float32 NHWC, labels).

    ResNet-8: raw 0..255 pixels, CIFAR labels. VWW: resized to 96x96 and scaled to [0, 1]; the labels are
    CIFAR's and mean nothing for person / no person (use agreement and SQNR only).
    """
    images, labels = load_cifar(zoo_dir, split)
    if name == "ic_resnet8":
        return images, labels
    import tensorflow as tf
    out = tf.image.resize(images, (96, 96), method="bilinear").numpy() / 255.0
    return np.clip(out, 0.0, 1.0).astype(np.float32), labels
