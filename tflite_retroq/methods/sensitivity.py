"""Per-layer weight-quantization sensitivity (the paper's Algorithm 2) and hybrid layer selection.

For every Conv2D / DepthwiseConv2D / Dense layer of the BN-folded model (the weights TFLite
actually quantizes), the float model is run with only that layer's kernel quantized, per-tensor
and per-channel exactly as TFLite quantizes weights (symmetric, scale max|w| / (2^(b-1)-1), per
output channel for per-channel). The error is KL(softmax(FP32(X)) || softmax(model_i(X))) on the
calibration images X. Activations stay float: the question is only what the weight scheme costs.

Fast: one float pass caches every intermediate tensor; for layer i only the nodes downstream of
it are recomputed, per-tensor and per-channel stacked into one batch. `SensitivityResult` reports
the seconds spent and the ratio against the naive 2L full passes (estimated from the measured
float pass, or measured with ``method="naive"``).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.errors import ConfigError, DataError, ModelError
from tflite_retroq.methods.plan import LayerSensitivity, SensitivityResult
from tflite_retroq.model.prepared import prepare
from tflite_retroq.quant.uniform import symmetric_quantize

KIND_OF_LAYER = {"Conv2D": "CONV_2D", "DepthwiseConv2D": "DEPTHWISE_CONV_2D", "Dense": "FULLY_CONNECTED"}
_METHODS = ("cached", "naive")


# ----------------------------------------------------------------------------- weight quantization

def channel_axis(layer) -> Optional[int]:
    """Output-channel axis of the Keras kernel (None: DepthwiseConv2D, whose channels are axes 2 x 3)."""
    return {"Conv2D": 3, "Dense": 1}.get(type(layer).__name__)


def fake_quantize(kernel: np.ndarray, kind: str, bits: int, per_channel: bool) -> np.ndarray:
    """The kernel as TFLite's int8 weights represent it: q * scale, symmetric, q in +-(2^(b-1)-1).

    Per-channel scales are per output channel: the last Keras axis for Conv2D / Dense, the
    (in, multiplier) pair for DepthwiseConv2D (TFLite's channel in*mult + m).
    """
    k = np.asarray(kernel, np.float32)
    if kind == "DEPTHWISE_CONV_2D":
        flat = k.reshape(k.shape[0], k.shape[1], -1)
        q, s = symmetric_quantize(flat, bits, 2 if per_channel else None)
        return (q.astype(np.float32) * s.reshape(1, 1, -1)).reshape(k.shape)
    q, s = symmetric_quantize(k, bits, k.ndim - 1 if per_channel else None)
    return q.astype(np.float32) * s.reshape([1] * (k.ndim - 1) + [-1])


def _channel_maxabs(kernel: np.ndarray, kind: str) -> np.ndarray:
    k = np.abs(np.asarray(kernel, np.float32))
    if kind == "DEPTHWISE_CONV_2D":
        k = k.reshape(k.shape[0], k.shape[1], -1)
    return k.reshape(-1, k.shape[-1]).max(axis=0)


def analyzable_layers(model) -> List:
    """Top-level Conv2D (groups 1) / DepthwiseConv2D / Dense layers with a kernel, in graph order."""
    out = []
    seen = set()
    for node in _graph_nodes(model):
        layer = node.operation
        if id(layer) in seen or type(layer).__name__ not in KIND_OF_LAYER:
            continue
        seen.add(id(layer))
        if getattr(layer, "groups", 1) != 1 or getattr(layer, "lora_enabled", False):
            continue
        if getattr(layer, "quantization_mode", None):
            continue
        out.append(layer)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer).__name__ in KIND_OF_LAYER and id(layer) not in seen and layer not in model.layers:
            raise ModelError(f"Layer {layer.name!r} sits inside a nested model; sensitivity analysis needs the "
                             "weight layers at the top level (rebuild the model as one functional graph).")
    return out


# ----------------------------------------------------------------------------- graph executor

def _graph_nodes(model) -> List:
    """The model's call nodes in a topological order (Keras functional internals)."""
    fn = getattr(model, "_functional", None) or model  # a built Sequential wraps a Functional
    if not hasattr(fn, "_nodes_by_depth"):
        raise ModelError(f"Model {model.name!r} is not a functional or Sequential Keras model with a known "
                         "input shape; sensitivity analysis walks its layer graph.")
    nodes = []
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        for node in fn._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            nodes.append(node)
    return nodes


class _Executor:
    """Runs the graph node by node, caching tensors, and re-runs only what depends on one layer."""

    def __init__(self, model):
        fn = getattr(model, "_functional", None) or model
        self.inputs = list(fn.inputs)
        self.output = fn.outputs[0]
        self.nodes = _graph_nodes(model)

    def run(self, x) -> Dict[int, object]:
        cache = {id(self.inputs[0]): x}
        for node in self.nodes:
            args, kwargs = node.arguments.fill_in(cache)
            outs = node.operation(*args, **kwargs)
            for kt, y in zip(node.outputs, _flatten(outs)):
                cache[id(kt)] = y
        return cache

    def downstream(self, layer) -> List:
        """Nodes of `layer` and every node depending on them, in order."""
        dirty, out = set(), []
        for node in self.nodes:
            if node.operation is layer or any(id(t) in dirty for t in node.input_tensors):
                out.append(node)
                dirty.update(id(t) for t in node.outputs)
        return out

    def rerun(self, cache, nodes, copies: int, over: Optional[Dict[int, object]] = None):
        """Output with `nodes` recomputed on `copies` stacked batches (cached inputs tiled).

        `over` holds tensors already recomputed (stacked), e.g. the quantized layer's output.
        """
        import tensorflow as tf
        over = dict(over or {})
        tiled: Dict[int, object] = {}

        def get(kt_id):
            if kt_id in over:
                return over[kt_id]
            if kt_id not in tiled:
                v = cache[kt_id]
                tiled[kt_id] = tf.concat([v] * copies, 0) if copies > 1 else v
            return tiled[kt_id]

        for node in nodes:
            view = {id(t): get(id(t)) for t in node.input_tensors}
            args, kwargs = node.arguments.fill_in(view)
            outs = node.operation(*args, **kwargs)
            for kt, y in zip(node.outputs, _flatten(outs)):
                over[id(kt)] = y
        return get(id(self.output))


def _flatten(outs):
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


# ----------------------------------------------------------------------------- the analysis

def _log_probs(y: np.ndarray, probabilities: bool) -> np.ndarray:
    y = np.asarray(y, np.float64)
    if probabilities:
        return np.log(np.clip(y, 1e-12, None) / np.clip(y, 1e-12, None).sum(axis=1, keepdims=True))
    m = y.max(axis=1, keepdims=True)
    return y - m - np.log(np.exp(y - m).sum(axis=1, keepdims=True))


def kl_sum(reference: np.ndarray, test: np.ndarray, probabilities: bool) -> float:
    """Sum over images of KL(p_ref || p_test); p = softmax(outputs) unless they are probabilities."""
    lp, lq = _log_probs(reference, probabilities), _log_probs(test, probabilities)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def _images(data, who: str = "Sensitivity analysis") -> Tuple[np.ndarray, str]:
    """(images, data mode) of a SyntheticDataset or a checked [N, H, W, C] array; `who` names the caller."""
    if isinstance(data, SyntheticDataset):
        return data.images, data.mode
    if isinstance(data, np.ndarray):
        if data.ndim != 4 or data.shape[0] == 0:
            raise DataError(f"images must be a non-empty [N, H, W, C] array, got shape {data.shape}.")
        if not np.all(np.isfinite(data)):
            raise DataError("images contain NaN or inf.")
        return np.asarray(data, np.float32), "array"
    raise DataError(f"{who} needs images (a SyntheticDataset or an [N, H, W, C] array), got {type(data).__name__}.")


def analyze_sensitivity(model, data: Union[SyntheticDataset, np.ndarray], *, weight_bits: int = 8,
                        batch_size: int = 64, method: str = "cached", layers: Optional[Sequence[str]] = None,
                        progress: bool = False) -> SensitivityResult:
    """Algorithm 2: per-layer KL of per-tensor vs per-channel weights, on the BN-folded model.

    `model`: a Keras classifier (BatchNorm is folded first, as the converter does). `data`: the
    images to measure on (synthetic or real). `weight_bits` 8, 6 or 4: the grid the weights will
    be quantized to. `method`: "cached" reruns only each layer's downstream part; "naive" runs
    the whole model 2L times (for timing comparisons). `layers`: restrict to these layer names.
    """
    if weight_bits not in (8, 6, 4):
        raise ConfigError(f"weight_bits={weight_bits!r} is not supported; choose 8, 6 or 4.")
    if method not in _METHODS:
        raise ConfigError(f"method={method!r} is not valid; choose one of {', '.join(map(repr, _METHODS))}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer.")
    prepared = prepare(model)  # a PreparedModel passes through: not reloaded, revalidated or refolded
    model, info = prepared.model, prepared.info
    images, source = _images(data)
    if tuple(images.shape[1:]) != tuple(info.input_shape):
        raise DataError(f"images have shape {list(images.shape[1:])} per image but the model takes "
                        f"{list(info.input_shape)}.")
    t_start = time.perf_counter()
    folded = prepared.folded()
    todo = analyzable_layers(folded)
    if layers is not None:
        wanted = list(layers)
        names = {l.name for l in todo}
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ConfigError(f"layers {missing} are not analyzable weight layers of the model; choose from "
                              f"{sorted(names)}.")
        todo = [l for l in todo if l.name in set(wanted)]
    if not todo:
        from tflite_retroq.model.saved_model import wraps_saved_model
        if wraps_saved_model(model):
            raise ModelError("A SavedModel keeps no Keras layers, so per-layer sensitivity (scheme hybrid, analyze) "
                             "cannot quantize them one at a time; pass the .keras model instead.")
        raise ModelError("The model has no Conv2D, DepthwiseConv2D or Dense layer to analyze.")
    ex = _Executor(folded)
    kernels = [np.asarray(l.kernel.numpy(), np.float32) for l in todo]
    kinds = [KIND_OF_LAYER[type(l).__name__] for l in todo]
    variants = [(fake_quantize(k, kd, weight_bits, False), fake_quantize(k, kd, weight_bits, True))
                for k, kd in zip(kernels, kinds)]
    downstream = [ex.downstream(l) for l in todo]
    all_nodes = ex.nodes
    sums = np.zeros((len(todo), 2), np.float64)
    full_pass = 0.0
    naive_total = 0.0
    n = images.shape[0]
    bar = _Progress(progress, len(todo) * ((n + batch_size - 1) // batch_size))
    import tensorflow as tf
    ex.run(tf.constant(images[:1]))  # warm-up (first eager calls), kept out of the timings
    for start in range(0, n, batch_size):
        x = tf.constant(images[start:start + batch_size])
        t0 = time.perf_counter()
        cache = ex.run(x)
        ref = np.asarray(cache[id(ex.output)])
        full_pass += time.perf_counter() - t0
        for i, layer in enumerate(todo):
            var = layer.kernel
            try:
                if method == "cached":
                    y = _run_quantized(ex, cache, downstream[i], var, variants[i], copies=2)
                    y = np.asarray(y)
                    yp, yc = y[:len(ref)], y[len(ref):]
                else:
                    t1 = time.perf_counter()
                    yp = np.asarray(_run_quantized(ex, {id(ex.inputs[0]): x}, all_nodes, var, variants[i][:1], 1))
                    yc = np.asarray(_run_quantized(ex, {id(ex.inputs[0]): x}, all_nodes, var, variants[i][1:], 1))
                    naive_total += time.perf_counter() - t1
            finally:
                var.assign(kernels[i])
            sums[i, 0] += kl_sum(ref, yp, info.outputs_probabilities)
            sums[i, 1] += kl_sum(ref, yc, info.outputs_probabilities)
            bar.step(layer.name)
    bar.close()
    seconds = time.perf_counter() - t_start
    kl = sums / n
    out = []
    for i, (layer, k, kd) in enumerate(zip(todo, kernels, kinds)):
        m = _channel_maxabs(k, kd)
        ratio = float(m.max() / m.min()) if m.min() > 0 else float("inf")
        out.append(LayerSensitivity(index=i, name=layer.name, kind=kd, weight_shape=tuple(int(d) for d in k.shape),
                                    channels=int(m.size), range_ratio=ratio, kl_per_tensor=float(max(kl[i, 0], 0.0)),
                                    kl_per_channel=float(max(kl[i, 1], 0.0))))
    naive = naive_total + full_pass if method == "naive" else 2 * len(todo) * full_pass
    return SensitivityResult(layers=tuple(out), weight_bits=weight_bits, num_images=int(n), data_source=source,
                             method=method, seconds=seconds, full_pass_seconds=full_pass, naive_seconds=naive)


def _run_quantized(ex: _Executor, cache, nodes, var, kernels: Sequence[np.ndarray], copies: int):
    """Rerun `nodes` with the layer's kernel replaced by each of `kernels`, stacked along the batch.

    The layer's own node runs once per kernel on the cached input; everything downstream runs
    once on the stacked batch.
    """
    import tensorflow as tf
    first, rest = nodes[0], nodes[1:]
    layer = first.operation
    outs = []
    for k in kernels:
        var.assign(k)
        args, kwargs = first.arguments.fill_in(cache)
        outs.append(_flatten(layer(*args, **kwargs))[0])
    # A layer called more than once (shared) is recomputed in `rest` with the last kernel only if
    # we stacked; shared layers therefore run unstacked, one kernel at a time.
    if any(node.operation is layer for node in rest):
        ys = []
        for k in kernels:
            var.assign(k)
            ys.append(ex.rerun(cache, nodes, 1))
        return tf.concat(ys, 0) if len(ys) > 1 else ys[0]
    over = {id(first.outputs[0]): tf.concat(outs, 0) if len(outs) > 1 else outs[0]}
    return ex.rerun(cache, rest, copies, over)


class _Progress:
    """One line per 10 s on stderr (only when asked)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.done = enabled, total, 0
        self.t0 = self.last = time.perf_counter()

    def step(self, name: str) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self.last >= 10.0 or self.done == self.total):
            import sys
            sys.stderr.write(f"sensitivity: {self.done}/{self.total} layer passes ({name}), {now - self.t0:.0f} s\n")
            sys.stderr.flush()
            self.last = now

    def close(self) -> None:
        pass
