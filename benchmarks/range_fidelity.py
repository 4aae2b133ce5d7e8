"""Range fidelity: how close a calibration source's activation ranges come to real data's.

Both sources calibrate the same model with plain min/max (no post-pass); per activation tensor
the ratio of the synthetic range width to the real one, (max_s - min_s) / (max_r - min_r).
1 means TFLite picks the same scale as with real images; < 1 clips real tails, > 1 wastes
resolution. Summaries: the median over tensors, the worst (furthest from 1 in log terms),
the features feeding the classifier (the global pool on pooled models) and the logits.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np


def tensor_ranges(calibrated: bytes) -> Dict[str, Tuple[float, float]]:
    """{tensor name: (min, max)} of every per-tensor calibrated activation (constants excluded)."""
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(calibrated)
    sg = m.subgraphs[0]
    out = {}
    for i, t in enumerate(sg.tensors):
        q = t.quantization
        if q is None or q.min is None or len(q.min) != 1 or tfm.tensor_array(m, sg, i) is not None:
            continue
        out[tfm.tensor_name(t)] = (float(q.min[0]), float(q.max[0]))
    return out


def head_tensors(calibrated: bytes) -> Tuple[Optional[str], Optional[str]]:
    """(features, logits): the classifier layer's input and output tensor names (None if not found)."""
    from tflite_retroq.tflite import model as tfm
    from tflite_retroq.tflite.ranges import find_logits
    m = tfm.read(calibrated)
    found = find_logits(m)
    if found is None:
        return None, None
    sg = m.subgraphs[0]
    op = sg.operators[found[0]]
    return tfm.tensor_name(sg.tensors[op.inputs[0]]), tfm.tensor_name(sg.tensors[op.outputs[0]])


def _ratio(s: Tuple[float, float], r: Tuple[float, float]) -> Optional[float]:
    wr = r[1] - r[0]
    return (s[1] - s[0]) / wr if wr > 1e-12 else None


def fidelity(synthetic_cal: bytes, real_cal: bytes) -> Dict[str, Optional[float]]:
    """Median / worst / features / logits range ratio of `synthetic_cal` against `real_cal`."""
    syn, real = tensor_ranges(synthetic_cal), tensor_ranges(real_cal)
    ratios = {k: _ratio(syn[k], real[k]) for k in syn.keys() & real.keys()}
    ratios = {k: v for k, v in ratios.items() if v is not None and v > 0}
    feat, logits = head_tensors(real_cal)
    vals = np.array(list(ratios.values())) if ratios else np.array([np.nan])
    worst = float(vals[np.argmax(np.abs(np.log(vals)))]) if ratios else None
    return {
        "range_median": float(np.median(vals)) if ratios else None,
        "range_worst": worst,
        "range_features": ratios.get(feat) if feat else None,
        "range_logits": ratios.get(logits) if logits else None,
        "range_tensors": len(ratios),
    }


def log_error(values) -> float:
    """Mean |log ratio| (0 = every range as real's); used to compare sources by one number."""
    v = [x for x in values if x is not None and x > 0]
    return float(np.mean([abs(math.log(x)) for x in v])) if v else float("nan")
