"""Frozen configuration dataclasses, JSON round-trippable.

Configs are values: they are validated on construction so a bad option fails
before any expensive work starts, and they are stored inside every dataset and
report so results can be reproduced.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Optional, Sequence, Tuple

from tflite_retroq.errors import ConfigError, InputSpecError


class SynthesisMode(str, enum.Enum):
    RETRO = "retro"        # BN statistics + Gaussian prior + class loss (the paper)
    ZEROQ = "zeroq"        # BN statistics + Gaussian prior, no class loss
    GAUSSIAN = "gaussian"  # plain N(0, 1) in the normalized input space, no optimization


class Scheme(str, enum.Enum):
    PER_CHANNEL = "per-channel"
    PER_TENSOR = "per-tensor"
    HYBRID = "hybrid"  # per-tensor, with the layers that need it per-channel (sensitivity.py)


class IOType(str, enum.Enum):
    INT8 = "int8"
    FLOAT = "float"


def _enum(cls, value, name):
    try:
        return cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {choices}.") from None


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """Algorithm 1 knobs. Defaults were chosen by measurement (see README, benchmarks)."""

    mode: SynthesisMode = SynthesisMode.RETRO
    samples_per_class: int = 8
    iterations: int = 100
    learning_rate: float = 0.1
    bn_weight: float = 1.0
    prior_weight: float = 1.0
    class_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "mode", _enum(SynthesisMode, self.mode, "mode"))
        for name in ("samples_per_class", "iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "samples_per_class" else 0):
                raise ConfigError(f"{name}={v!r} must be a positive integer.")
        for name in ("learning_rate", "bn_weight", "prior_weight", "class_weight"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0 or (name == "learning_rate" and v == 0):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a finite number >= 0"
                                  f"{' and > 0' if name == 'learning_rate' else ''}.")
            object.__setattr__(self, name, v)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed={self.seed!r} must be an integer.")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mode"] = self.mode.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SynthesisConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _floats(values, name) -> Optional[Tuple[float, ...]]:
    if values is None:
        return None
    try:
        out = tuple(float(v) for v in (values if isinstance(values, (list, tuple)) else [values]))
    except (TypeError, ValueError):
        raise InputSpecError(f"{name}={values!r} must be numbers, e.g. 0.5,0.5,0.5.") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise InputSpecError(f"{name}={values!r} must be finite numbers.")
    return out


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How the model's input relates to pixels: model_input = (pixel - mean) / std,
    with pixel in value_range.

    * mean/std given: the caller normalizes outside the model (PyTorch style);
      value_range is the pixel range (default [0, 1] if every mean <= 1, else [0, 255]).
    * only value_range given: the model takes raw pixels in that range.
    * nothing given: detected from a Rescaling/Normalization front, else N(0, 1).
    """

    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    value_range: Optional[Tuple[float, float]] = None

    def __post_init__(self):
        mean, std = _floats(self.mean, "input mean"), _floats(self.std, "input std")
        rng = _floats(self.value_range, "input range")
        if (mean is None) != (std is None):
            raise InputSpecError("Give both input mean and input std, or neither.")
        if std is not None and any(s <= 0 for s in std):
            raise InputSpecError(f"input std {std} must be > 0 for every channel.")
        if mean is not None and len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise InputSpecError(f"input mean has {len(mean)} values but std has {len(std)}; give one per channel.")
        if rng is not None and (len(rng) != 2 or rng[0] >= rng[1]):
            raise InputSpecError(f"input range {rng} must be two numbers LO,HI with LO < HI.")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "value_range", rng)

    @property
    def is_empty(self) -> bool:
        return self.mean is None and self.value_range is None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "InputSpec":
        return cls(**(d or {}))


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """What convert() produces: weight scheme, weight bits, and I/O type."""

    scheme: Scheme = Scheme.PER_CHANNEL
    weight_bits: int = 8
    io: IOType = IOType.INT8

    def __post_init__(self):
        object.__setattr__(self, "scheme", _enum(Scheme, self.scheme, "scheme"))
        object.__setattr__(self, "io", _enum(IOType, self.io, "io"))
        if self.weight_bits not in (8, 6, 4):
            raise ConfigError(f"weight_bits={self.weight_bits!r} is not supported; choose 8, 6 or 4.")

    def to_dict(self) -> dict:
        return {"scheme": self.scheme.value, "weight_bits": self.weight_bits, "io": self.io.value}


def as_channels(values: Optional[Sequence[float]], channels: int, name: str):
    """Broadcast a per-channel tuple to `channels` entries, or fail clearly."""
    if values is None:
        return None
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise InputSpecError(f"{name} has {len(values)} values but the model input has {channels} channels.")
    return tuple(values)




@dataclasses.dataclass(frozen=True)
class HybridConfig:
    """Hybrid scheme: which layers go per-channel (see sensitivity.select_layers).

    threshold: per-channel iff KL_PT - KL_PC > threshold (0 for accuracy, larger for speed).
    max_per_channel: at most this many per-channel layers, the most sensitive first (None: no cap).
    fully_connected_per_tensor: keep every FULLY_CONNECTED per-tensor (Hexagon, Vela need it).
    """

    threshold: float = 0.0
    max_per_channel: Optional[int] = None
    fully_connected_per_tensor: bool = False

    def __post_init__(self):
        try:
            th = float(self.threshold)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold={self.threshold!r} must be a number.") from None
        if not math.isfinite(th):
            raise ConfigError(f"threshold={self.threshold!r} must be a finite number.")
        object.__setattr__(self, "threshold", th)
        n = self.max_per_channel
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ConfigError(f"max_per_channel={n!r} must be an integer >= 0 (or None for no limit).")
        if not isinstance(self.fully_connected_per_tensor, bool):
            raise ConfigError(f"fully_connected_per_tensor={self.fully_connected_per_tensor!r} must be True or False.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HybridConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
