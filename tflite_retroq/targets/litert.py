"""LiteRT's three CPU kernel paths: single-threaded latency medians, interleaved for fair ratios."""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tflite_retroq.errors import ConfigError
from tflite_retroq.evaluate import _interpreter

RESOLVERS: Tuple[str, ...] = ("auto", "builtin", "reference")



# ----------------------------------------------------------------------------- LiteRT latency

def litert_latencies(models: Mapping[str, bytes], resolvers: Sequence[str] = RESOLVERS, *, runs: int = 30,
                     warmup: int = 3, num_threads: int = 1, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Median single-image latency (seconds) of each model on each LiteRT resolver.

    Runs are interleaved round-robin over models and resolvers, so load on a shared machine
    hits every entry alike and ratios between entries are fair.
    """
    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs={runs} must be >= 1 and warmup={warmup} >= 0.")
    rng = np.random.default_rng(seed)
    its = {}
    for name, data in models.items():
        for r in resolvers:
            it = _interpreter(bytes(data), r, num_threads)
            d = it.get_input_details()[0]
            shape = [1] + [int(s) for s in d["shape"][1:]]
            if list(d["shape"]) != shape:
                it.resize_tensor_input(d["index"], shape)
            it.allocate_tensors()
            dtype = np.dtype(d["dtype"])
            if dtype.kind in "iu":
                x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, shape).astype(dtype)
            else:
                x = rng.standard_normal(shape).astype(dtype)
            it.set_tensor(d["index"], x)
            for _ in range(warmup):
                it.invoke()
            its[(name, r)] = it
    times: Dict[Tuple[str, str], list] = {k: [] for k in its}
    for _ in range(runs):
        for key, it in its.items():
            t0 = time.perf_counter()
            it.invoke()
            times[key].append(time.perf_counter() - t0)
    result: Dict[str, Dict[str, float]] = {name: {} for name in models}
    for (name, r), ts in times.items():
        result[name][r] = float(np.median(ts))
    return result


@dataclasses.dataclass(frozen=True)
class LiteRTLatency:
    """Median single-image latency of one model, in seconds, per LiteRT CPU kernel path (None: not measured).

    auto: the default (XNNPACK delegate where it applies); builtin: LiteRT's builtin kernels without
    delegates; reference: the reference kernels (slow, exact). `runs` timed invocations each, `num_threads`.
    """
    auto_s: Optional[float]
    builtin_s: Optional[float]
    reference_s: Optional[float]
    runs: int
    num_threads: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        parts = [f"{name} {v * 1e6:.0f} us" for name, v in (("auto", self.auto_s), ("builtin", self.builtin_s),
                                                            ("reference", self.reference_s)) if v is not None]
        return ", ".join(parts) + f" (median of {self.runs} runs, {self.num_threads} thread{'s' * (self.num_threads != 1)})"


def litert_latency(model_bytes: bytes, resolvers: Sequence[str] = RESOLVERS, *, runs: int = 30, warmup: int = 3,
                   num_threads: int = 1) -> LiteRTLatency:
    """Median single-image latency per LiteRT resolver (a frozen LiteRTLatency, seconds), num_threads=1 by default."""
    unknown = [r for r in resolvers if r not in RESOLVERS]
    if unknown:
        raise ConfigError(f"resolvers {unknown} are not LiteRT kernel paths; choose from {', '.join(RESOLVERS)}.")
    medians = litert_latencies({"model": model_bytes}, resolvers, runs=runs, warmup=warmup,
                               num_threads=num_threads)["model"]
    return LiteRTLatency(medians.get("auto"), medians.get("builtin"), medians.get("reference"), runs, num_threads)
