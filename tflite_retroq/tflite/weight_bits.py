"""Pass: limit int8 weights to +-(2^(b-1)-1) levels on their own scale (W6, W4).

The weights are re-quantized from the BN-folded float weights of the calibrated
model (same op output names), not from the int8 weights, so no double rounding
enters; biases are re-derived as round(b / (input_scale * weight_scale)). Ties round away
from zero, as the converter does; where a bias would leave the converter's range, that channel's
weight scale grows as the converter grows it (quant.uniform.fit_bias), never a clipped bias.
Tensors stay int8, so every int8 kernel and delegate runs the result.
"""
from __future__ import annotations

from typing import Mapping, Union

import numpy as np

from tflite_retroq.errors import TFLiteModelError
from tflite_retroq.tflite import model as tfm
from tflite_retroq.quant.uniform import fit_bias, max_scale, quantize_bias, quantize_with_scale


def requantize_op(model, calibrated, wop: tfm.WeightOp, fop: tfm.WeightOp, bits: int, per_channel: bool) -> None:
    """Re-quantize one op's weight (+bias) in `model` from the float tensors of `calibrated`.

    A channel whose bias would leave the converter's bias range gets a larger weight scale, as the
    converter does (quant.uniform.fit_bias), so no bias is ever clipped."""
    q, scale, dim, b, enlarged = requantized(model, calibrated, wop, fop, bits, per_channel)
    write_op(model, wop, q, scale, dim, b, enlarged)


def requantized(model, calibrated, wop: tfm.WeightOp, fop: tfm.WeightOp, bits: int, per_channel: bool):
    """(codes, scale, channel dim or None, float bias, enlarged-channel mask) of one op at `bits` bits:
    what requantize_op writes (size planners read the codes without writing them)."""
    w, b = float_weights(calibrated, fop, wop.output_name)
    dim = channel_dim(wop.kind) if per_channel else None
    scale, enlarged = fit_bias(max_scale(w, bits, dim), b, input_scale(model, wop))
    return quantize_with_scale(w, scale, bits, dim), scale, dim, b, enlarged


def channel_dim(kind: str) -> int:
    """The output-channel axis of a TFLite weight tensor (3 for DEPTHWISE_CONV_2D, else 0)."""
    return 3 if kind == "DEPTHWISE_CONV_2D" else 0


def input_scale(model, wop: tfm.WeightOp) -> float:
    s = tfm.scales(model.subgraphs[wop.subgraph].tensors[wop.input])
    return float(s[0]) if s.size else 0.0


def float_weights(calibrated, fop: tfm.WeightOp, name: str):
    """(float weight, float bias or None) of an op of the calibrated model."""
    fsg = calibrated.subgraphs[fop.subgraph]
    w = tfm.tensor_array(calibrated, fsg, fop.weight)
    if w is None or w.dtype != np.float32:
        raise TFLiteModelError(f"Op {name!r}: the calibrated model has no float weights for it.")
    b = tfm.tensor_array(calibrated, fsg, fop.bias) if fop.bias >= 0 else None
    return w, (None if b is None else b.astype(np.float32))


def write_op(model, wop: tfm.WeightOp, q: np.ndarray, scale: np.ndarray, dim, bias, enlarged=None) -> None:
    """Write int8 codes `q` with `scale` (per channel along `dim`, or per tensor if None) and the bias
    re-derived as round(b / (input_scale * scale)); refuse a bias that would not fit (never clip)."""
    sg = model.subgraphs[wop.subgraph]
    tfm.set_tensor_data(model, sg, wop.weight, q)
    tfm.set_quantization(sg.tensors[wop.weight], scale, 0 if dim is None else dim)
    if wop.bias >= 0:
        b = bias if bias is not None else np.zeros(sg.tensors[wop.bias].shape, np.float32)
        bq, bscale = quantize_bias(b.astype(np.float32), input_scale(model, wop), scale, enlarged)
        # fit_bias keeps every |bias| near or under BIAS_MAX (INT32_MAX / 2, float rounding aside); a bias that
        # still reaches the int32 limit would have been clipped: refuse it instead.
        if np.any(np.abs(bq.astype(np.int64)) >= 2 ** 31 - 1):
            raise TFLiteModelError(f"Op {wop.output_name!r}: a bias does not fit int32 at its weight scale.")
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


def limit_weight_bits(quantized: bytes, calibrated: bytes, bits: Union[int, Mapping[int, int]]) -> bytes:
    """bytes -> bytes: CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weights at `bits` bits.

    `bits`: one width for every such op, or a mapping operator index (subgraph 0, as `inspect` lists
    them) -> width for per-layer widths (a size budget's plan); ops absent from the mapping keep their
    weights as they are. Each op keeps its scheme (per-channel or per-tensor).
    """
    per_op = dict(bits) if isinstance(bits, Mapping) else None
    for b in (per_op.values() if per_op is not None else [bits]):
        if isinstance(b, bool) or b not in (2, 3, 4, 5, 6, 7, 8):
            raise TFLiteModelError(f"weight bits {b!r} not supported; choose between 2 and 8.")
    model, cal = tfm.read(quantized), tfm.read(calibrated)
    pairs = list(matched_ops(model, cal))
    if per_op is not None:
        unknown = sorted(set(per_op) - {w.index for w, _ in pairs if w.subgraph == 0})
        if unknown:
            raise TFLiteModelError(f"Op indices {unknown} are not weight ops of the model; per-layer widths "
                                   "take the op indices that `inspect` lists.")
    for wop, fop in pairs:
        wt = model.subgraphs[wop.subgraph].tensors[wop.weight]
        if wt.type != 9:  # only int8 weights are rewritten
            continue
        if per_op is not None and (wop.subgraph != 0 or wop.index not in per_op):
            continue
        b = per_op[wop.index] if per_op is not None else bits
        requantize_op(model, cal, wop, fop, b, per_channel=tfm.scales(wt).size > 1)
    return tfm.write(model)
