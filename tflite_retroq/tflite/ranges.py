"""Pass over a calibrated float model: widen the logits' range to what the classifier can reach.

Synthetic images match BatchNorm statistics but are never as confident as real ones: the
true-class logit of a real image is far above anything the synthetic set produces (the
softmax class loss cannot see the logits' absolute level), so min/max calibration clips
exactly the logit that decides the prediction. The logits are an affine map of the
features, so their reachable range over the box of per-channel feature ranges seen on the
synthetic data is exact interval arithmetic:
    hi_k = b_k + sum_j max(w_kj * a_j, w_kj * A_j),  lo_k = b_k + sum_j min(...)
(a_j, A_j the feature channel's min/max). The logits' range becomes the union of the
calibrated one and [min_k lo_k, max_k hi_k]. No constant is tuned; the rule only widens.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from tflite_retroq.tflite import model as tfm

# Ops between the logits and the model output that do not change values' range semantics.
_TRANSPARENT = ("RESHAPE", "SQUEEZE", "SOFTMAX", "QUANTIZE", "DEQUANTIZE")


@dataclasses.dataclass(frozen=True)
class LogitRange:
    """What the pass did: the logits tensor, its calibrated range and the widened one."""
    tensor: str
    op: str
    calibrated: Tuple[float, float]
    reachable: Tuple[float, float]
    widened: Tuple[float, float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _producers(sg) -> dict:
    return {o: i for i, op in enumerate(sg.operators) for o in op.outputs}


def find_logits(model) -> Optional[Tuple[int, List[int]]]:
    """(index of the op producing the logits, tensors from its output to the model output's range chain).

    Walks back from the model output through reshapes/softmax to a CONV_2D or FULLY_CONNECTED
    without a fused activation; None if the graph ends otherwise (then the pass does nothing).
    """
    sg = model.subgraphs[0]
    prod = _producers(sg)
    t = sg.outputs[0]
    chain: List[int] = []
    while t in prod:
        op = sg.operators[prod[t]]
        name = tfm.op_name(model, op)
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            opts = op.builtinOptions
            if opts is not None and getattr(opts, "fusedActivationFunction", 0) != 0:
                return None
            return prod[t], [op.outputs[0]] + [c for c in chain]
        if name not in _TRANSPARENT:
            return None
        if name != "SOFTMAX":  # softmax output has a fixed [0, 1] range of its own
            chain.insert(0, t)
        else:
            chain = []
        t = op.inputs[0]
    return None


def _feature_ranges(calibrated: bytes, images: np.ndarray, tensor: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel min and max of tensor `tensor` of the float model over `images`."""
    from ai_edge_litert.interpreter import Interpreter
    from tflite_retroq.io_utils import library_quiet
    lo = hi = None
    with library_quiet():  # a short call; XNNPACK announces itself on fd 2
        it = Interpreter(model_content=bytes(calibrated), experimental_preserve_all_tensors=True, num_threads=None)
        inp = it.get_input_details()[0]
        sig = inp.get("shape_signature")
        fixed = int(sig[0]) if sig is not None and len(sig) and int(sig[0]) > 0 else None  # static-batch export
        step = fixed or 64
        if fixed:
            it.allocate_tensors()
        for start in range(0, len(images), step):
            x = np.asarray(images[start:start + step], np.float32)
            if fixed and len(x) < fixed:  # pad with repeats of real rows: min/max stay the same
                x = x[np.arange(fixed) % len(x)]
            if not fixed:
                it.resize_tensor_input(inp["index"], list(x.shape))
                it.allocate_tensors()
            it.set_tensor(inp["index"], x)
            it.invoke()
            a = np.asarray(it.get_tensor(tensor), np.float64)
            a = a.reshape(-1, a.shape[-1])
            lo = a.min(0) if lo is None else np.minimum(lo, a.min(0))
            hi = a.max(0) if hi is None else np.maximum(hi, a.max(0))
    return lo, hi


def reachable_logit_range(w: np.ndarray, b: Optional[np.ndarray], a_lo: np.ndarray, a_hi: np.ndarray
                          ) -> Tuple[float, float]:
    """Interval arithmetic over the feature box: weights [out, ..., in] (TFLite layout), input channel last."""
    w = np.asarray(w, np.float64).reshape(w.shape[0], -1, w.shape[-1])   # [out, taps, in]
    p, q = w * a_lo[None, None, :], w * a_hi[None, None, :]
    hi = np.maximum(p, q).sum(axis=(1, 2))
    lo = np.minimum(p, q).sum(axis=(1, 2))
    if b is not None:
        hi, lo = hi + b, lo + b
    return float(lo.min()), float(hi.max())


def widen_logit_range(calibrated: bytes, images: np.ndarray) -> Tuple[bytes, Optional[LogitRange]]:
    """bytes -> bytes: the calibrated model with its logits' min/max widened to the reachable range."""
    model = tfm.read(calibrated)
    found = find_logits(model)
    if found is None:
        return calibrated, None
    op_index, chain = found
    sg = model.subgraphs[0]
    op = sg.operators[op_index]
    w = tfm.tensor_array(model, sg, op.inputs[1])
    b = tfm.tensor_array(model, sg, op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    out_t = sg.tensors[op.outputs[0]]
    q = out_t.quantization
    if w is None or w.dtype != np.float32 or q is None or q.min is None or len(q.min) != 1:
        return calibrated, None
    a_lo, a_hi = _feature_ranges(calibrated, images, op.inputs[0])
    if a_lo.shape[0] != w.shape[-1]:
        return calibrated, None
    r_lo, r_hi = reachable_logit_range(w, b, a_lo, a_hi)
    cal = (float(q.min[0]), float(q.max[0]))
    new = (min(cal[0], r_lo), max(cal[1], r_hi))
    for t in chain:
        tq = sg.tensors[t].quantization
        if tq is not None and tq.min is not None and len(tq.min) == 1:
            tq.min, tq.max = [new[0]], [new[1]]
    info = LogitRange(tfm.tensor_name(out_t), tfm.op_name(model, op), cal, (r_lo, r_hi), new)
    return tfm.write(model), info
