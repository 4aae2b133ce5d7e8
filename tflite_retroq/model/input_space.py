"""The one assumption a data-free tool must make: how the model's input relates to pixels.

Resolved in order: the user's spec; a Rescaling/Normalization front; the first BatchNorm's
running statistics; a guess from the logit spread (always reported as a guess).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple, Union

import numpy as np

from tflite_retroq.config import InputSpec, as_channels
from tflite_retroq.errors import InputSpecError
from tflite_retroq.io_utils import library_quiet
from tflite_retroq.model.batchnorm import bn_targets, bn_taps
from tflite_retroq.model.loading import _keras
from tflite_retroq.model.validation import model_inputs


@dataclasses.dataclass(frozen=True)
class InputSpace:
    """model_input = clip(offset + scale * z, lo, hi), z ~ N(0, 1) in the normalized space.

    Per channel. `source` says where it came from (user / detected layer / default).
    """

    offset: Tuple[float, ...]
    scale: Tuple[float, ...]
    lo: Optional[Tuple[float, ...]]
    hi: Optional[Tuple[float, ...]]
    source: str

    def __post_init__(self):
        for name in ("offset", "scale", "lo", "hi"):
            v = getattr(self, name)
            object.__setattr__(self, name, None if v is None else tuple(float(x) for x in v))

    def to_model_input(self, z: np.ndarray) -> np.ndarray:
        x = np.asarray(self.offset, np.float32) + np.asarray(self.scale, np.float32) * z
        if self.lo is not None:
            x = np.clip(x, np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32))
        return x.astype(np.float32)

    def z_bounds(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        if self.lo is None:
            return None, None
        off, sc = np.asarray(self.offset, np.float32), np.asarray(self.scale, np.float32)
        return (np.asarray(self.lo, np.float32) - off) / sc, (np.asarray(self.hi, np.float32) - off) / sc

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpace":
        """The space a dataset recorded (its metadata's `input_space`), to synthesize more images in it."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def _front_layers(model) -> List:
    """The preprocessing layers at the very start of the model (after the Input)."""
    keras = _keras()
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            out.append(layer)
            continue
        if isinstance(layer, keras.Model):  # a nested model: its own layers follow
            continue
        break
    return out


def _from_range(lo: np.ndarray, hi: np.ndarray, source: str) -> InputSpace:
    # +-2 sigma spans the valid range: most of the Gaussian stays inside the range.
    return InputSpace(tuple((lo + hi) / 2), tuple((hi - lo) / 4), tuple(lo), tuple(hi), source)


def resolve_input_space(model, spec: Optional[Union[InputSpec, InputSpace]] = None) -> InputSpace:
    """User spec first, then a Rescaling/Normalization front, then the first BatchNorm, then a clear guess.

    An InputSpace (already resolved, e.g. recorded by a dataset) is taken as it is.
    """
    if isinstance(spec, InputSpace):
        return spec
    channels = int(model_inputs(model)[0].shape[-1])
    spec = spec or InputSpec()
    if spec.mean is not None:
        mean = np.asarray(as_channels(spec.mean, channels, "input mean"))
        std = np.asarray(as_channels(spec.std, channels, "input std"))
        rng = spec.value_range or ((0.0, 1.0) if np.all(mean <= 1.0) else (0.0, 255.0))
        lo, hi = (rng[0] - mean) / std, (rng[1] - mean) / std
        return InputSpace((0.0,) * channels, (1.0,) * channels, tuple(lo), tuple(hi),
                          f"user: (pixel - mean) / std, pixel in [{rng[0]:g}, {rng[1]:g}]")
    if spec.value_range is not None:
        lo, hi = spec.value_range
        return _from_range(np.full(channels, lo, float), np.full(channels, hi, float), f"user: range [{lo:g}, {hi:g}]")
    return _detect(model, channels)


def _detect(model, channels: int) -> InputSpace:
    keras = _keras()
    front = _front_layers(model)
    ones = np.ones(channels)
    if not front:
        inferred = infer_input_space_from_bn(model, channels)
        if inferred is not None:
            return inferred
        return guess_input_space_from_outputs(model, channels)
    # Compose the front as an affine map post = a * x + b per channel.
    a, b, lo, hi = ones.copy(), np.zeros(channels), None, None
    norm_seen = False
    names = []
    for layer in front:
        names.append(type(layer).__name__)
        if isinstance(layer, keras.layers.Rescaling):
            s = np.broadcast_to(np.asarray(layer.scale, float), (channels,))
            o = np.broadcast_to(np.asarray(layer.offset, float), (channels,))
            if lo is None and not norm_seen and np.all(s > 0):
                # Rescaling(1/255) maps [0, 255] -> [0, 1]; Rescaling(1/127.5, -1) maps [0, 255] -> [-1, 1].
                lo = np.zeros(channels)
                hi = np.where(np.isclose(o, -1.0), 2.0, 1.0) / s
            a, b = a * s, b * s + o
        else:
            mean = np.broadcast_to(np.asarray(layer.mean, float).reshape(-1), (channels,))
            var = np.broadcast_to(np.asarray(layer.variance, float).reshape(-1), (channels,))
            std = np.sqrt(np.maximum(var, keras.backend.epsilon()))
            if getattr(layer, "invert", False):
                raise InputSpecError("The model starts with an inverted Normalization layer; pass --input-range "
                                     "or InputSpec(value_range=...) to describe its input.")
            a, b = a / std, (b - mean) / std
            norm_seen = True
    src = "detected: " + " + ".join(names)
    if not norm_seen:
        if lo is None:
            return InputSpace((0.0,) * channels, (1.0,) * channels, None, None, src + " (no range)")
        return _from_range(lo, hi, src)
    # post = a * x + b is the normalized space: z = post, x = (z - b) / a.
    return InputSpace(tuple(-b / a), tuple(1.0 / a), None if lo is None else tuple(lo),
                      None if hi is None else tuple(hi), src)


# Pixel conventions the BN inference may recognize, narrowest first.
_CONVENTIONS = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-128.0, 127.0))


