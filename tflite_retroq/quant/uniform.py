"""Uniform symmetric grids exactly as the TFLite converter quantizes weights and biases."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

# The converter keeps every quantized bias within INT32_MAX / 2 (room for the accumulator) and, where
# a bias would leave that range, enlarges the weight scale instead of clipping the bias:
# tensorflow/compiler/mlir/quantization/common/quantization_lib/quantization_driver.cc,
# QuantizationDriver::SetBiasParamsWithAdjustments, kBiasMax = INT32_MAX / 2.
BIAS_MAX = (2 ** 31 - 1) // 2


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (2.5 -> 3, -2.5 -> -3), as the TFLite converter rounds
    weights and biases; numpy's np.round rounds ties to even and would differ on exact .5 ties."""
    x = np.asarray(x)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def channel_shape(ndim: int, per_channel_dim: Optional[int]) -> list:
    """Broadcast shape of a scale vector against a weight tensor of rank `ndim`."""
    shape = [1] * ndim
    if per_channel_dim is not None:
        shape[per_channel_dim] = -1
    return shape


def max_scale(w: np.ndarray, bits: int, per_channel_dim: Optional[int]) -> np.ndarray:
    """scale = max|w| / (2^(b-1)-1), per channel along `per_channel_dim` or per tensor (1.0 for all-zero)."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, np.float32)
    if per_channel_dim is None:
        maxabs = np.array([np.max(np.abs(w))], np.float32)
    else:
        axes = tuple(a for a in range(w.ndim) if a != per_channel_dim)
        maxabs = np.max(np.abs(w), axis=axes).astype(np.float32)
    return np.where(maxabs > 0, maxabs / np.float32(qmax), np.float32(1.0)).astype(np.float32)


def fit_bias(scale: np.ndarray, bias: Optional[np.ndarray], input_scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """(weight scale, enlarged mask): the converter's rule so that round(b / (input_scale * scale)) stays
    within +-BIAS_MAX. Per channel: a channel with |b_c| / (s_in * s_c) > BIAS_MAX gets
    s_c = (|b_c| / BIAS_MAX) / s_in. Per tensor (one scale): when max|b| / (s_in * s) >= BIAS_MAX,
    s = (max|b| / BIAS_MAX) / s_in. Scales in float64, stored as float32, as the converter does."""
    scale = np.asarray(scale, np.float32).copy()
    if bias is None or input_scale <= 0:
        return scale, np.zeros(scale.shape, bool)
    b = np.abs(np.asarray(bias, np.float64).reshape(-1))
    s_in = float(np.float32(input_scale))
    if scale.size == 1:
        half = float(np.max(b)) if b.size else 0.0
        bias_scale = float(np.float32(s_in) * scale[0])
        if bias_scale > 0 and half / bias_scale < BIAS_MAX:
            return scale, np.zeros(1, bool)
        return np.array([np.float32(half / BIAS_MAX / s_in)], np.float32), np.ones(1, bool)
    bias_scale = (np.float32(s_in) * scale).astype(np.float64)
    mask = b / bias_scale > BIAS_MAX
    scale[mask] = (b[mask] / BIAS_MAX / s_in).astype(np.float32)
    return scale, mask


def quantize_with_scale(w: np.ndarray, scale: np.ndarray, bits: int, per_channel_dim: Optional[int]) -> np.ndarray:
    """int8 codes round(w / scale) clipped to +-(2^(b-1)-1), ties away from zero."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, np.float32)
    s = np.asarray(scale, np.float32).reshape(channel_shape(w.ndim, per_channel_dim))
    return np.clip(round_half_away(w / s), -qmax, qmax).astype(np.int8)


def symmetric_quantize(w: np.ndarray, bits: int, per_channel_dim: int | None) -> Tuple[np.ndarray, np.ndarray]:
    """(q int8, scale) with scale = max|w| / (2^(b-1)-1), per channel along `per_channel_dim` or per tensor."""
    scale = max_scale(w, bits, per_channel_dim)
    return quantize_with_scale(w, scale, bits, per_channel_dim), scale


def quantize_bias(b: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    bias_scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    # One bias scale per weight scale (a per-tensor weight keeps a per-tensor bias, as the
    # converter writes it); the division broadcasts a single scale over every channel.
    q = round_half_away(np.asarray(b, np.float64) / bias_scale.astype(np.float64))
    return np.clip(q, -2**31 + 1, 2**31 - 1).astype(np.int32), bias_scale.astype(np.float32)
