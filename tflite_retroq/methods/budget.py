"""Per-layer weight widths (W8 / W6 / W4) chosen data-free under a flash budget.

Algorithm 2 generalized from schemes to widths: for every weight layer and width, the KL between
the float model's outputs and the outputs with only that layer's (BN-folded) kernel quantized at that
width, on the synthetic images (one cached float pass, only the layer's downstream part re-run, the
three widths stacked in one batch). Each width's bytes are what the file will hold for that layer:
INT4 storage on LiteRT (W4 half a byte per weight, W6 / W8 one byte) or, with pack='lut', TFLite
Micro's packed size of the layer's actual codes. The choice is a multiple-choice knapsack over bytes
saved, solved exactly by dynamic programming at one-byte granularity (methods/knapsack.py; coarser only
for very large models, then provably within `granularity x layers` bytes of the budget's optimum). The file
written from the plan is measured; padding or packing overhead that pushes it over the budget
tightens the capacity by the excess and the plan is solved again. The plan is checked on held-out
synthetic images (another seed) against the float model.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tflite_retroq.errors import ConfigError
from tflite_retroq.methods.knapsack import solve_knapsack

WIDTHS = (8, 6, 4)
STORAGES = ("int4", "lut")
_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000 ** 2, "mib": 1024 ** 2}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(x|b|kb|kib|mb|mib)?\s*$", re.IGNORECASE)


# ----------------------------------------------------------------------------- the budget itself

@dataclasses.dataclass(frozen=True)
class SizeBudget:
    """A file-size budget: absolute bytes, or a fraction of the W8 file."""
    bytes: Optional[int] = None
    fraction: Optional[float] = None

    def resolve(self, w8_bytes: int) -> int:
        return int(self.bytes) if self.bytes is not None else int(math.floor(self.fraction * w8_bytes))

    def __str__(self) -> str:
        return f"{self.bytes} bytes" if self.bytes is not None else f"{self.fraction:g}x the W8 file"


def parse_size_budget(value: Union[int, str, SizeBudget]) -> SizeBudget:
    """`65536`, `'64KB'` (1000 bytes), `'64KiB'` (1024), `'0.5MB'`, or `'0.6x'` (a fraction of the W8 file)."""
    if isinstance(value, SizeBudget):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"size_budget={value!r} must be a positive number of bytes.")
        return SizeBudget(bytes=int(value))
    m = _BUDGET_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f"size budget {value!r} is not a size; give bytes (65536, '64KB', '64KiB', '0.5MB') or a "
                          "fraction of the W8 file ('0.6x').")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "x":
        if not 0 < number:
            raise ConfigError(f"size budget {value!r} must be a positive fraction of the W8 file, e.g. '0.6x'.")
        return SizeBudget(fraction=number)
    n = int(math.floor(number * _UNITS[unit]))
    if n <= 0:
        raise ConfigError(f"size budget {value!r} must be at least one byte.")
    return SizeBudget(bytes=n)


# ----------------------------------------------------------------------------- plan objects

@dataclasses.dataclass(frozen=True)
class LayerOption:
    """One weight layer: its bytes and measured cost (KL on synthetic data) at each width."""
    op_index: int
    name: str                  # the op's output tensor name
    kind: str
    elements: int
    per_channel: bool
    bytes: Tuple[Tuple[int, int], ...]   # (bits, bytes) per width, widest first
    cost: Tuple[Tuple[int, float], ...]  # (bits, KL) per width, widest first

    def bytes_at(self, bits: int) -> int:
        return dict(self.bytes)[bits]

    def cost_at(self, bits: int) -> float:
        return dict(self.cost)[bits]


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """The widths chosen under a budget, what they cost on the synthetic data, and the file's size."""
    budget: str                  # as given
    budget_bytes: int
    storage: str                 # int4 (LiteRT) or lut (TFLite Micro)
    w8_bytes: int                # the W8 file
    min_bytes: int               # the all-W4 file: the smallest reachable
    file_bytes: int              # the written file
    widths: Tuple[Tuple[int, int], ...]  # (op index, bits)
    layers: Tuple[LayerOption, ...]
    predicted_cost: float        # summed per-layer KL of the choice
    granularity: int             # knapsack byte granularity (1: exact)
    holdout: Optional[Dict] = None  # agreement / KL with float on held-out synthetic images
    note: Optional[str] = None   # e.g. "the budget is above the W8 file: wrote the W8 model"
    twin: Optional[bytes] = dataclasses.field(default=None, repr=False, compare=False)  # unpacked int8 twin (LiteRT)

    @property
    def bits(self) -> Dict[int, int]:
        return dict(self.widths)

    def to_dict(self) -> dict:
        bits = self.bits
        return {
            "budget": self.budget, "budget_bytes": self.budget_bytes, "storage": self.storage,
            "w8_bytes": self.w8_bytes, "min_bytes": self.min_bytes, "file_bytes": self.file_bytes,
            "predicted_cost": self.predicted_cost, "granularity": self.granularity, "holdout": self.holdout,
            "note": self.note,
            "layers": [{"op_index": l.op_index, "name": l.name, "kind": l.kind, "elements": l.elements,
                        "per_channel": l.per_channel, "bits": bits[l.op_index],
                        "bytes": l.bytes_at(bits[l.op_index]),
                        "bytes_by_bits": {str(b): n for b, n in l.bytes},
                        "kl_by_bits": {str(b): c for b, c in l.cost}} for l in self.layers],
        }


