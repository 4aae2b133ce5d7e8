"""Learned rounding on unlabeled (synthetic) images: the flatbuffer pass behind convert(rounding="learned").

Layer by layer in graph order, each CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weight of the int8
model keeps its grid (its scale, per-channel or per-tensor, at the asked bits) but each weight picks
rounding up or down, and its bias shifts, to reconstruct the float model's output of that layer
(methods/reconstruct.py). The float side is the calibrated model (BN already folded, the exact float
weights the converter quantized); the quantized side is the int8 model itself, simulated in TensorFlow
at its own scales (methods/simulate.py: each op within one quantization step of the LiteRT kernels;
the interpreter where an op is outside the simulation), so the reconstruction sees the activation
quantization as the converter applied it, and every later layer sees the rounding already chosen
for the earlier ones (only ops downstream of a changed layer are recomputed). A layer whose learned
choice does not lower its error on the images keeps round-to-nearest.

Residual blocks (the ops between two single-tensor cuts of the graph) learn together against the
float block output (BRECQ; methods/blocks.py): on MLPerf ResNet-8 W4 more accurate and faster than
layer by layer (rows `learned` vs `learned-layer` in benchmarks/results/low_bit.md).
A block keeps round-to-nearest for all its ops unless its output error on the images went down.

The work is fixed by the model, never by the clock: `iterations` Adam steps per layer on mini-batches
of `batch_size` images (default: from the layer's multiply-accumulates, see `layer_iterations`).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Dict, List, Mapping, Optional, Union

import numpy as np

from tflite_retroq.errors import ConfigError, DataError
from tflite_retroq.methods.reconstruct import LayerOp, layer_error, optimize_layer
from tflite_retroq.methods.simulate import Int8Graph, supported as simulate_supported
from tflite_retroq.quant.uniform import BIAS_MAX
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.weight_bits import channel_dim, float_weights, input_scale, matched_ops, write_op

ROUNDING_MODES = ("nearest", "learned")


@dataclasses.dataclass(frozen=True)
class RoundingConfig:
    """Learned-rounding knobs. iterations: Adam steps per layer (None: from the layer's cost)."""
    iterations: Optional[int] = None
    batch_size: int = 32
    reg_weight: float = 0.01
    learning_rate: float = 5e-3
    seed: int = 0
    blocks: bool = True   # residual blocks reconstructed together (methods/blocks.py); False: layer by layer
    pair_depthwise: bool = False  # with blocks: a depthwise conv and the 1x1 conv after it as one block

    MAX_ITERATIONS = 1000
    MIN_ITERATIONS = 200
    MAC_BUDGET = 2.0e10   # multiply-accumulates per layer (iterations x batch x MACs per image)

    def __post_init__(self):
        for name, lo in (("batch_size", 1), ("seed", -2 ** 31)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"rounding {name}={v!r} must be an integer >= {lo}.")
        if self.iterations is not None and (not isinstance(self.iterations, int) or isinstance(self.iterations, bool)
                                            or self.iterations < 0):
            raise ConfigError(f"rounding iterations={self.iterations!r} must be an integer >= 0 (or None).")
        for name in ("reg_weight", "learning_rate"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v <= 0:
                raise ConfigError(f"rounding {name}={v!r} must be a positive number.")

    def layer_iterations(self, macs_per_image: int) -> int:
        """Steps for a layer: the MAC budget over its cost per step, within [MIN, MAX] iterations."""
        if self.iterations is not None:
            return self.iterations
        n = int(self.MAC_BUDGET // max(1, macs_per_image * self.batch_size))
        return int(min(self.MAX_ITERATIONS, max(self.MIN_ITERATIONS, n)))


@dataclasses.dataclass(frozen=True)
class LayerRounding:
    """What the pass chose for one op: its codes, bias and errors on the images (nearest vs learned)."""
    output_name: str
    kind: str
    codes: np.ndarray          # int8 codes written into the flatbuffer
    bias: Optional[np.ndarray]  # float bias the int32 bias was derived from
    nearest_error: float
    learned_error: float
    kept_nearest: bool
    iterations: int


def check_rounding(rounding: str, nonuniform: bool) -> None:
    """convert()'s rounding option, checked before any expensive work."""
    if rounding not in ROUNDING_MODES:
        raise ConfigError(f"rounding={rounding!r} is not valid; choose 'nearest' or 'learned'.")
    if rounding == "learned" and nonuniform:
        raise ConfigError("rounding='learned' chooses between the two neighbouring points of a uniform grid; the "
                          "non-uniform levels have no such grid. Use one of rounding='learned' or nonuniform=True.")


def _interpreter(model_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tflite_retroq.io_utils import library_quiet
    with library_quiet():  # builtin kernels: every intermediate tensor stays readable (no delegate)
        return Interpreter(model_content=bytes(model_bytes), experimental_preserve_all_tensors=True,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def capture(model_bytes: bytes, images: np.ndarray, tensors: List[int], batch_size: int = 32) -> Dict[int, np.ndarray]:
    """Float values of subgraph-0 tensors `tensors` over `images` (int8 ones dequantized)."""
    it = _interpreter(model_bytes)
    inp = it.get_input_details()[0]
    sig = inp.get("shape_signature")
    fixed = int(sig[0]) if sig is not None and len(sig) and int(sig[0]) > 0 else None
    bs = fixed or batch_size
    if fixed is None:
        it.resize_tensor_input(inp["index"], [bs] + list(inp["shape"][1:]))
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}
    out: Dict[int, list] = {t: [] for t in tensors}
    for start in range(0, len(images), bs):
        x = np.asarray(images[start:start + bs], np.float32)
        n = len(x)
        if n < bs:
            x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], np.float32)])
        if inp["dtype"] == np.int8:
            s, zp = inp["quantization"]
            x = np.clip(np.round(x / s) + zp, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], x)
        it.invoke()
        for t in tensors:
            a = it.get_tensor(t)[:n]
            if a.dtype == np.int8:
                s, zp = details[t]["quantization"]
                a = (a.astype(np.float32) - zp) * np.float32(s)
            out[t].append(np.asarray(a, np.float32))
    return {t: np.concatenate(v) for t, v in out.items()}


