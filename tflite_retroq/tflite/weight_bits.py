"""Pass: limit int8 weights to +-(2^(b-1)-1) levels on their own scale (W6, W4).

The weights are re-quantized from the BN-folded float weights of the calibrated
model (same op output names), not from the int8 weights, so no double rounding
enters; biases are re-derived as round(b / (input_scale * weight_scale)). Ties round away
from zero, as the converter does.
Tensors stay int8, so every int8 kernel and delegate runs the result.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from tflite_retroq.errors import TFLiteModelError
from tflite_retroq.tflite import model as tfm


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


def requantize_op(model, calibrated, wop: tfm.WeightOp, fop: tfm.WeightOp, bits: int, per_channel: bool) -> None:
    """Re-quantize one op's weight (+bias) in `model` from the float tensors of `calibrated`."""
    sg, fsg = model.subgraphs[wop.subgraph], calibrated.subgraphs[fop.subgraph]
    w = tfm.tensor_array(calibrated, fsg, fop.weight)
    if w is None or w.dtype != np.float32:
        raise TFLiteModelError(f"Op {wop.output_name!r}: the calibrated model has no float weights for it.")
    wt = sg.tensors[wop.weight]
    dim = 3 if wop.kind == "DEPTHWISE_CONV_2D" else 0
    q, scale = symmetric_quantize(w, bits, dim if per_channel else None)
    tfm.set_tensor_data(model, sg, wop.weight, q)
    tfm.set_quantization(wt, scale, dim if per_channel else 0)
    if wop.bias >= 0:
        in_scale = float(tfm.scales(sg.tensors[wop.input])[0])
        b = tfm.tensor_array(calibrated, fsg, fop.bias) if fop.bias >= 0 else None
        if b is None:
            b = np.zeros(sg.tensors[wop.bias].shape, np.float32)
        bq, bscale = quantize_bias(b.astype(np.float32), in_scale, scale)
        tfm.set_tensor_data(model, sg, wop.bias, bq)
        tfm.set_quantization(sg.tensors[wop.bias], bscale, 0)


def matched_ops(model, calibrated):
    """Pairs (quantized op, calibrated float op) matched by output tensor name."""
    float_ops = tfm.by_output_name(calibrated)
    float_list, quant_list = list(tfm.weight_ops(calibrated)), list(tfm.weight_ops(model))

    def _shape(m, w):
        return list(m.subgraphs[w.subgraph].tensors[w.weight].shape)

    for i, wop in enumerate(quant_list):
        fop = float_ops.get(wop.output_name)
        if fop is None and len(float_list) == len(quant_list):
            # Float I/O appends a DEQUANTIZE that takes the output's name (the op's output gets a
            # suffix); the op keeps its position, so match by position when kind and shape agree.
            cand = float_list[i]
            if cand.kind == wop.kind and _shape(calibrated, cand) == _shape(model, wop):
                fop = cand
        if fop is None:
            raise TFLiteModelError(f"Op {wop.output_name!r} is not in the calibrated model; pass the calibrated "
                                   "model this int8 model was quantized from.")
        yield wop, fop


def limit_weight_bits(quantized: bytes, calibrated: bytes, bits: int) -> bytes:
    """bytes -> bytes: every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weight at `bits` bits."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise TFLiteModelError(f"weight bits {bits} not supported; choose between 2 and 8.")
    model, cal = tfm.read(quantized), tfm.read(calibrated)
    for wop, fop in matched_ops(model, cal):
        wt = model.subgraphs[wop.subgraph].tensors[wop.weight]
        if wt.type != 9:  # only int8 weights are rewritten
            continue
        requantize_op(model, cal, wop, fop, bits, per_channel=tfm.scales(wt).size > 1)
    return tfm.write(model)
