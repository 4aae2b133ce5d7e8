"""Size-budget planner (methods/budget.py): the knapsack against brute force, budgets parsed and refused,
and the written file read back through the schema object API, independently of the planner."""
import itertools

import numpy as np
import pytest

from tflite_retroq.errors import ConfigError
from tflite_retroq.methods.budget import SizeBudget, parse_size_budget, solve_knapsack
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