def _out_range(tensor) -> tuple:
    s = tfm.scales(tensor)
    if s.size != 1:
        return (-np.inf, np.inf)
    zp = int(tensor.quantization.zeroPoint[0]) if tensor.quantization.zeroPoint is not None else 0
    return (float((-128 - zp) * s[0]), float((127 - zp) * s[0]))


def _macs(model, wop: tfm.WeightOp) -> int:
    """Multiply-accumulates per image of a weight op, from its weight and output shapes in the model."""
    sg = model.subgraphs[wop.subgraph]
    w, y = list(sg.tensors[wop.weight].shape), list(sg.tensors[_out_index(model, wop)].shape)
    positions = int(np.prod(y[1:-1])) if len(y) > 2 else 1
    return positions * int(np.prod(w[1:])) * (1 if wop.kind == "DEPTHWISE_CONV_2D" else int(y[-1]))


class _Progress:
    """One stderr line per layer chunk with an ETA from the work done so far (multiply-accumulates of the
    optimization steps, error evaluations and capture), so the estimate follows the model, not a guess."""

    def __init__(self, work: List[float], enabled: bool):
        self.work, self.enabled, self.done = work, enabled, 0.0
        self.start = time.perf_counter()

    def update(self, layer: int, fraction: float, text: str) -> None:
        if not self.enabled:
            return
        done = sum(self.work[:layer]) + fraction * self.work[layer]
        elapsed = time.perf_counter() - self.start
        eta = elapsed * (sum(self.work) - done) / done if done > 0 else float("nan")
        print(f"rounding {layer + 1}/{len(self.work)} {text} ({100 * done / sum(self.work):.0f}% done, "
              f"{elapsed:.0f} s, ETA {eta:.0f} s)", file=sys.stderr, flush=True)


