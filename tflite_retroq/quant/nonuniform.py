"""Non-uniform weight quantization by IQR clusters (the paper's appendix A), pure numpy.

Uniform grids spend most of their 2^k levels on the sparse tails of a weight
distribution. Here a tensor is split into three clusters by Tukey's fences,
[min, Q1-1.5 IQR), [Q1-1.5 IQR, Q3+1.5 IQR], (Q3+1.5 IQR, max], and the 2^k levels
are shared in proportion to range x count (integers by largest remainder, every
non-empty cluster at least one level). Each cluster is quantized uniformly over
its own extent; a weight maps to the nearest level of its own cluster.

Decisions the paper leaves open (see ARCHITECTURE.md):
* quartiles: Q1 = median of the lower half, Q3 = median of the upper half, the
  median itself excluded from both halves when the count is odd (Tukey's hinges);
* a cluster's range is the extent of its members (min..max of the weights in it),
  so no level is placed where no weight lies;
* a cluster with one level puts it at the middle of its extent;
* clusters whose members are all equal get exactly one level (more would be
  duplicates), so a degenerate tensor may use fewer than 2^k levels.

Per-tensor is the paper's scheme; per-channel (one clustering per output channel)
is our extension.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from tflite_retroq.errors import ConfigError, QuantizationError

CLUSTERS = ("low outliers", "centre", "high outliers")
MIN_BITS, MAX_BITS = 2, 8  # 2 bits = 4 levels, enough for three clusters


def check_bits(bits: int) -> int:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"non-uniform weight bits {bits!r} not supported; choose an integer from "
                          f"{MIN_BITS} to {MAX_BITS} (2^k levels shared by three clusters).")
    return int(bits)


def _median_sorted(x: np.ndarray) -> float:
    n = len(x)
    return float(x[n // 2]) if n % 2 else float((x[n // 2 - 1] + x[n // 2]) / 2.0)


def quartiles(w: np.ndarray) -> Tuple[float, float]:
    """(Q1, Q3) as the paper defines them: medians of the lower and upper halves."""
    x = np.sort(np.asarray(w, np.float64).ravel())
    n = len(x)
    if n == 0:
        raise QuantizationError("Cannot quantize an empty weight tensor.")
    if n == 1:
        return float(x[0]), float(x[0])
    return _median_sorted(x[:n // 2]), _median_sorted(x[(n + 1) // 2:])


def allocate_levels(weights: Sequence[float], total: int) -> List[int]:
    """Integers proportional to `weights` summing to `total`, by largest remainder;
    every cluster (entry) gets at least one level.

    Entries of weight 0 get exactly one level. When all weights are 0 every entry
    gets one level and the sum is the number of entries (nothing to share)."""
    wts = np.asarray(weights, np.float64)
    m = len(wts)
    if m == 0:
        return []
    if total < m:
        raise QuantizationError(f"{total} levels cannot give each of {m} clusters one level.")
    if np.any(wts < 0) or not np.all(np.isfinite(wts)):
        raise QuantizationError(f"cluster weights must be finite and >= 0, got {list(weights)}.")
    if wts.sum() == 0:
        return [1] * m
    alloc = np.ones(m, np.int64)
    live = wts > 0
    # Minimum one each, then share the rest by largest remainder among clusters that
    # have a range; quotas are those of the full total so the proportions are the paper's.
    quota = total * wts / wts.sum()
    extra = np.where(live, np.maximum(np.floor(quota) - 1, 0), 0).astype(np.int64)
    alloc += extra
    left = total - int(alloc.sum())
    while left < 0:  # the minimum of one pushed the sum over: take from the most over-served
        over = np.where(alloc > 1, alloc - quota, -np.inf)
        i = int(np.argmax(over))
        alloc[i] -= 1
        left += 1
    rema = np.where(live, quota - alloc, -np.inf)
    order = sorted(range(m), key=lambda i: (-rema[i], i))
    for i in order[:left]:
        alloc[i] += 1
    return [int(a) for a in alloc]


@dataclasses.dataclass(frozen=True)
class ClusterStats:
    """One IQR cluster of one tensor (or channel)."""
    name: str
    lo: Optional[float]   # extent of its members (None when the cluster is empty)
    hi: Optional[float]
    count: int
    levels: int      # number of levels allocated
    step: float      # spacing of its uniform levels (0 with one level)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SliceResult:
    """Levels and codes of one clustering (a whole tensor, or one channel)."""
    levels: np.ndarray          # sorted float levels, at most 2^k
    codes: np.ndarray           # int index into `levels`, shape of the slice
    clusters: Tuple[ClusterStats, ...]
    q1: float
    q3: float

    @property
    def values(self) -> np.ndarray:
        return self.levels[self.codes]


def quantize_slice(w: np.ndarray, bits: int) -> SliceResult:
    """Non-uniform quantization of one array with 2^bits levels (see module docstring)."""
    bits = check_bits(bits)
    w = np.asarray(w, np.float64)
    if w.size == 0:
        raise QuantizationError("Cannot quantize an empty weight tensor.")
    if not np.all(np.isfinite(w)):
        raise QuantizationError("Weights contain NaN or infinity; the float model is broken.")
    q1, q3 = quartiles(w)
    iqr = q3 - q1
    fence_lo, fence_hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    flat = w.ravel()
    member = np.where(flat < fence_lo, 0, np.where(flat > fence_hi, 2, 1))
    present = [c for c in range(3) if np.any(member == c)]
    ext = {c: (float(flat[member == c].min()), float(flat[member == c].max())) for c in present}
    cnt = {c: int(np.sum(member == c)) for c in present}
    alloc = dict(zip(present, allocate_levels([(ext[c][1] - ext[c][0]) * cnt[c] for c in present], 2 ** bits)))
    levels_list, stats, offsets = [], [], {}
    codes = np.zeros(flat.shape, np.int64)
    for c in range(3):
        if c not in present:
            stats.append(ClusterStats(CLUSTERS[c], None, None, 0, 0, 0.0))
            continue
        lo, hi = ext[c]
        s = alloc[c] if hi > lo else 1
        if s == 1:
            lv, step = np.array([(lo + hi) / 2.0]), 0.0
            local = np.zeros(cnt[c], np.int64)
        else:
            step = (hi - lo) / (s - 1)
            lv = lo + step * np.arange(s)
            lv[-1] = hi
            local = np.clip(np.round((flat[member == c] - lo) / step), 0, s - 1).astype(np.int64)
        offsets[c] = len(levels_list)
        codes[member == c] = offsets[c] + local
        levels_list.extend(lv.tolist())
        stats.append(ClusterStats(CLUSTERS[c], lo, hi, cnt[c], int(s), float(step)))
    # Clusters are disjoint and ordered (low < centre < high), so concatenated levels are sorted.
    levels = np.asarray(levels_list, np.float64)
    return SliceResult(levels, codes.reshape(w.shape), tuple(stats), q1, q3)


@dataclasses.dataclass(frozen=True)
class NonUniformResult:
    """Non-uniform quantization of one tensor: per-tensor (one slice) or per-channel (one per channel)."""
    bits: int
    axis: Optional[int]                 # channel axis, None for per-tensor
    slices: Tuple[SliceResult, ...]
    shape: Tuple[int, ...]

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def codes(self) -> np.ndarray:
        """Index of each weight into its own slice's `levels` (same shape as the weights)."""
        if self.axis is None:
            return self.slices[0].codes
        return np.stack([s.codes for s in self.slices], axis=self.axis)

    @property
    def levels(self) -> List[np.ndarray]:
        return [s.levels for s in self.slices]

    def dequantize(self) -> np.ndarray:
        """The quantized weights as float32."""
        if self.axis is None:
            return self.slices[0].values.astype(np.float32)
        return np.stack([s.values for s in self.slices], axis=self.axis).astype(np.float32)

    def stats(self) -> dict:
        """Plain-JSON summary: per cluster, counts and levels summed over slices."""
        out = {"bits": self.bits, "scheme": "per-channel" if self.per_channel else "per-tensor",
               "max_levels": int(max(len(s.levels) for s in self.slices)), "clusters": []}
        for i, name in enumerate(CLUSTERS):
            if any(len(s.clusters) != len(CLUSTERS) for s in self.slices):
                break  # levels from another quantizer (e.g. k-means): no IQR clusters
            cs = [s.clusters[i] for s in self.slices]
            out["clusters"].append({"name": name, "count": int(sum(c.count for c in cs)),
                                    "levels": int(sum(c.levels for c in cs)),
                                    "slices_present": int(sum(c.count > 0 for c in cs))})
        if not self.per_channel and self.slices[0].clusters:
            out["q1"], out["q3"] = self.slices[0].q1, self.slices[0].q3
            out["cluster_detail"] = [c.to_dict() for c in self.slices[0].clusters]
        return out


def quantize(w: np.ndarray, bits: int, axis: Optional[int] = None) -> NonUniformResult:
    """Non-uniform k-bit quantization of a weight tensor, per tensor (axis None, the paper)
    or per channel along `axis` (our extension)."""
    w = np.asarray(w, np.float32)
    bits = check_bits(bits)
    if axis is None:
        return NonUniformResult(bits, None, (quantize_slice(w, bits),), tuple(w.shape))
    if not -w.ndim <= axis < w.ndim:
        raise QuantizationError(f"channel axis {axis} out of range for a weight tensor of shape {w.shape}.")
    axis = axis % w.ndim
    slices = tuple(quantize_slice(np.take(w, c, axis=axis), bits) for c in range(w.shape[axis]))
    return NonUniformResult(bits, axis, slices, tuple(w.shape))


def sqnr_db(w: np.ndarray, wq: np.ndarray) -> float:
    """Weight SQNR in dB (inf when exact)."""
    w = np.asarray(w, np.float64)
    noise = float(np.sum((w - wq) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(float(np.sum(w ** 2)) / noise))
