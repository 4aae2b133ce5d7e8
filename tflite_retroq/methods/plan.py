"""Results of the paper's Algorithm 2 and the hybrid selection rule; rank fidelity between data sources.

Plain frozen dataclasses and numpy: nothing here runs a model.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tflite_retroq.config import HybridConfig
from tflite_retroq.errors import ConfigError
from tflite_retroq.io_utils import to_json


# ----------------------------------------------------------------------------- result objects

@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    """One weight layer: KL with only its kernel quantized per-tensor (pt) and per-channel (pc)."""
    index: int                 # position among the analyzed layers (graph order)
    name: str                  # Keras layer name
    kind: str                  # TFLite op kind: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED
    weight_shape: Tuple[int, ...]  # Keras kernel shape
    channels: int              # output channels (per-channel scales)
    range_ratio: float         # max / min over channels of max|w| (how uneven the channel ranges are)
    kl_per_tensor: float
    kl_per_channel: float

    @property
    def difference(self) -> float:
        """KL_PT - KL_PC: what per-channel buys for this layer (the paper's selection quantity)."""
        return self.kl_per_tensor - self.kl_per_channel

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["weight_shape"] = list(self.weight_shape)
        d["difference"] = self.difference
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerSensitivity":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["weight_shape"] = tuple(int(v) for v in kw["weight_shape"])
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class SensitivityResult:
    """Per-layer sensitivities plus how they were computed and what it cost."""
    layers: Tuple[LayerSensitivity, ...]
    weight_bits: int
    num_images: int
    data_source: str           # dataset mode (retro, zeroq, gaussian, real, ...) or "array"
    method: str                # "cached" (suffix only) or "naive" (2L full passes)
    seconds: float             # wall time of the whole analysis
    full_pass_seconds: float   # one float pass over the images (same executor)
    naive_seconds: float       # measured (method="naive") or 2L x full_pass_seconds (estimated)

    @property
    def speedup(self) -> float:
        """naive_seconds / seconds (about 1 for method="naive")."""
        return self.naive_seconds / self.seconds if self.seconds > 0 else float("inf")

    @property
    def names(self) -> List[str]:
        return [l.name for l in self.layers]

    def layer(self, name: str) -> LayerSensitivity:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def select(self, config: Optional[HybridConfig] = None, **kwargs) -> "HybridPlan":
        """The hybrid plan for `config` (or HybridConfig(**kwargs)); see `select_layers`."""
        return select_layers(self, config if config is not None else HybridConfig(**kwargs))

    def to_dict(self) -> dict:
        return {"weight_bits": self.weight_bits, "num_images": self.num_images, "data_source": self.data_source,
                "method": self.method, "seconds": self.seconds, "full_pass_seconds": self.full_pass_seconds,
                "naive_seconds": self.naive_seconds, "speedup": self.speedup,
                "layers": [l.to_dict() for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityResult":
        return cls(layers=tuple(LayerSensitivity.from_dict(l) for l in d["layers"]),
                   weight_bits=int(d["weight_bits"]), num_images=int(d["num_images"]),
                   data_source=str(d["data_source"]), method=str(d["method"]), seconds=float(d["seconds"]),
                   full_pass_seconds=float(d["full_pass_seconds"]), naive_seconds=float(d["naive_seconds"]))

    def to_json(self) -> str:
        return to_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SensitivityResult":
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class HybridPlan:
    """Which analyzed layers go per-channel; every other weight layer stays per-tensor."""
    config: HybridConfig
    per_channel: Tuple[str, ...]           # Keras layer names, most sensitive first
    decisions: Tuple[Tuple[str, str, str, float], ...]  # (name, kind, scheme, difference) in graph order

    @property
    def num_layers(self) -> int:
        return len(self.decisions)

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "per_channel": list(self.per_channel),
                "num_per_channel": len(self.per_channel), "num_layers": self.num_layers,
                "layers": [{"name": n, "kind": k, "scheme": s, "difference": d} for n, k, s, d in self.decisions]}

    @classmethod
    def from_dict(cls, d: dict) -> "HybridPlan":
        return cls(config=HybridConfig.from_dict(d["config"]), per_channel=tuple(d["per_channel"]),
                   decisions=tuple((l["name"], l["kind"], l["scheme"], float(l["difference"])) for l in d["layers"]))


# ----------------------------------------------------------------------------- selection

def select_layers(result: SensitivityResult, config: HybridConfig = HybridConfig()) -> HybridPlan:
    """The paper's rule, a budget, and a FULLY_CONNECTED override.

    Per-channel iff KL_PT - KL_PC > threshold (the paper: per-tensor if the difference is below
    Th; an exact tie goes per-tensor, as per-channel would buy nothing). With `max_per_channel`
    only the N layers with the largest difference among those are kept. With
    `fully_connected_per_tensor` FULLY_CONNECTED layers never go per-channel (targets such as
    Hexagon and Vela reject per-channel FULLY_CONNECTED).
    """
    cands = [l for l in result.layers if l.difference > config.threshold
             and not (config.fully_connected_per_tensor and l.kind == "FULLY_CONNECTED")]
    cands.sort(key=lambda l: (-l.difference, l.index))
    if config.max_per_channel is not None:
        cands = cands[:config.max_per_channel]
    chosen = {l.name for l in cands}
    decisions = tuple((l.name, l.kind, "per-channel" if l.name in chosen else "per-tensor", l.difference)
                      for l in result.layers)
    return HybridPlan(config=config, per_channel=tuple(l.name for l in cands), decisions=decisions)


# ----------------------------------------------------------------------------- fidelity (Fig. 5)

def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    if ra.size != rb.size:
        raise ValueError("spearman needs two sequences of the same length")
    if ra.size < 2 or np.all(ra == ra[0]) or np.all(rb == rb[0]):
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, np.float64)
    sx = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def fidelity(results: Dict[str, SensitivityResult], reference: str = "real") -> Dict[str, Dict[str, float]]:
    """Spearman correlation of each source's per-layer curves with the reference source's.

    Returns {source: {"kl_per_tensor": rho, "kl_per_channel": rho, "difference": rho}}: how well
    data from each source ranks the layers the way real images do.
    """
    if reference not in results:
        raise ConfigError(f"reference source {reference!r} is not among {sorted(results)}.")
    ref = results[reference]
    out = {}
    for src, res in results.items():
        if res.names != ref.names:
            raise ConfigError(f"source {src!r} analyzed other layers than {reference!r}; analyze the same model.")
        out[src] = {key: spearman([getattr(l, key) for l in ref.layers], [getattr(l, key) for l in res.layers])
                    for key in ("kl_per_tensor", "kl_per_channel", "difference")}
    return out