def learned_rounding(quantized: bytes, calibrated: bytes, images: np.ndarray, bits: Union[int, Mapping[int, int]],
                     config: Optional[RoundingConfig] = None, progress: bool = False, return_layers: bool = False):
    """bytes -> bytes: the int8 model with every weight op's rounding and bias learned on `images`.

    `quantized` holds the grid (scales at `bits`, e.g. from weight_bits.limit_weight_bits), `calibrated`
    the float model it was quantized from; `images` are in the model's input space (float, [N, ...]).
    `bits`: one width for every weight op, or {operator index in subgraph 0 of `quantized`: bits} (a
    per-layer plan); an op absent from the mapping keeps its weights and bias as they are.
    With return_layers, returns (bytes, [LayerRounding]) (one entry per op optimized).
    """
    config = config or RoundingConfig()
    images = np.asarray(images, np.float32)
    if images.ndim < 2 or len(images) == 0:
        raise DataError("Learned rounding needs calibration images ([N, H, W, C], N >= 1).")
    qm, cal = tfm.read(quantized), tfm.read(calibrated)
    pairs = [(w, f) for w, f in matched_ops(qm, cal)
             if w.subgraph == 0 and qm.subgraphs[0].tensors[w.weight].type == 9]
    widths = layer_bits(qm, [w for w, _ in pairs], bits)
    seen: set = set()
    pairs = [(w, f) for w, f in pairs if w.index in widths and not (w.weight in seen or seen.add(w.weight))]
    simulated = simulate_supported(qm)
    groups = _groups(qm, cal, pairs, config.pair_depthwise) if config.blocks and simulated else {}
    float_out = capture(calibrated, images, sorted({_out_index(cal, f) for _, f in pairs} |
                                                   {g[2] for g in groups.values()}))
    layers: List[LayerRounding] = []
    graph = Int8Graph(qm, images) if simulated else None   # else: the interpreter, per layer
    macs = [_macs(qm, wop) for wop, _ in pairs]
    steps_of = [config.layer_iterations(m) for m in macs]
    for _, members, _ in groups.values():   # a block's ops share one run, its steps set by the block's cost
        for i in members:
            steps_of[i] = config.layer_iterations(sum(macs[j] for j in members))
    # work in multiply-accumulates: forward + backward per step, plus two error passes over the images
    work = [m * (3.0 * n * min(config.batch_size, len(images)) + 3.0 * len(images)) for m, n in zip(macs, steps_of)]
    report = _Progress(work, progress)
    handled: set = set()
    for li, (wop, fop) in enumerate(pairs):
        if li in handled:
            continue
        if li in groups:
            block, members, cal_out = groups[li]
            handled.update(members)
            y = np.clip(float_out[cal_out], *_out_range(qm.subgraphs[0].tensors[block.output]))
            steps = steps_of[li]
            layers += _round_block(qm, cal, graph, block, [pairs[i] for i in members], widths, y, steps, config,
                                   lambda f, text: report.update(members[0], f, text))
            report.update(members[-1], 1.0, f"block of {len(members)} ops: error {layers[-1].nearest_error:.4g} -> "
                                            f"{layers[-1].learned_error:.4g}{' (kept nearest)' if layers[-1].kept_nearest else ''}")
            continue
        sg = qm.subgraphs[0]
        w, b = float_weights(cal, fop, wop.output_name)
        wt = sg.tensors[wop.weight]
        scale = tfm.scales(wt)
        dim = channel_dim(wop.kind) if scale.size > 1 else None
        op = LayerOp.from_tflite(sg.operators[wop.index], wop.kind, _out_range(sg.tensors[_out_index(qm, wop)]))
        x = capture(tfm.write(qm), images, [wop.input])[wop.input] if graph is None else \
            np.asarray(graph.value(wop.input))
        y = np.clip(float_out[_out_index(cal, fop)], *op.out_range)
        nearest = tfm.tensor_array(qm, sg, wop.weight).astype(np.float32)
        shape = [1] * w.ndim
        if dim is not None:
            shape[dim] = -1
        s = scale.reshape(shape)
        bias0 = b if b is not None else np.zeros(int(y.shape[-1]), np.float32)
        err0 = layer_error(op, x, y, nearest * s, bias0)
        steps = steps_of[li]
        name = f"{wop.kind} {wop.output_name.split(';')[0][-50:]}"  # a fused op carries every folded name
        unit = float(tfm.scales(sg.tensors[_out_index(qm, wop)])[0]) if wop.bias >= 0 else 0.0
        codes, bias = optimize_layer(op, x, y, w, scale, dim, widths[wop.index], bias0, unit, steps, config.batch_size,
                                     config.reg_weight, config.learning_rate, config.seed + wop.index,
                                     on_chunk=lambda k: report.update(li, k / max(1, steps), f"{name}: step {k}/{steps}"))
        bias = _fitting_bias(bias, bias0, input_scale(qm, wop), scale)
        err1 = layer_error(op, x, y, codes.astype(np.float32) * s, bias)
        keep = not err1 < err0
        if keep:
            codes, bias = nearest.astype(np.int8), bias0
        write_op(qm, wop, codes, scale, dim, bias if wop.bias >= 0 else None)
        if graph is not None:
            graph.invalidate(wop.index)
        layers.append(LayerRounding(wop.output_name, wop.kind, codes, bias if wop.bias >= 0 else None,
                                    err0, min(err0, err1), keep, steps))
        report.update(li, 1.0, f"{name}: error {err0:.4g} -> {min(err0, err1):.4g}"
                               f"{' (kept nearest)' if keep else ''}")
    out = tfm.write(qm)
    return (out, layers) if return_layers else out