# ----------------------------------------------------------------------------- measuring the options

def layer_bytes(quantized: bytes, calibrated: bytes, storage: str,
                widths: Sequence[int] = WIDTHS) -> Dict[int, Dict[int, int]]:
    """{op index: {bits: bytes of that layer's weight in the file}} for INT4 or LUT storage."""
    from tflite_retroq.tflite import model as tfm
    from tflite_retroq.tflite.int4 import INT4_OPS
    from tflite_retroq.tflite.weight_bits import matched_ops, requantized
    model, cal = tfm.read(quantized), tfm.read(calibrated)
    out: Dict[int, Dict[int, int]] = {}
    for wop, fop in matched_ops(model, cal):
        t = model.subgraphs[wop.subgraph].tensors[wop.weight]
        if wop.subgraph != 0 or t.type != 9:
            continue
        n = int(np.prod(t.shape))
        per_channel = tfm.scales(t).size > 1
        sizes = {}
        for bits in widths:
            if storage == "int4":
                sizes[bits] = (n + 1) // 2 if bits <= 4 and wop.kind in INT4_OPS else n
            else:
                from tflite_retroq.tflite.pack import _choose
                q, _, dim, _, _ = requantized(model, cal, wop, fop, bits, per_channel)
                c = _choose(q, 0, wop.weight, "", dim)
                sizes[bits] = c.packed_bytes if not isinstance(c, str) else n
        out[wop.index] = sizes
    return out


def layer_costs(model, images: np.ndarray, calibrated: bytes, quantized: bytes, widths: Sequence[int] = WIDTHS,
                batch_size: int = 32) -> Dict[int, Dict[int, float]]:
    """{op index: {bits: KL(float || only this layer at bits)}} averaged over `images` (Algorithm 2, by width).

    Each layer keeps the scheme it has in `quantized` (per-channel or per-tensor)."""
    import tensorflow as tf
    from tflite_retroq.methods.hybrid import match_layers
    from tflite_retroq.methods.sensitivity import (KIND_OF_LAYER, _Executor, _run_quantized, analyzable_layers,
                                                   fake_quantize, kl_sum)
    from tflite_retroq.model.prepared import prepare
    from tflite_retroq.tflite import model as tfm
    from tflite_retroq.tflite.weight_bits import matched_ops
    prepared = prepare(model)  # a PreparedModel passes through: not reloaded, revalidated or refolded
    model, info, folded = prepared.model, prepared.info, prepared.folded()
    qmodel, cal = tfm.read(quantized), tfm.read(calibrated)
    op_of = {f.output_name: w for w, f in matched_ops(qmodel, cal)}
    names = match_layers(prepared, calibrated)  # Keras layer -> calibrated op output name
    layers, ops, variants = [], [], []
    for layer in analyzable_layers(folded):
        wop = op_of.get(names.get(layer.name, ""))
        if wop is None or wop.subgraph != 0:
            continue
        per_channel = tfm.scales(qmodel.subgraphs[0].tensors[wop.weight]).size > 1
        k = np.asarray(layer.kernel.numpy(), np.float32)
        kind = KIND_OF_LAYER[type(layer).__name__]
        layers.append(layer)
        ops.append(wop.index)
        variants.append([fake_quantize(k, kind, b, per_channel) for b in widths])
    ex = _Executor(folded)
    down = [ex.downstream(l) for l in layers]
    sums = np.zeros((len(layers), len(widths)))
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start:start + batch_size])
        cache = ex.run(x)
        ref = np.asarray(cache[id(ex.output)])
        n = len(ref)
        for i, layer in enumerate(layers):
            original = np.asarray(layer.kernel.numpy())
            try:
                y = np.asarray(_run_quantized(ex, cache, down[i], layer.kernel, variants[i], copies=len(widths)))
            finally:
                layer.kernel.assign(original)
            for j in range(len(widths)):
                sums[i, j] += kl_sum(ref, y[j * n:(j + 1) * n], info.outputs_probabilities)
    kl = np.maximum(sums / max(len(images), 1), 0.0)
    return {op: {b: float(kl[i, j]) for j, b in enumerate(widths)} for i, op in enumerate(ops)}


