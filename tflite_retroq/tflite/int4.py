"""Pass: store 4-bit weights as TensorType INT4 (two per byte) so a W4 file is really 4-bit on LiteRT.

Checked per op type on the LiteRT 2.3 interpreter (tests/test_int4.py): CONV_2D, DEPTHWISE_CONV_2D
and FULLY_CONNECTED take INT4 weights with int8 activations on the builtin and reference kernels, with
outputs identical to the same model with the weights in int8 containers. Under the default resolver
(XNNPACK) the int8 twin of a conv runs on XNNPACK while the INT4 conv stays on the builtin kernel, so
the two may differ by a rounding step there; FULLY_CONNECTED agrees on all three.
TFLite Micro (the tflite-micro 2026-10 runtime) refuses the same file at allocation: INT4 files are for
LiteRT; for microcontrollers use pack='lut' instead.
Only values change their container: scales, zero points and biases are kept as they are.
"""
from __future__ import annotations

from typing import Collection, Optional

import numpy as np

from tflite_retroq.errors import TFLiteModelError
from tflite_retroq.tflite import model as tfm

INT4_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
WEIGHT_DTYPES = ("int8", "int4")


def to_int4(quantized: bytes, ops: Optional[Collection[int]] = None) -> bytes:
    """bytes -> bytes: int8 weights of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED ops as INT4.

    `ops`: the operator indices (subgraph 0, as `inspect` lists them) to store as INT4, the others stay
    int8 in the same file (mixed widths under a size budget); None: every such op. Refuses a weight whose
    codes leave [-8, 7] (not 4-bit codes) instead of clipping it, and an op index that is no weight op.
    """
    model = tfm.read(quantized)
    eligible = [w for w in tfm.weight_ops(model) if w.kind in INT4_OPS]
    if ops is not None:
        wanted = {int(i) for i in ops}
        unknown = sorted(wanted - {w.index for w in eligible if w.subgraph == 0})
        if unknown:
            raise TFLiteModelError(f"Op indices {unknown} are not CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED "
                                   "ops of subgraph 0; INT4 storage needs one of those.")
        eligible = [w for w in eligible if w.subgraph == 0 and w.index in wanted]
    done = set()
    for wop in eligible:
        sg = model.subgraphs[wop.subgraph]
        t = sg.tensors[wop.weight]
        if t.type != 9 or (wop.subgraph, wop.weight) in done:
            continue
        q = tfm.tensor_array(model, sg, wop.weight)
        if q is None:
            continue
        if q.size and (int(q.min()) < -8 or int(q.max()) > 7):
            raise TFLiteModelError(f"Op {wop.output_name!r} has weights outside [-8, 7] ({int(q.min())}..{int(q.max())}); "
                                   "INT4 storage needs 4-bit weights (weight_bits=4).")
        buf = tfm._fu().BufferT()
        buf.data = tfm.pack_int4(q)
        model.buffers.append(buf)
        t.buffer, t.type = len(model.buffers) - 1, tfm.INT4
        done.add((wop.subgraph, wop.weight))
    return tfm.write(model)


def check_weight_dtype(weight_dtype: str, weight_bits: int, nonuniform: bool, pack) -> None:
    """convert()'s weight_dtype option, checked before any expensive work."""
    from tflite_retroq.errors import ConfigError
    if weight_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"weight_dtype={weight_dtype!r} is not valid; choose 'int8' or 'int4'.")
    if weight_dtype == "int4" and weight_bits != 4:
        raise ConfigError(f"weight_dtype='int4' stores 4-bit weights; it needs weight_bits=4 (got {weight_bits}).")
    if weight_dtype == "int4" and pack is not None and pack != "none":
        raise ConfigError("weight_dtype='int4' and pack='lut' are two ways to store 4-bit weights; choose one.")
    if weight_dtype == "int4" and nonuniform:
        raise ConfigError("weight_dtype='int4' needs the uniform 4-bit grid; non-uniform levels live on the int8 "
                          "grid (use pack='lut' to store them as 4-bit indices for TFLite Micro).")


def int4_fraction(model_bytes: bytes) -> float:
    """Share of weight-op weight elements stored as INT4 (for reports)."""
    model = tfm.read(model_bytes)
    total = int4 = 0
    for wop in tfm.weight_ops(model):
        t = model.subgraphs[wop.subgraph].tensors[wop.weight]
        n = int(np.prod(t.shape))
        total += n
        int4 += n if t.type == tfm.INT4 else 0
    return int4 / total if total else 0.0
