"""Pretrained reference models (read from the shared zoo, never copied into the repo)."""

from . import fashion, mlperf

from .cifar_resnet import (
    CIFAR_MEAN,
    CIFAR_STD,
    DEPTHS,
    REFERENCE_ACCURACY,
    build_resnet,
    default_zoo_dir,
    load_cifar,
)

__all__ = [
    "fashion",
    "mlperf",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DEPTHS",
    "REFERENCE_ACCURACY",
    "build_resnet",
    "default_zoo_dir",
    "load_cifar",
]