def layer_options(costs: Mapping[int, Mapping[int, float]], sizes: Mapping[int, Mapping[int, int]],
                  quantized: bytes) -> Tuple[LayerOption, ...]:
    """The measured options per weight op, in operator order (ops without a measured cost stay W8)."""
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(quantized)
    out = []
    for w in tfm.weight_ops(m):
        if w.index not in sizes:
            continue
        t = m.subgraphs[0].tensors[w.weight]
        c = costs.get(w.index)
        widths = [b for b in WIDTHS if b in sizes[w.index]] if c is not None else [8]
        # a narrower width that saves no byte (W6 in an int8 container) is never worth its rounding error
        widths = [b for k, b in enumerate(widths) if all(sizes[w.index][b] < sizes[w.index][a] for a in widths[:k])]
        out.append(LayerOption(op_index=w.index, name=w.output_name, kind=w.kind, elements=int(np.prod(t.shape)),
                               per_channel=tfm.scales(t).size > 1,
                               bytes=tuple((b, int(sizes[w.index][b])) for b in widths),
                               cost=tuple((b, float(c[b]) if c is not None else 0.0) for b in widths)))
    return tuple(out)


def choose(layers: Sequence[LayerOption], capacity: int) -> Tuple[Dict[int, int], int]:
    """({op index: bits}, granularity) minimizing summed cost with summed layer bytes <= capacity."""
    opts = [[(n, l.cost_at(b)) for b, n in l.bytes] for l in layers]
    picks, g = solve_knapsack(opts, capacity)
    return {l.op_index: l.bytes[j][0] for l, j in zip(layers, picks)}, g


# ----------------------------------------------------------------------------- writing

def write_widths(quantized: bytes, calibrated: bytes, bits: Mapping[int, int], storage: str,
                 images: Optional[np.ndarray] = None, rounding: str = "nearest", rounding_config=None,
                 progress: bool = False) -> Tuple[bytes, bytes]:
    """(file, its unpacked int8 twin): the widths written, W4 stored as INT4 or everything LUT-packed."""
    from tflite_retroq.tflite.int4 import to_int4
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    narrow = {op: b for op, b in bits.items() if b != 8}
    twin = limit_weight_bits(quantized, calibrated, narrow) if narrow else quantized
    if rounding == "learned" and narrow:
        from tflite_retroq.methods.rounding import learned_rounding
        # per-layer widths: learned_rounding takes a mapping op index -> bits (branch `rounding`)
        twin = learned_rounding(twin, calibrated, images, dict(bits), rounding_config, progress)
    if not narrow:
        return twin, twin
    if storage == "lut":
        from tflite_retroq.tflite.pack import pack_lut
        return pack_lut(twin), twin
    four = {op for op, b in narrow.items() if b == 4}
    return (to_int4(twin, four) if four else twin), twin


def plan_budget(model, images: np.ndarray, quantized: bytes, calibrated: bytes, size_budget,
                storage: str = "int4", *, costs: Optional[Mapping[int, Mapping[int, float]]] = None,
                rounding: str = "nearest", rounding_config=None, progress: bool = False,
                max_rounds: int = 4) -> Tuple[bytes, bytes, BudgetPlan]:
    """(file, int8 twin, plan) for `size_budget` (see parse_size_budget) from a W8 `quantized` model.

    Refuses a budget below the all-W4 file (naming its size); a budget at or above the W8 file gives the
    W8 model with a note. `costs` (from layer_costs) may be passed to plan several budgets on one analysis."""
    if storage not in STORAGES:
        raise ConfigError(f"storage={storage!r} is not valid; choose one of {', '.join(STORAGES)}.")
    budget = parse_size_budget(size_budget)
    sizes = layer_bytes(quantized, calibrated, storage)
    w8 = len(quantized)
    capacity_total = budget.resolve(w8)
    if costs is None and capacity_total < w8:
        costs = layer_costs(model, images, calibrated, quantized)
    layers = layer_options(costs or {}, sizes, quantized)
    rest = w8 - sum(l.bytes_at(8) for l in layers)  # everything but the weights of the planned layers

    def plan(bits, g, file_bytes, min_bytes, note=None):
        cost = float(sum(l.cost_at(bits[l.op_index]) for l in layers))
        return BudgetPlan(budget=str(budget), budget_bytes=capacity_total, storage=storage, w8_bytes=w8,
                          min_bytes=min_bytes, file_bytes=file_bytes, widths=tuple(sorted(bits.items())),
                          layers=layers, predicted_cost=cost, granularity=g, note=note)

    w4_bits = {l.op_index: min(b for b, _ in l.bytes) for l in layers}
    if capacity_total >= w8:
        bits = {l.op_index: 8 for l in layers}
        return quantized, quantized, plan(bits, 1, w8, -1, note=f"the size budget ({budget}, {capacity_total} bytes) "
                                          f"is at or above the W8 file ({w8} bytes): wrote the W8 model")
    smallest, _ = write_widths(quantized, calibrated, w4_bits, storage)
    if capacity_total < len(smallest):
        raise ConfigError(f"size budget {budget} ({capacity_total} bytes) is below the smallest reachable file, "
                          f"{len(smallest)} bytes (every layer at W4); raise it to at least {len(smallest)} bytes.")
    # Rewriting the file costs a fixed few bytes beyond the weights (96 on the test model, whatever the widths):
    # measured on the all-W4 file, so the planned sizes are the written ones (LUT adds per-tensor DECODE ops,
    # which the tightening below absorbs).
    overhead = max(len(smallest) - rest - sum(l.bytes_at(w4_bits[l.op_index]) for l in layers), 0)
    capacity = capacity_total - rest - overhead
    for _ in range(max_rounds):
        bits, g = choose(layers, capacity)
        out, twin = write_widths(quantized, calibrated, bits, storage, images, rounding, rounding_config, progress)
        if len(out) <= capacity_total:
            return out, twin, plan(bits, g, len(out), len(smallest))
        capacity -= len(out) - capacity_total  # padding / packing overhead: tighten by the excess
    out, twin = write_widths(quantized, calibrated, w4_bits, storage, images, rounding, rounding_config, progress)
    return out, twin, plan(w4_bits, 1, len(out), len(smallest))