def _first_bn_response(model, x: np.ndarray):
    """(BN layer, mean [N, C_out], values [N, pixels, C_out]) of the first BatchNorm's input."""
    with bn_taps(model) as taps, library_quiet():
        model(x, training=False)
        if not taps:
            return None
        layer, t = taps[0]
    # Whole images: zero padding at the border affects the probes exactly as it affected the
    # running statistics during training, so it cancels out of the fit.
    t = np.asarray(t, np.float64)
    flat = t.reshape(t.shape[0], -1, t.shape[-1])
    return layer, flat.mean(axis=1), flat


def infer_input_space_from_bn(model, channels: int) -> Optional["InputSpace"]:
    """The real input's per-channel mean and std, read from the first BatchNorm's running statistics.

    Valid when the first BatchNorm's input is an affine function of the image (conv is
    linear): its running mean is A @ mean + c, solved by least squares; its running
    variance is modelled as alpha * (sum of the filter)^2 + beta * ||filter||^2 (pixels
    fully correlated / independent), fitted non-negatively, so std^2 = alpha + beta. A
    standard pixel range (narrowest of [0,1], [-1,1], [0,255], [-128,127]) is adopted
    when the inferred distribution sits inside it. None when no such BatchNorm exists.
    """
    hw = tuple(int(d) for d in model.inputs[0].shape[1:3])
    eye = np.eye(channels)
    probes = [np.zeros(channels)] + [e for e in eye] + [-e for e in eye] + [np.ones(channels)]
    x = np.stack([np.broadcast_to(p, hw + (channels,)) for p in probes]).astype(np.float32)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((8,) + hw + (channels,)).astype(np.float32)
    got = _first_bn_response(model, np.concatenate([x, noise]))
    if got is None:
        return None
    layer, means, flat = got
    c0 = means[0]
    A = np.stack([means[1 + i] - c0 for i in range(channels)], axis=1)          # [C_out, C_in]
    A_neg = np.stack([means[1 + channels + i] - c0 for i in range(channels)], axis=1)
    scale = np.max(np.abs(A)) + 1e-12
    if not np.allclose(A_neg, -A, atol=1e-3 * scale, rtol=1e-3):
        return None  # not affine in the input (an activation before the first BatchNorm): cannot infer
    mu_r, sd_r = (np.asarray(a, np.float64) for a in bn_targets(layer))
    m, *_ = np.linalg.lstsq(A, mu_r - c0, rcond=None)
    # Variance basis per output channel: fully correlated pixels (a constant image) and independent pixels.
    corr = (means[1 + 2 * channels] - c0) ** 2
    iid = np.mean((flat[-8:] - c0[None, None, :]) ** 2, axis=(0, 1))
    var = sd_r ** 2 - float(layer.epsilon)
    B = np.stack([corr, iid], axis=1)
    coef = _nnls2(B, var)
    std = float(np.sqrt(max(coef.sum(), 0.0)))
    if not np.all(np.isfinite(m)) or not np.isfinite(std) or std <= 0:
        return None
    desc = (f"inferred from BatchNorm {layer.name!r} running statistics: input mean "
            f"{'/'.join(f'{v:.3g}' for v in m)}, std {std:.3g}")
    for lo, hi in _CONVENTIONS:
        w = hi - lo
        if np.all(m - std >= lo - 0.1 * w) and np.all(m + std <= hi + 0.1 * w) and 0.05 * w <= std <= 0.4 * w:
            return InputSpace(tuple(np.clip(m, lo, hi)), (std,) * channels, (lo,) * channels, (hi,) * channels,
                              f"{desc} -> pixels in [{lo:g}, {hi:g}]")
    return InputSpace(tuple(m), (std,) * channels, None, None, f"{desc} -> normalized input, no pixel range")


