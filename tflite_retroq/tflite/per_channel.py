"""Pass: make chosen layers of a per-tensor int8 model per-channel (the hybrid scheme).

The per-tensor and per-channel models from one calibration share operator order, tensor
names and every activation scale, so only a layer's weight and bias tensors differ. This pass
re-quantizes the chosen layers' weights per output channel from the calibrated model's float
(BN-folded) weights, int8 with scale max|w_c| / 127 and `quantized_dimension` 0 (CONV_2D,
FULLY_CONNECTED) or 3 (DEPTHWISE_CONV_2D), and their biases as int32 with scale
input_scale x weight_scale[c]: the tensors the converter's own per-channel model holds.
"""
from __future__ import annotations

from typing import Iterable, List, Union

from tflite_retroq.errors import TFLiteModelError
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.weight_bits import matched_ops, requantize_op

LayerRef = Union[int, str]


def _pick(pairs, layers: Iterable[LayerRef]) -> List:
    """Resolve positions (among weight ops, in order) or op output names to (op, float op) pairs."""
    by_name = {w.output_name: (w, f) for w, f in pairs}
    picked, seen = [], set()
    for ref in layers:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise TFLiteModelError(f"Layer reference {ref!r} must be a weight-op position (int) or an op output "
                                   "name (str).")
        if isinstance(ref, int):
            if not 0 <= ref < len(pairs):
                raise TFLiteModelError(f"Weight-op position {ref} is out of range; the model has {len(pairs)} "
                                       "CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED ops.")
            pair = pairs[ref]
        else:
            if ref not in by_name:
                raise TFLiteModelError(f"No weight op has output tensor {ref!r}.")
            pair = by_name[ref]
        if pair[0].index not in seen:
            seen.add(pair[0].index)
            picked.append(pair)
    return picked


def to_per_channel(quantized: bytes, calibrated: bytes, layers: Iterable[LayerRef], bits: int = 8) -> bytes:
    """bytes -> bytes: `layers` (weight-op positions or output names) re-quantized per-channel.

    `quantized` is an int8 model quantized from `calibrated` (see `rq.calibrate`); `bits` < 8
    puts the chosen layers on a +-(2^(b-1)-1) grid per channel (as the weight-bits pass would).
    Layers already per-channel are rewritten to the same values; every other op is untouched.
    """
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise TFLiteModelError(f"weight bits {bits} not supported; choose between 2 and 8.")
    model, cal = tfm.read(quantized), tfm.read(calibrated)
    pairs = list(matched_ops(model, cal))
    picked = _pick(pairs, layers)
    for wop, fop in picked:
        wt = model.subgraphs[wop.subgraph].tensors[wop.weight]
        if wt.type != 9:  # INT8
            raise TFLiteModelError(f"Op {wop.output_name!r} has no int8 weights; pass a full-integer int8 model.")
        requantize_op(model, cal, wop, fop, bits, per_channel=True)
    return tfm.write(model) if picked else quantized


def per_channel_ops(data: bytes) -> List[int]:
    """Positions (among weight ops) whose weights carry per-channel scales."""
    model = tfm.read(data)
    return [i for i, w in enumerate(tfm.weight_ops(model))
            if tfm.scales(model.subgraphs[w.subgraph].tensors[w.weight]).size > 1]
