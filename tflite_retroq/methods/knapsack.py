"""Multiple-choice knapsack by dynamic programming: one option per group, least summed cost within a capacity.

Exact at one-byte granularity; for very large instances (groups x capacity over MAX_DP_CELLS) the granularity
grows and the answer stays feasible and near-optimal (see solve_knapsack).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

from tflite_retroq.errors import ConfigError

MAX_DP_CELLS = 40_000_000   # groups x capacity cells of the choice table (int8: 40 MB)


def solve_knapsack(options: Sequence[Sequence[Tuple[int, float]]], capacity: int,
                   max_cells: int = MAX_DP_CELLS) -> Tuple[List[int], int]:
    """Multiple-choice knapsack: one (bytes, cost) option per group, minimal summed cost with summed
    bytes <= capacity. Returns (chosen option index per group, granularity).

    DP over bytes saved against each group's largest option, capped at what the budget needs. At
    granularity g > 1 (only when layers x need exceeds `max_cells`) savings are rounded down and the need
    up, so the choice always fits; it is optimal for a capacity at most g x groups bytes tighter.
    Ties keep the earlier option (list options widest first: equal cost, more bits)."""
    if not options:
        return [], 1
    base = [max(b for b, _ in opts) for opts in options]
    need = sum(base) - int(capacity)
    if need <= 0:
        return [int(np.argmin([c for _, c in opts])) for opts in options], 1  # nothing binds: cheapest each
    most = sum(base[i] - min(b for b, _ in opts) for i, opts in enumerate(options))
    if most < need:
        raise ConfigError(f"capacity {capacity} bytes is below the smallest reachable {sum(base) - most} bytes.")
    g = max(1, math.ceil(len(options) * (need + 1) / max_cells))
    cells = -(-need // g)  # ceil
    dp = np.full(cells + 1, np.inf)
    dp[0] = 0.0
    choice = np.zeros((len(options), cells + 1), np.int8)
    idx = np.arange(cells + 1)
    for i, opts in enumerate(options):
        cand = np.empty((len(opts), cells + 1))
        for j, (b, c) in enumerate(opts):
            s = (base[i] - b) // g
            cand[j] = dp[np.maximum(idx - s, 0)] + c
        choice[i] = np.argmin(cand, axis=0)  # first minimum: the earlier (wider) option on ties
        dp = cand[choice[i], idx]
    if not np.isfinite(dp[cells]):  # only at g > 1, within g x groups bytes of the smallest: all narrowest fits
        return [int(np.argmin([b for b, _ in opts])) for opts in options], g
    picks, s = [0] * len(options), cells
    for i in range(len(options) - 1, -1, -1):
        j = int(choice[i, s])
        picks[i] = j
        s = max(s - (base[i] - options[i][j][0]) // g, 0)
    return picks, g
