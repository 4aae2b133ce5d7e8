"""Uniform symmetric grids exactly as the TFLite converter quantizes weights and biases."""
from __future__ import annotations

from typing import Tuple

import numpy as np


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (2.5 -> 3, -2.5 -> -3), as the TFLite converter rounds
    weights and biases; numpy's np.round rounds ties to even and would differ on exact .5 ties."""
    x = np.asarray(x)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def symmetric_quantize(w: np.ndarray, bits: int, per_channel_dim: int | None) -> Tuple[np.ndarray, np.ndarray]:
    """(q int8, scale) with scale = max|w| / (2^(b-1)-1), per channel along `per_channel_dim` or per tensor."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, np.float32)
    if per_channel_dim is None:
        maxabs = np.array([np.max(np.abs(w))], np.float32)
        bshape = [1] * w.ndim
    else:
        axes = tuple(a for a in range(w.ndim) if a != per_channel_dim)
        maxabs = np.max(np.abs(w), axis=axes).astype(np.float32)
        bshape = [1] * w.ndim
        bshape[per_channel_dim] = -1
    scale = np.where(maxabs > 0, maxabs / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    q = np.clip(round_half_away(w / scale.reshape(bshape)), -qmax, qmax).astype(np.int8)
    return q, scale


def quantize_bias(b: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    bias_scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    # One bias scale per weight scale (a per-tensor weight keeps a per-tensor bias, as the
    # converter writes it); the division broadcasts a single scale over every channel.
    q = round_half_away(np.asarray(b, np.float64) / bias_scale.astype(np.float64))
    return np.clip(q, -2**31 + 1, 2**31 - 1).astype(np.int32), bias_scale.astype(np.float32)