def _groups(qm, cal, pairs, pair: bool) -> Dict[int, tuple]:
    """{first pair index: (Block, pair indices, calibrated output tensor)} for the blocks (methods/blocks.py)
    holding two or more of the ops to optimize, whose output tensor the calibrated model names too."""
    from tflite_retroq.methods.blocks import cut_blocks, pair_depthwise
    sg, csg = qm.subgraphs[0], cal.subgraphs[0]
    by_name = {tfm.tensor_name(t): i for i, t in enumerate(csg.tensors)}
    out = {}
    blocks = cut_blocks(qm)
    for block in pair_depthwise(qm, blocks) if pair else blocks:
        members = [i for i, (w, _) in enumerate(pairs) if block.first_op <= w.index <= block.last_op]
        cal_out = by_name.get(tfm.tensor_name(sg.tensors[block.output]))
        if len(members) >= 2 and cal_out is not None:
            out[members[0]] = (block, members, cal_out)
    return out


def _round_block(qm, cal, graph, block, pairs, widths, y, steps, config, on_progress) -> List[LayerRounding]:
    """The block's ops learned together (methods/blocks.py); all kept at nearest unless the block's output
    error on the images went down. Each op's entry reports the block's errors."""
    from tflite_retroq.methods.blocks import block_error, optimize_block
    from tflite_retroq.methods.reconstruct import Rounding
    sg = qm.subgraphs[0]
    x = np.asarray(graph.value(block.input))
    err0 = block_error(np.asarray(graph.value(block.output)), y)
    items = []
    for wop, fop in pairs:
        w, b = float_weights(cal, fop, wop.output_name)
        scale = tfm.scales(sg.tensors[wop.weight])
        dim = channel_dim(wop.kind) if scale.size > 1 else None
        cout = int(w.shape[3 if wop.kind == "DEPTHWISE_CONV_2D" else 0])
        bias0 = b if b is not None else np.zeros(cout, np.float32)
        unit = float(tfm.scales(sg.tensors[_out_index(qm, wop)])[0]) if wop.bias >= 0 else 0.0
        items.append((wop, Rounding(w, scale, dim, widths[wop.index], bias0, unit), scale, dim,
                      tfm.tensor_array(qm, sg, wop.weight).copy(), bias0))
    optimize_block(qm, block, x, y, [(r, wop.weight, wop.bias) for wop, r, *_ in items], steps, config.batch_size,
                   config.reg_weight, config.learning_rate, config.seed + block.first_op,
                   on_chunk=lambda k: on_progress(k / max(1, steps), f"block ops {block.first_op}-{block.last_op}: "
                                                                     f"step {k}/{steps}"))
    chosen = [(r.codes(), _fitting_bias(r.final_bias(), bias0, input_scale(qm, wop), scale))
              for wop, r, scale, dim, _, bias0 in items]
    for (wop, _, scale, dim, _, _), (codes, bias) in zip(items, chosen):
        write_op(qm, wop, codes, scale, dim, bias if wop.bias >= 0 else None)
    graph.invalidate(block.first_op)
    err1 = block_error(np.asarray(graph.value(block.output)), y)
    keep = not err1 < err0
    if keep:
        chosen = [(nearest, bias0) for *_, nearest, bias0 in items]
        for (wop, _, scale, dim, _, _), (codes, bias) in zip(items, chosen):
            write_op(qm, wop, codes, scale, dim, bias if wop.bias >= 0 else None)
        graph.invalidate(block.first_op)
    return [LayerRounding(wop.output_name, wop.kind, codes, bias if wop.bias >= 0 else None, err0, min(err0, err1),
                          keep, steps) for (wop, *_), (codes, bias) in zip(items, chosen)]