# A classifier trained with cross-entropy spreads its logits over a few units on inputs like
# its training data; fed inputs 255x too small or too large, the spread is off by orders of
# magnitude. Only the order of magnitude is used (log distance), so the exact value is not critical.
_TYPICAL_LOGIT_SPREAD = 3.0
# The guess is taken only when one convention fits within this factor of the typical spread and the
# runner-up is at least this factor further off. [0, 1], [-1, 1] and N(0, 1) differ in scale by 2-3.5x,
# so on a near-linear network they are never separated (the model must say, or the user); [0, 255] is.
_CLEAR_FACTOR = 4.0


def _candidate_label(rng_) -> str:
    return "N(0, 1)" if rng_ is None else f"[{rng_[0]:g}, {rng_[1]:g}]"


def guess_input_space_from_outputs(model, channels: int) -> "InputSpace":
    """No preprocessing layer, no BatchNorm: pick the pixel convention whose smooth test images give
    logits of a trained classifier's usual spread, only when the evidence clearly separates it from every
    other convention; otherwise refuse (InputSpecError naming the flags), never convert on a near-tie.
    An accepted guess is still reported as a guess (the caller warns)."""
    hw = tuple(int(d) for d in model.inputs[0].shape[1:3])
    rng = np.random.default_rng(0)
    low = rng.uniform(0.0, 1.0, (32, 4, 4, channels)).astype(np.float32)
    u = low[:, (np.arange(hw[0]) * 4) // hw[0]][:, :, (np.arange(hw[1]) * 4) // hw[1]]  # blocky "images" in [0, 1]
    cands = [(None, (u - 0.5) / 0.29)] + [((lo, hi), lo + (hi - lo) * u) for lo, hi in _CONVENTIONS[:3]]
    spreads = []
    for rng_, x in cands:
        with library_quiet():
            y = np.asarray(model(x.astype(np.float32), training=False), np.float64)
        if np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
            y = np.log(np.clip(y, 1e-30, 1.0))  # softmax output: back to logits up to a shift
        y = y - y.mean(axis=1, keepdims=True)
        spreads.append(float(np.median(y.std(axis=1))) + 1e-12)
    dist = np.array([abs(np.log(s / _TYPICAL_LOGIT_SPREAD)) for s in spreads])
    order = np.argsort(dist, kind="stable")
    best, second = int(order[0]), int(order[1])
    evidence = ", ".join(f"{_candidate_label(c[0])}: {s:.3g}" for c, s in zip(cands, spreads))
    clear = dist[best] <= np.log(_CLEAR_FACTOR) and dist[second] - dist[best] >= np.log(_CLEAR_FACTOR)
    if not clear:
        why = ("no convention gives it" if dist[best] > np.log(_CLEAR_FACTOR)
               else f"{_candidate_label(cands[best][0])} and {_candidate_label(cands[second][0])} both fit")
        raise InputSpecError(
            "Cannot tell the model's input space: it has no preprocessing layer and no BatchNorm to infer it from, "
            f"and the logit spread on smooth test images does not single out one pixel convention ({evidence}; "
            f"a trained classifier spreads about {_TYPICAL_LOGIT_SPREAD:g}: {why}). State it: --input-range LO,HI "
            "or --input-mean/--input-std (API: input_spec=InputSpec(value_range=... or mean=..., std=...)).")
    how = (f"guessed (no preprocessing layer, no BatchNorm to infer the input scale from) from the logit spread on "
           f"smooth test images ({evidence}; typical {_TYPICAL_LOGIT_SPREAD:g})")
    fix = "; pass --input-range LO,HI or --input-mean/--input-std to state it"
    if best == 0:
        return InputSpace((0.0,) * channels, (1.0,) * channels, None, None, f"{how} -> normalized N(0, 1){fix}")
    lo, hi = cands[best][0]
    return _from_range(np.full(channels, lo), np.full(channels, hi), f"{how} -> pixels in [{lo:g}, {hi:g}]{fix}")


def _nnls2(B: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares with two unknowns (closed form over the active sets)."""
    best, best_err = np.zeros(2), np.inf
    cands = [np.linalg.lstsq(B, y, rcond=None)[0]]
    for j in range(2):
        col = B[:, j]
        d = float(col @ col)
        c = np.zeros(2)
        c[j] = max(float(col @ y) / d, 0.0) if d > 0 else 0.0
        cands.append(c)
    for c in cands:
        if np.all(c >= 0):
            err = float(np.sum((B @ c - y) ** 2))
            if err < best_err:
                best, best_err = c, err
    return best
