"""Pass: non-uniform k-bit weights (IQR clusters) written into the int8 weight tensors.

Each CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED int8 weight keeps the scheme it
already has (one scale: per-tensor levels, as the paper; several scales: one
clustering per output channel), so the pass composes with per-tensor, per-channel
and hybrid models alike. The levels come from the BN-folded float weights of the
calibrated model and are snapped onto the tensor's int8 grid (scale max|w|/127,
zero point 0): an int8 kernel can only multiply grid points, so for k < 8 a
level moves by at most half a grid step and for k = 8 neighbouring levels may
merge (`simulated_model` reports the unsnapped levels honestly). Biases are
re-derived as round(b / (input_scale x weight_scale)). Every tensor stays int8,
so all three LiteRT resolvers run the result; `tflite.pack` can then store each
tensor as k-bit indices plus a value table for TFLite Micro.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from tflite_retroq.quant import nonuniform as nu
from tflite_retroq.errors import TFLiteModelError
from tflite_retroq.tflite import model as tfm
from tflite_retroq.quant.uniform import quantize_bias, symmetric_quantize
from tflite_retroq.tflite.weight_bits import matched_ops


# (float weights, bits, channel axis or None) -> levels and codes; nu.quantize is the paper's method, a
# benchmark may pass another (k-means) to export through the same int8-grid and bias path.
Quantizer = Callable[[np.ndarray, int, Optional[int]], nu.NonUniformResult]


@dataclasses.dataclass(frozen=True)
class TableEntry:
    """What the pass wrote into one weight tensor."""
    output_name: str
    kind: str
    result: nu.NonUniformResult     # float levels and codes (the numpy quantizer's)
    scale: np.ndarray               # int8 grid scale(s) of the tensor
    int_levels: List[np.ndarray]    # levels snapped onto the int8 grid, per slice
    q: np.ndarray                   # the int8 weights written: int_levels[slice][codes]

    def summary(self, w: Optional[np.ndarray] = None) -> dict:
        d = {"output": self.output_name, "op": self.kind, **self.result.stats(),
             "distinct_int8": int(np.unique(self.q).size),
             "merged_levels": int(sum(len(lv) - np.unique(il).size
                                      for lv, il in zip(self.result.levels, self.int_levels)))}
        if w is not None:
            d["weight_sqnr_db"] = nu.sqnr_db(w, self.result.dequantize())
            d["weight_sqnr_db_int8"] = nu.sqnr_db(w, self.dequantize_int8())
        return d

    def dequantize_int8(self) -> np.ndarray:
        """The float weights the int8 tensor stands for (q x scale)."""
        ax = self.result.axis
        if ax is None:
            return (self.q.astype(np.float32) * self.scale[0]).astype(np.float32)
        shape = [1] * self.q.ndim
        shape[ax] = -1
        return (self.q.astype(np.float32) * self.scale.reshape(shape)).astype(np.float32)


def _channel_axis(kind: str) -> int:
    return 3 if kind == "DEPTHWISE_CONV_2D" else 0


def table_for(w: np.ndarray, kind: str, bits: int, per_channel: bool, output_name: str = "",
              quantizer: Quantizer = nu.quantize) -> TableEntry:
    """Non-uniform levels of float weights `w`, snapped onto their int8 grid."""
    axis = _channel_axis(kind) if per_channel else None
    _, scale = symmetric_quantize(w, 8, axis)
    res = quantizer(w, bits, axis)
    int_levels = [np.clip(np.round(lv / float(s)), -127, 127).astype(np.int8)
                  for lv, s in zip(res.levels, scale if axis is not None else scale[:1])]
    if axis is None:
        q = int_levels[0][res.codes]
    else:
        q = np.stack([il[s.codes] for il, s in zip(int_levels, res.slices)], axis=axis)
    return TableEntry(output_name, kind, res, scale, int_levels, q.astype(np.int8))


def _entries(model, cal, bits: int, quantizer: Quantizer = nu.quantize
             ) -> Iterator[Tuple[tfm.WeightOp, tfm.WeightOp, TableEntry]]:
    for wop, fop in matched_ops(model, cal):
        wt = model.subgraphs[wop.subgraph].tensors[wop.weight]
        if wt.type != 9:  # only int8 weights (a float or int16 layer is left as it is)
            continue
        w = tfm.tensor_array(cal, cal.subgraphs[fop.subgraph], fop.weight)
        if w is None or w.dtype != np.float32:
            raise TFLiteModelError(f"Op {wop.output_name!r}: the calibrated model has no float weights for it.")
        yield wop, fop, table_for(w, wop.kind, bits, tfm.scales(wt).size > 1, wop.output_name, quantizer)


def write_tables(quantized: bytes, calibrated: bytes, bits: int, quantizer: Quantizer = nu.quantize
                 ) -> Tuple[bytes, List[TableEntry]]:
    """bytes -> (bytes, what was written): non-uniform `bits`-bit weights in every int8 weight tensor."""
    bits = nu.check_bits(bits)
    model, cal = tfm.read(quantized), tfm.read(calibrated)
    entries = []
    for wop, fop, e in _entries(model, cal, bits, quantizer):
        sg, fsg = model.subgraphs[wop.subgraph], cal.subgraphs[fop.subgraph]
        axis = e.result.axis
        tfm.set_tensor_data(model, sg, wop.weight, e.q)
        tfm.set_quantization(sg.tensors[wop.weight], e.scale, axis if axis is not None else 0)
        if wop.bias >= 0:
            in_scale = float(tfm.scales(sg.tensors[wop.input])[0])
            b = tfm.tensor_array(cal, fsg, fop.bias) if fop.bias >= 0 else None
            if b is None:
                b = np.zeros(sg.tensors[wop.bias].shape, np.float32)
            bq, bscale = quantize_bias(b.astype(np.float32), in_scale, e.scale)
            tfm.set_tensor_data(model, sg, wop.bias, bq)
            tfm.set_quantization(sg.tensors[wop.bias], bscale, 0)
        entries.append(e)
    if not entries:
        raise TFLiteModelError("The model has no int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weights "
                               "to quantize non-uniformly.")
    return tfm.write(model), entries


def nonuniform_weights(quantized: bytes, calibrated: bytes, bits: int) -> bytes:
    """bytes -> bytes: see the module docstring."""
    return write_tables(quantized, calibrated, bits)[0]


def simulated_model(quantized: bytes, calibrated: bytes, bits: int, *, snap: bool = False,
                    quantizer: Quantizer = nu.quantize) -> bytes:
    """A float .tflite (the calibrated model) carrying the non-uniform weights of `quantized`'s
    schemes: unsnapped levels (snap=False, what k = 8 non-uniform really is) or the int8-snapped
    ones (snap=True, what the exported model holds). Activations stay float: it isolates the
    weight quantization."""
    bits = nu.check_bits(bits)
    model, cal = tfm.read(quantized), tfm.read(calibrated)
    for wop, fop, e in _entries(model, cal, bits, quantizer):
        fsg = cal.subgraphs[fop.subgraph]
        wq = e.dequantize_int8() if snap else e.result.dequantize()
        tfm.set_tensor_data(cal, fsg, fop.weight, wq.astype(np.float32))
    return tfm.write(cal)


def tables(quantized: bytes, calibrated: bytes, bits: int, quantizer: Quantizer = nu.quantize) -> Dict[str, dict]:
    """Per-layer summary (clusters, levels, merges on the int8 grid, weight SQNR) without writing."""
    model, cal = tfm.read(quantized), tfm.read(calibrated)
    out = {}
    for wop, fop, e in _entries(model, cal, nu.check_bits(bits), quantizer):
        w = tfm.tensor_array(cal, cal.subgraphs[fop.subgraph], fop.weight)
        out[wop.output_name] = e.summary(w)
    return out


def check_options(nonuniform: bool, pack: Optional[str], weight_bits: int) -> None:
    """convert()'s non-uniform / pack options, checked before any expensive work."""
    from tflite_retroq.errors import ConfigError
    if not isinstance(nonuniform, bool):
        raise ConfigError(f"nonuniform={nonuniform!r} must be True or False.")
    if pack not in (None, "none", "lut"):
        raise ConfigError(f"pack={pack!r} is not valid; choose 'lut' (TFLite Micro weight tables) or None.")
    if nonuniform:
        nu.check_bits(weight_bits)


def finish(quantized: bytes, calibrated: bytes, bits: int, nonuniform: bool, pack: Optional[str]) -> bytes:
    """convert()'s last steps: non-uniform weights, then LUT packing."""
    if nonuniform:
        quantized = nonuniform_weights(quantized, calibrated, bits)
    if pack == "lut":
        from tflite_retroq.tflite.pack import pack_lut
        quantized = pack_lut(quantized)
    return quantized
