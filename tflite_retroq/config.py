"""Frozen configuration dataclasses, JSON round-trippable.

Configs are values: they are validated on construction so a bad option fails
before any expensive work starts, and they are stored inside every dataset and
report so results can be reproduced.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import ClassVar, Optional, Sequence, Tuple

from tflite_retroq.errors import ConfigError, InputSpecError


class SynthesisMode(str, enum.Enum):
    RETRO = "retro"        # BN statistics + Gaussian prior + class loss (the paper)
    ZEROQ = "zeroq"        # BN statistics + Gaussian prior, no class loss
    GAUSSIAN = "gaussian"  # plain N(0, 1) in the normalized input space, no optimization


class Scheme(str, enum.Enum):
    """Weight quantization scheme.

    HYBRID is the paper's name: per-tensor, with the layers that need it per-channel
    (methods/sensitivity.py). It is NOT TFLite's "hybrid" (dynamic-range: int8 weights, float
    activations); every scheme here is full-integer. "mixed-channel" (Scheme.MIXED) is the
    same scheme under a name without that clash.
    """

    PER_CHANNEL = "per-channel"
    PER_TENSOR = "per-tensor"
    HYBRID = "hybrid"
    MIXED = "hybrid"  # alias of HYBRID; the string "mixed-channel" is accepted too

    @classmethod
    def _missing_(cls, value):
        return cls.HYBRID if value == "mixed-channel" else None


class IOType(str, enum.Enum):
    """Model input/output type. UINT8: TFLite's inference_input_type=uint8 (a QUANTIZE at each end:
    the int8 model's values shifted by 128, same scale)."""

    INT8 = "int8"
    FLOAT = "float"
    UINT8 = "uint8"


def _enum(cls, value, name):
    try:
        return cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls) + (" (or 'mixed-channel')" if cls is Scheme else "")
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {choices}.") from None


_MAX_IMAGES = 10_000_000  # far past any calibration need; refuses absurd counts before arithmetic overflows


def _count(value, name: str, minimum: int = 1, maximum: int = _MAX_IMAGES) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value > maximum:
        raise ConfigError(f"{name}={value!r} must be an integer from {minimum} to {maximum}.")


def check_count(value, name: str, minimum: int = 1, maximum: int = _MAX_IMAGES) -> int:
    """A whole number in range (2.5, '8' and True refused: ConfigError), returned as it is."""
    _count(value, name, minimum, maximum)
    return value