# ----------------------------------------------------------------------------- convert()'s branch

def check_budget_options(size_budget, return_plan: bool, scheme, weight_bits: int, nonuniform: bool,
                         weight_dtype: str, plan) -> None:
    """convert(size_budget=...)'s clashes, refused before any expensive work."""
    from tflite_retroq.config import Scheme
    if size_budget is None:
        raise ConfigError("return_plan=True returns the size budget's plan; it needs size_budget=.")
    parse_size_budget(size_budget)
    if weight_bits != 8:
        raise ConfigError(f"size_budget chooses each layer's width (W8, W6 or W4); leave weight_bits at 8 "
                          f"(got {weight_bits}).")
    if nonuniform:
        raise ConfigError("size_budget chooses uniform per-layer widths; drop nonuniform=True.")
    if weight_dtype != "int8":
        raise ConfigError("size_budget already stores its W4 layers as INT4; leave weight_dtype at 'int8'.")
    if Scheme(scheme) == Scheme.HYBRID or plan is not None:
        raise ConfigError("size_budget keeps one scheme for all layers; use scheme='per-channel' or 'per-tensor'.")


def budget_convert(model, data, quantized: bytes, calibrated: bytes, size_budget, pack, rounding: str,
                   rounding_config, progress: bool, return_plan: bool):
    """convert()'s size-budget branch: measure, plan, write (the held-out check: reports.pareto.holdout_check)."""
    from tflite_retroq.model.prepared import prepare
    model = prepare(model)
    storage = "lut" if pack == "lut" else "int4"
    from tflite_retroq.methods.sensitivity import _images
    images = _images(data, "size_budget (each layer's cost)")[0]
    out, twin, plan = plan_budget(model, images, quantized, calibrated, size_budget, storage,
                                  rounding=rounding, rounding_config=rounding_config, progress=progress)
    return (out, dataclasses.replace(plan, twin=twin)) if return_plan else out


# ----------------------------------------------------------------------------- the size frontier

def sweep(model, images: np.ndarray, quantized: bytes, calibrated: bytes, storage: str = "int4",
          points: int = 8, costs: Optional[Mapping[int, Mapping[int, float]]] = None
          ) -> List[Tuple[BudgetPlan, bytes, bytes]]:
    """(plan, file, int8 twin) at `points` budgets evenly spaced from the all-W4 to the W8 file, on one
    cost analysis (`costs`, else measured on `images`); budgets that give the same widths appear once."""
    if not isinstance(points, int) or isinstance(points, bool) or points < 2:
        raise ConfigError(f"points={points!r} must be an integer of at least 2 (the all-W4 and the W8 file).")
    costs = layer_costs(model, images, calibrated, quantized) if costs is None else costs
    sizes = layer_bytes(quantized, calibrated, storage)
    layers = layer_options(costs, sizes, quantized)
    smallest, _ = write_widths(quantized, calibrated, {l.op_index: min(b for b, _ in l.bytes) for l in layers},
                               storage)
    out, seen = [], set()
    for budget in np.linspace(len(smallest), len(quantized), points).round().astype(int):
        f, twin, plan = plan_budget(model, images, quantized, calibrated, int(budget), storage, costs=costs)
        if plan.widths not in seen:
            seen.add(plan.widths)
            out.append((plan, f, twin))
    return out