def layer_bits(qm, wops: List[tfm.WeightOp], bits: Union[int, Mapping[int, int]]) -> Dict[int, int]:
    """{op index: bits} for the ops to optimize, checked: known weight ops, widths 2..8, and codes already
    within the width's grid (learned rounding keeps each op's scale; limit its weights first)."""
    indices = [w.index for w in wops]
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(indices), key=str)
        if unknown:
            raise ConfigError(f"rounding bits: {unknown} are not int8 weight-op indices of subgraph 0; "
                              f"valid indices: {indices}.")
        widths = dict(bits)
    else:
        widths = {i: bits for i in indices}
    for wop in wops:
        b = widths.get(wop.index)
        if b is None:
            continue
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or not 2 <= b <= 8:
            raise ConfigError(f"rounding bits={b!r} for op {wop.index} is not valid; choose an integer from 2 to 8.")
        codes = tfm.tensor_array(qm, qm.subgraphs[0], wop.weight)
        top = int(np.max(np.abs(codes.astype(np.int32)))) if codes.size else 0
        if top > 2 ** (int(b) - 1) - 1:
            raise ConfigError(f"op {wop.index} ({wop.output_name.split(';')[0]}) holds weight codes up to {top}, "
                              f"beyond {b} bits; re-quantize it at {b} bits first (tflite.weight_bits).")
        widths[wop.index] = int(b)
    return widths


def _fitting_bias(bias: np.ndarray, bias0: np.ndarray, in_scale: float, scale: np.ndarray) -> np.ndarray:
    """The learned bias, except in a channel where it would leave the converter's bias range at this
    weight scale: there the original bias stays (it fits, the scale was sized for it), never a clip."""
    if in_scale <= 0:
        return bias
    bias_scale = np.float64(np.float32(in_scale)) * np.asarray(scale, np.float64)
    over = np.abs(np.asarray(bias, np.float64)) / bias_scale > BIAS_MAX
    return np.where(over, bias0, bias).astype(np.float32)


def _out_index(model, wop: tfm.WeightOp) -> int:
    return int(model.subgraphs[wop.subgraph].operators[wop.index].outputs[0])