def check_bools(**values) -> None:
    """Refuse a non-bool where a switch is meant: 'no' or 0.0 would otherwise silently read as a choice."""
    for name, value in values.items():
        if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy's bool too
            raise ConfigError(f"{name}={value!r} must be True or False (got {type(value).__name__}).")


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """Algorithm 1 knobs. Defaults were chosen by measurement across models (see README, benchmarks).

    The image count is a total budget (`images`), spread over the classes and generated in
    mini-batches of `batch_size` (None: chosen from the model's activation memory against a
    fixed reference budget). `samples_per_class` is the balanced per-class form instead of
    `images`; give at most one of the two. Default work is planned from the model's forward
    FLOPs (WORK_FLOPS), so the same config gives the same images everywhere; `time_budget`
    (seconds, off by default) instead cuts the defaults to what this machine does in that time.
    """

    mode: SynthesisMode = SynthesisMode.RETRO
    images: Optional[int] = None
    samples_per_class: Optional[int] = None
    batch_size: Optional[int] = None
    iterations: Optional[int] = None
    time_budget: Optional[float] = None
    learning_rate: float = 0.1
    bn_weight: float = 1.0
    prior_weight: float = 1.0
    class_weight: float = 1.0
    # Smoothness prior (total variation of the normalized image); None: on (AUTO_SMOOTH) for models with attention
    # layers, off otherwise (synthesis.smooth_weight_for).
    smooth_weight: Optional[float] = None
    # As confident as a trained classifier on its training images: the loss it was trained with (cross-entropy on
    # its class, one-hot targets), held back by the BatchNorm statistics where it has them. Softer targets
    # (an MSE towards p = 0.9-0.99) left the logits at 0.3-0.8x the real range and ResNet-20 below plain noise
    # (benchmarks/results/zoo_models.md, "before").
    class_loss: str = "ce"
    target_confidence: Tuple[float, float] = (1.0, 1.0)
    seed: int = 0

    DEFAULT_IMAGES: ClassVar[int] = 256
    DEFAULT_ITERATIONS: ClassVar[int] = 100
    MIN_IMAGES: ClassVar[int] = 64      # the work plan (or a time budget) never cuts defaults below these
    MIN_ITERATIONS: ClassVar[int] = 20
    # Default work: image-iterations x forward FLOPs per image at most this (synthesis.plan_work). A count,
    # not a clock: ResNet-20 (82 MFLOP) gets 96 images x 20 iterations, a 25 MFLOP ResNet-8 256 x 30.
    WORK_FLOPS: ClassVar[int] = 200_000_000_000
    MAX_AUTO_BATCH: ClassVar[int] = 128
    # Attention compares image patches with each other; on noise-like patches its ranges are unlike real ones
    # (PSAQ-ViT's observation). A smoothness prior of this weight brought a tiny ViT from 12.1 to 16.8 dB and a
    # conv+attention model from 19.8 to 28.3 dB (real images: 16.7, 20.4); it cost a BN-free VGG 12 dB at 1.0,
    # so it stays off where there is no attention (benchmarks/results/zoo_models.md).
    AUTO_SMOOTH: ClassVar[float] = 0.3
    # Default iterations stop on a plateau of the loss (synthesis.plateaued): every PLATEAU_WINDOW iterations,
    # once the last window's mean loss improves on the previous one's by less than PLATEAU_TOL.
    PLATEAU_WINDOW: ClassVar[int] = 10
    PLATEAU_TOL: ClassVar[float] = 0.02

    def __post_init__(self):
        object.__setattr__(self, "mode", _enum(SynthesisMode, self.mode, "mode"))
        if self.images is not None and self.samples_per_class is not None:
            raise ConfigError("Give images (a total budget) or samples_per_class (balanced per class), not both.")
        for name in ("images", "samples_per_class", "batch_size"):
            if getattr(self, name) is not None:
                _count(getattr(self, name), name)
        if self.iterations is not None:
            _count(self.iterations, "iterations", 0, 1_000_000)
        if self.time_budget is not None:
            try:
                tb = float(self.time_budget)
            except (TypeError, ValueError):
                raise ConfigError(f"time_budget={self.time_budget!r} must be seconds (a number) or None.") from None
            if not math.isfinite(tb) or tb <= 0:
                raise ConfigError(f"time_budget={self.time_budget!r} must be a positive number of seconds or None.")
            object.__setattr__(self, "time_budget", tb)
        for name in ("learning_rate", "bn_weight", "prior_weight", "class_weight", "smooth_weight"):
            v = getattr(self, name)
            if v is None and name == "smooth_weight":
                continue
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{name}={v!r} must be a number.") from None
            if not math.isfinite(fv) or fv < 0 or (name == "learning_rate" and fv == 0):
                raise ConfigError(f"{name}={v!r} must be a finite number >= 0"
                                  f"{' and > 0' if name == 'learning_rate' else ''}.")
            object.__setattr__(self, name, fv)
        if self.class_loss not in ("mse", "ce"):
            raise ConfigError(f"class_loss={self.class_loss!r} is not valid; choose 'mse' or 'ce'.")
        try:
            lo, hi = (float(x) for x in self.target_confidence)
        except (TypeError, ValueError):
            raise ConfigError(f"target_confidence={self.target_confidence!r} must be two numbers LO, HI.") from None
        if not 0.5 < lo <= hi <= 1.0:
            raise ConfigError(f"target_confidence={self.target_confidence!r} must satisfy 0.5 < LO <= HI <= 1.")
        object.__setattr__(self, "target_confidence", (lo, hi))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed={self.seed!r} must be an integer.")

    @property
    def iterations_or_default(self) -> int:
        return self.DEFAULT_ITERATIONS if self.iterations is None else self.iterations

    def total_images(self, num_classes: int) -> int:
        """How many images this config asks for on a model with `num_classes` classes."""
        if self.samples_per_class is not None:
            n = self.samples_per_class * num_classes
            if n > _MAX_IMAGES:
                raise ConfigError(f"{self.samples_per_class} images per class (--samples) x {num_classes} classes = "
                                  f"{n} images, more than {_MAX_IMAGES}; lower --samples or give a total budget "
                                  "with --images.")
            return n
        return self.images if self.images is not None else self.DEFAULT_IMAGES

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mode"] = self.mode.value
        d["target_confidence"] = list(self.target_confidence)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SynthesisConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "target_confidence" in kw:
            kw["target_confidence"] = tuple(kw["target_confidence"])
        return cls(**kw)


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
