"""Hybrid scheme glue: sensitivity plan (Keras layer names) -> TFLite ops -> per-channel pass.

Keras layers are matched to the calibrated model's weight ops by their weights: the calibrated
model holds the BN-folded float kernels (transposed to TFLite's layout, up to a constant factor
when a front Rescaling is folded in), so kind, shape and values identify each layer without
relying on how the converter spells tensor names. Ties (identical kernels) prefer the op whose
name contains the layer name, then graph order; with no value match, the name decides.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from tflite_retroq.config import HybridConfig, Scheme
from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.errors import ConfigError, DataError, TFLiteModelError
from tflite_retroq.methods.sensitivity import KIND_OF_LAYER, analyzable_layers, analyze_sensitivity
from tflite_retroq.model.prepared import prepare
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.per_channel import to_per_channel
from tflite_retroq.tflite.weight_bits import matched_ops

_TOLERANCE = 1e-3  # max |a - b| / max |a|: converter folding vs ours differ by float rounding only


def _tflite_layout(kernel: np.ndarray, kind: str) -> np.ndarray:
    k = np.asarray(kernel, np.float32)
    if kind == "CONV_2D":
        return np.transpose(k, (3, 0, 1, 2))          # [kh, kw, in, out] -> [out, kh, kw, in]
    if kind == "DEPTHWISE_CONV_2D":
        return k.reshape(1, k.shape[0], k.shape[1], -1)  # [kh, kw, in, mult] -> [1, kh, kw, in*mult]
    return np.transpose(k)                               # Dense [in, out] -> [out, in]


def _normalized(a: np.ndarray) -> np.ndarray:
    """a / max|a|: the converter may fold a constant front multiply (Rescaling(1/255)) into the first
    kernel; symmetric quantization is scale-equivariant, so such a factor changes nothing else."""
    m = float(np.max(np.abs(a)))
    return np.asarray(a, np.float64) / m if m > 0 else np.asarray(a, np.float64)


def match_layers(model, calibrated: bytes, names: Optional[List[str]] = None) -> Dict[str, str]:
    """{Keras layer name: calibrated weight-op output name} for the model's analyzable layers.

    `model` may carry BatchNorm (it is folded first, as the converter folds it).
    """
    folded = prepare(model).folded()
    layers = analyzable_layers(folded)
    if names is not None:
        wanted = set(names)
        layers = [l for l in layers if l.name in wanted]
        missing = wanted - {l.name for l in layers}
        if missing:
            raise ConfigError(f"layers {sorted(missing)} are not weight layers of this model.")
    cal = tfm.read(calibrated)
    ops = list(tfm.weight_ops(cal))
    arrays = [tfm.tensor_array(cal, cal.subgraphs[w.subgraph], w.weight) for w in ops]
    used, out = set(), {}
    for pos, layer in enumerate(layers):
        kind = KIND_OF_LAYER[type(layer).__name__]
        k = _normalized(_tflite_layout(layer.kernel.numpy(), kind))
        by_value: List[Tuple[float, int, int, int]] = []
        by_name: List[Tuple[int, int]] = []
        for j, (w, a) in enumerate(zip(ops, arrays)):
            if j in used or w.kind != kind or a is None or a.dtype != np.float32 or a.shape != k.shape:
                continue
            named = re.search(rf"(^|/){re.escape(layer.name)}(_\d+)?/", w.output_name) is not None
            if named:
                by_name.append((abs(j - pos), j))
            err = float(np.max(np.abs(_normalized(a) - k)))
            if err <= _TOLERANCE:
                by_value.append((round(err, 6), 0 if named else 1, abs(j - pos), j))
        if by_value:
            j = min(by_value)[3]
        elif by_name:  # values differ (e.g. a front multiply folded in non-uniformly): trust the name
            j = min(by_name)[1]
        else:
            raise TFLiteModelError(f"Layer {layer.name!r} ({kind}, kernel {list(layer.kernel.shape)}) has no "
                                   "matching weight op in the calibrated model; pass the calibration of this model.")
        used.add(j)
        out[layer.name] = ops[j].output_name
    return out


def hybrid_config(scheme, threshold, max_per_channel, fully_connected_per_tensor, plan) -> Optional[HybridConfig]:
    """The HybridConfig for convert()'s keyword arguments, or None when the scheme is not hybrid."""
    given = {"threshold": threshold, "max_per_channel": max_per_channel, "plan": plan}
    if Scheme(scheme) != Scheme.HYBRID:
        extra = [k for k, v in given.items() if v is not None] + (["fully_connected_per_tensor"]
                                                                  if fully_connected_per_tensor else [])
        if extra:
            raise ConfigError(f"{', '.join(extra)} only apply to scheme='hybrid' (got scheme={Scheme(scheme).value!r}).")
        return None
    if plan is not None:
        if threshold is not None or max_per_channel is not None or fully_connected_per_tensor:
            raise ConfigError("Pass either plan= or the selection options (threshold, max_per_channel, "
                              "fully_connected_per_tensor), not both: the plan already holds its selection.")
        return plan.config
    return HybridConfig(threshold=0.0 if threshold is None else threshold, max_per_channel=max_per_channel,
                        fully_connected_per_tensor=bool(fully_connected_per_tensor))


def plan_for(model, data, config: HybridConfig, weight_bits: int = 8, progress: bool = False):
    """Sensitivity (Algorithm 2) on `data` and the resulting plan: (HybridPlan, SensitivityResult)."""
    if not isinstance(data, (SyntheticDataset, np.ndarray)):
        raise DataError("scheme='hybrid' needs images (a SyntheticDataset or an [N, H, W, C] array) for the "
                        "sensitivity analysis, or a precomputed plan= (see rq.analyze_sensitivity).")
    result = analyze_sensitivity(model, data, weight_bits=weight_bits, progress=progress)
    return result.select(config), result


def apply_plan(model, per_tensor: bytes, calibrated: bytes, plan) -> bytes:
    """The per-tensor model with the plan's per-channel layers re-quantized per-channel (8 bits)."""
    if not plan.per_channel:
        return per_tensor
    ops = match_layers(model, calibrated, list(plan.per_channel))
    quant_name = {f.output_name: w.output_name for w, f in matched_ops(tfm.read(per_tensor), tfm.read(calibrated))}
    return to_per_channel(per_tensor, calibrated, [quant_name[ops[n]] for n in plan.per_channel])


def hybrid(model, data, per_tensor: bytes, calibrated: bytes, config: HybridConfig, *, weight_bits: int = 8,
           plan=None) -> bytes:
    """convert(scheme='hybrid'): plan (given or computed on `data`), then the per-channel pass."""
    if plan is None:
        plan, _ = plan_for(model, data, config, weight_bits)
    return apply_plan(model, per_tensor, calibrated, plan)
