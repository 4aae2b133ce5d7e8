"""Size-budget planner (methods/budget.py): the knapsack against brute force, budgets parsed and refused,
and the written file read back through the schema object API, independently of the planner."""
import itertools

import numpy as np
import pytest

from tflite_retroq.errors import ConfigError
from tflite_retroq.methods.budget import SizeBudget, parse_size_budget
from tflite_retroq.methods.knapsack import solve_knapsack
from tflite_retroq.tflite import model as tfm


def _brute(options, capacity):
    best = None
    for picks in itertools.product(*[range(len(o)) for o in options]):
        size = sum(options[i][j][0] for i, j in enumerate(picks))
        cost = sum(options[i][j][1] for i, j in enumerate(picks))
        if size <= capacity and (best is None or cost < best[0]):
            best = (cost, list(picks))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(3, 7))
    options = []
    for _ in range(layers):
        n = int(rng.integers(10, 400))
        sizes = sorted({n, int(rng.integers(n // 3, n)), int(rng.integers(1, n // 3 + 1))}, reverse=True)
        cost = np.sort(rng.exponential(1.0, len(sizes)))  # narrower: usually dearer, random gaps
        options.append([(s, float(c)) for s, c in zip(sizes, cost)])
    lo = sum(min(s for s, _ in o) for o in options)
    hi = sum(max(s for s, _ in o) for o in options)
    for capacity in np.linspace(lo, hi, 7).astype(int):
        picks, g = solve_knapsack(options, int(capacity))
        want_cost, want = _brute(options, int(capacity))
        got_size = sum(options[i][j][0] for i, j in enumerate(picks))
        got_cost = sum(options[i][j][1] for i, j in enumerate(picks))
        assert g == 1 and got_size <= capacity
        assert got_cost == pytest.approx(want_cost, rel=1e-12, abs=1e-12) and picks == want


def test_knapsack_coarse_granularity_still_fits():
    rng = np.random.default_rng(3)
    options = [[(int(n), 0.0), (int(n) // 2, float(rng.exponential()))] for n in rng.integers(100, 1000, 5)]
    hi, lo = sum(o[0][0] for o in options), sum(o[1][0] for o in options)
    for capacity in np.linspace(lo, hi - 50, 5).astype(int):
        picks, g = solve_knapsack(options, int(capacity), max_cells=200)
        assert g > 1
        assert sum(options[i][j][0] for i, j in enumerate(picks)) <= capacity
        # optimal for a capacity at most g x layers tighter
        tight = _brute(options, int(capacity) - g * len(options))
        if tight is not None:
            assert sum(options[i][j][1] for i, j in enumerate(picks)) <= tight[0] + 1e-12
    with pytest.raises(ConfigError, match="smallest reachable"):
        solve_knapsack(options, lo - 1)


@pytest.mark.parametrize("text,want", [("64KB", SizeBudget(bytes=64000)), ("64KiB", SizeBudget(bytes=65536)),
                                       ("0.5MB", SizeBudget(bytes=500000)), ("0.6x", SizeBudget(fraction=0.6)),
                                       (" 1200 ", SizeBudget(bytes=1200)), (4096, SizeBudget(bytes=4096))])
def test_parse_size_budget(text, want):
    assert parse_size_budget(text) == want


@pytest.mark.parametrize("bad", ["64 apples", "-3KB", "0x", "", "x", 0, -5, 1.5, True, None])
def test_parse_size_budget_refuses(bad):
    with pytest.raises(ConfigError):
        parse_size_budget(bad)


# ----------------------------------------------------------------------------- on a tiny model

@pytest.fixture(scope="module")
def w8(lut_model, lut_calibrated):
    import tflite_retroq as rq
    cal, data = lut_calibrated
    return rq.convert(lut_model, data, calibrated=cal)


def _read_back(data: bytes):
    """{op index: (bits from the codes' range, weight bytes in the file, INT4?)} via the schema object API."""
    m = tfm.read(data)
    out = {}
    for w in tfm.weight_ops(m):
        t = m.subgraphs[0].tensors[w.weight]
        q = tfm.tensor_array(m, m.subgraphs[0], w.weight).astype(np.int32)
        bits = int(np.ceil(np.log2(np.abs(q).max() + 1))) + 1
        out[w.index] = (bits, len(m.buffers[t.buffer].data), t.type == tfm.INT4)
    return out


@pytest.mark.parametrize("fraction", [0.78, 0.84, 0.9, 0.97])
def test_written_widths_and_sizes_equal_the_plan(lut_model, lut_calibrated, w8, fraction):
    import tflite_retroq as rq
    cal, data = lut_calibrated
    out, plan = rq.convert(lut_model, data, calibrated=cal, size_budget=f"{fraction}x", return_plan=True)
    budget = int(np.floor(fraction * len(w8)))
    assert plan.w8_bytes == len(w8) and plan.budget_bytes == budget
    assert len(out) == plan.file_bytes <= budget
    back = _read_back(out)
    pd = plan.to_dict()
    assert {l["op_index"]: l["bits"] for l in pd["layers"]} == {op: b for op, (b, _, _) in back.items()}
    for l in pd["layers"]:
        bits, nbytes, int4 = back[l["op_index"]]
        assert nbytes == l["bytes"] and int4 == (bits == 4)
        n = l["elements"]
        assert l["bytes"] == ((n + 1) // 2 if bits == 4 else n)  # INT4: two weights a byte
    # the plan's summed cost is the minimum over every assignment whose written file fits (brute force,
    # files written by the passes themselves: limit_weight_bits + to_int4)
    from tflite_retroq.tflite.int4 import to_int4
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    layers = pd["layers"]
    best = None
    for pick in itertools.product(*[[int(k) for k in l["kl_by_bits"]] for l in layers]):
        bits = {l["op_index"]: b for l, b in zip(layers, pick) if b != 8}
        size = len(to_int4(limit_weight_bits(w8, cal, bits), {o for o, b in bits.items() if b == 4})) if bits else len(w8)
        cost = sum(l["kl_by_bits"][str(b)] for l, b in zip(layers, pick))
        if size <= budget and (best is None or cost < best):
            best = cost
    assert plan.predicted_cost == pytest.approx(best, rel=1e-12, abs=1e-15)


def test_budget_bounds(lut_model, lut_calibrated, w8):
    import tflite_retroq as rq
    from tflite_retroq.tflite.int4 import to_int4
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    cal, data = lut_calibrated
    out, plan = rq.convert(lut_model, data, calibrated=cal, size_budget=len(w8) + 10, return_plan=True)
    assert out == w8 and "at or above the W8 file" in plan.note
    smallest = len(to_int4(limit_weight_bits(w8, cal, 4)))
    with pytest.raises(ConfigError, match=f"smallest reachable file, {smallest} bytes"):
        rq.convert(lut_model, data, calibrated=cal, size_budget=smallest - 1)
    assert len(rq.convert(lut_model, data, calibrated=cal, size_budget=smallest)) <= smallest
    with pytest.raises(ConfigError, match="weight_bits"):
        rq.convert(lut_model, data, calibrated=cal, size_budget="0.7x", weight_bits=4)


def test_lut_budget_counts_packed_sizes(lut_model, lut_calibrated, w8):
    """With pack='lut' the planned bytes of each narrow layer are its packed size, and the file fits."""
    pytest.importorskip("tflite_micro")
    import tflite_retroq as rq
    from tflite_retroq.tflite.pack import lut_plan
    cal, data = lut_calibrated
    budget = int(0.94 * len(w8))  # LUT tables and DECODE ops: the all-W4 packed file is 0.9x of W8 here
    out, plan = rq.convert(lut_model, data, calibrated=cal, size_budget=budget, pack="lut", return_plan=True)
    assert len(out) == plan.file_bytes <= budget and plan.storage == "lut"
    packed = {c.name: c.packed_bytes for c in lut_plan(plan.twin)}  # the packer's own sizes, from the twin
    m = tfm.read(plan.twin)
    names = {w.index: tfm.tensor_name(m.subgraphs[0].tensors[w.weight]) for w in tfm.weight_ops(m)}
    narrow = [l for l in plan.to_dict()["layers"] if l["bits"] < 8]
    assert narrow
    for l in narrow:
        assert l["bytes"] == packed[names[l["op_index"]]]
