"""Keras-side helpers: loading and validating a classifier, its input space,
BatchNorm taps for Algorithm 1, and BatchNorm folding.

Everything here works on Keras 3 functional and Sequential models, nested ones
included, and never changes the caller's model for longer than a `with` block.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import zipfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from tflite_retroq.config import InputSpec, as_channels
from tflite_retroq.errors import InputSpecError, ModelError


def _keras():
    import keras  # imported lazily: TensorFlow start-up is slow and the CLI parses flags first
    return keras


# ----------------------------------------------------------------------------- loading

def _shorten(text: str, limit: int = 240) -> str:
    """One line of at most `limit` characters, cut at a word boundary (never mid-word)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "..."


def _load_reason(error: Exception) -> str:
    """A Keras load error on one line, cut at a word (its first line alone is often only a preamble)."""
    text = " ".join(str(error).split())
    return _shorten(text) if text else type(error).__name__


def load_model(path: str):
    """Load a `.keras` (or legacy `.h5`) model with safe_mode=True: Lambda code never runs."""
    from tflite_retroq.io_utils import check_readable
    path = os.fspath(path)
    # Before Keras opens it: a FIFO would block forever, and an unreadable file is not "corrupt".
    check_readable(path, "Model file", ModelError, "pass a Keras model file saved with model.save('model.keras')")
    keras = _keras()
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ModelError(f"{path!r} is not a valid .keras archive (corrupt or truncated); save it again with model.save().")
    try:
        from tflite_retroq.io_utils import library_quiet
        with library_quiet():  # Keras 2 files warn about compile state; TF probes devices on first use
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except MemoryError:
        raise
    except Exception as e:  # Keras raises many types for a bad file
        model = _load_legacy(keras, path, e)
        if model is None:
            raise ModelError(f"{path!r} could not be loaded as a Keras model ({_load_reason(e)}); "
                             "save it with model.save('model.keras') and avoid Lambda layers.") from None
    return model


def _legacy_objects(keras) -> Dict[str, type]:
    """Keras 3 layers that accept the config keys Keras 2 wrote and Keras 3 no longer knows.

    Only known, harmless differences: `groups` on DepthwiseConv2D (always 1 in Keras 2,
    where depthwise has no grouping). The layers are otherwise the stock ones.
    """

    class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
        def __init__(self, *args, groups=1, **kwargs):
            if groups not in (1, None):
                raise ValueError(f"DepthwiseConv2D with groups={groups} has no Keras 3 equivalent")
            super().__init__(*args, **kwargs)

    return {"DepthwiseConv2D": DepthwiseConv2D}


def _load_legacy(keras, path: str, error: Exception):
    """A Keras 2 `.h5` whose only obstacle is a known config difference, still safe_mode=True."""
    if not path.endswith((".h5", ".hdf5")) or "groups" not in str(error):
        return None
    legacy = _legacy_objects(keras)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True, custom_objects=legacy)
        # Back to stock Keras 3 layers, so the model saves and reloads without our classes.
        stock = {cls: getattr(keras.layers, name) for name, cls in legacy.items()}
        clean = keras.models.clone_model(
            model, clone_function=lambda layer: stock.get(type(layer), type(layer)).from_config(layer.get_config()))
        clean.set_weights(model.get_weights())
    except Exception:
        return None
    return clean


def as_model(model_or_path):
    """Accept a keras.Model or a path to one; a mixed-precision model comes back as its float32 twin."""
    keras = _keras()
    if isinstance(model_or_path, (str, os.PathLike)):
        model_or_path = load_model(model_or_path)
    if not isinstance(model_or_path, keras.Model):
        raise ModelError(f"Expected a keras.Model or a model path, got {type(model_or_path).__name__}.")
    return float32_model(model_or_path)


def _policy_name(layer) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return str(getattr(policy, "name", policy if policy is not None else "float32"))


def _non_float32_layers(model) -> List:
    return [l for l in model._flatten_layers(include_self=False, recursive=True)
            if _policy_name(l) != "float32" and not isinstance(l, _keras().layers.InputLayer)]


def float32_model(model):
    """The same model computing in float32: a clone with every layer's dtype policy set to float32.

    Models saved under `mixed_float16` (or `float16` / `bfloat16`) compute in half precision:
    synthesis and TFLite calibration need float32 activations and gradients. The weights are
    copied (cast to float32), so the clone computes what the model computes, without the
    half-precision rounding. A model that is already float32 is returned as it is.
    Raises ModelError for a model Keras cannot clone (subclassed models).
    """
    keras = _keras()
    if not _non_float32_layers(model):
        return model

    def clone(layer):
        cfg = layer.get_config()
        cfg["dtype"] = "float32"
        return layer.__class__.from_config(cfg)

    try:
        new = keras.models.clone_model(model, clone_function=clone, recursive=True)
        weights = [np.asarray(w, np.float32) if np.asarray(w).dtype.kind == "f" else w for w in model.get_weights()]
        new.set_weights(weights)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for an unclonable model
        names = ", ".join(sorted({_policy_name(l) for l in _non_float32_layers(model)}))
        raise ModelError(f"The model computes in {names}, and its float32 copy could not be built "
                         f"({type(e).__name__}: {_shorten(e, 160)}); save it again under the float32 policy "
                         "(keras.mixed_precision.set_global_policy('float32') before building it).") from None
    if _non_float32_layers(new):
        names = ", ".join(sorted({_policy_name(l) for l in _non_float32_layers(new)}))
        raise ModelError(f"The model computes in {names} and could not be switched to float32; save it again "
                         "under the float32 policy (keras.mixed_precision.set_global_policy('float32')).")
    return new


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    input_shape: Tuple[int, int, int]  # H, W, C
    num_classes: int
    outputs_probabilities: bool
    num_bn: int


# Trained networks have weights of order 1; at this size squared activation statistics
# overflow float32 (max 3.4e38) and synthesis produces NaN.
_MAX_ABS_WEIGHT = 1e15


def _model_inputs(model):
    try:
        return model.inputs
    except (AttributeError, ValueError):
        # Keras: "Sequential model ... has no defined inputs yet" for an unbuilt Sequential model.
        raise ModelError(f"Model {model.name!r} was saved unbuilt, so its input shape is unknown: give the "
                         "Sequential model an input (keras.Input((H, W, C)) as its first layer, or call "
                         "model.build((None, H, W, C))) and save it again.") from None


def _check_weights(model) -> None:
    for w in model.weights:
        a = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        name = w.path if hasattr(w, "path") else w.name
        if a.dtype.kind != "f" or a.size == 0:
            continue
        if not np.all(np.isfinite(a)):
            raise ModelError(f"Weight {name} contains NaN or inf; fix or retrain the model before quantizing.")
        big = float(np.max(np.abs(a)))
        if big > _MAX_ABS_WEIGHT:
            raise ModelError(f"Weight {name} has values as large as {big:.3g}; float32 activations overflow "
                             "at that size (trained weights are of order 1). The model is corrupt or was not "
                             "trained: fix or retrain it before quantizing.")
    for bn in bn_layers(model):
        var = np.asarray(bn.moving_variance.numpy(), np.float64)
        if np.any(var < 0):
            ch = int(np.argmin(var))
            raise ModelError(f"BatchNormalization {bn.name!r} has a negative moving variance ({var[ch]:.3g} at "
                             f"channel {ch}); a variance cannot be negative, so the model is corrupt: fix it "
                             "(e.g. clip the moving variance at 0) or retrain it.")


def validate_classifier(model) -> ModelInfo:
    """Check the model is a single-input NHWC float image classifier with sane, finite weights."""
    inputs = _model_inputs(model)
    if len(inputs) != 1:
        raise ModelError(f"The model has {len(inputs)} inputs; tflite_retroq needs exactly one image input.")
    if len(model.outputs) != 1:
        raise ModelError(f"The model has {len(model.outputs)} outputs; tflite_retroq needs exactly one output of class scores.")
    in_shape = tuple(inputs[0].shape)
    if len(in_shape) != 4 or any(d is None for d in in_shape[1:]):
        raise ModelError(f"The model input has shape {in_shape}; an image classifier needs a fixed "
                         "(batch, height, width, channels) input. Build it with keras.Input((H, W, C)).")
    in_dtype = str(getattr(inputs[0], "dtype", "float32"))
    if not in_dtype.startswith(("float", "bfloat")):
        raise ModelError(f"The model input has dtype {in_dtype}; synthesized calibration images are float, so "
                         "the model must take a float32 input: rebuild it with keras.Input((H, W, C)) (float32; "
                         "keep any Rescaling layer) and copy the weights over.")
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2 or out_shape[1] is None or out_shape[1] < 2:
        raise ModelError(f"The model output has shape {out_shape}; a classifier must output rank-2 class "
                         "scores (batch, num_classes) with at least 2 classes.")
    out_dtype = str(getattr(model.outputs[0], "dtype", "float32"))
    if not out_dtype.startswith(("float", "bfloat")):
        raise ModelError(f"The model output has dtype {out_dtype} (class decisions, e.g. argmax); pass the model "
                         "that outputs class scores (logits or softmax probabilities) instead.")
    _check_weights(model)
    probs = _outputs_probabilities(model, in_shape[1:])
    return ModelInfo(tuple(int(d) for d in in_shape[1:]), int(out_shape[1]), probs, len(bn_layers(model)))


def _outputs_probabilities(model, hwc) -> bool:
    """Softmax output? Decide numerically so nested models and Activation layers both count.

    Also refuses outputs no calibration can use: NaN/inf, or exact class decisions
    (one-hot / argmax), which have no gradient for synthesis and no int8 kernel.
    """
    rng = np.random.default_rng(0)
    from tflite_retroq.io_utils import library_quiet
    with library_quiet():  # Keras input-name warnings; TF's device probing on the first op writes to fd 2
        y = np.asarray(model(rng.normal(size=(4,) + tuple(hwc)).astype(np.float32), training=False), np.float64)
    if not np.all(np.isfinite(y)):
        raise ModelError("The model outputs NaN or inf on random inputs; its weights overflow float32. Fix or "
                         "retrain the model before quantizing.")
    if np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
        raise ModelError("The model outputs one-hot class decisions (e.g. one_hot(argmax)), not class scores: "
                         "they have no gradient to synthesize from and no int8 kernel. Pass the model without "
                         "its final argmax / one-hot step (ending in logits or softmax).")
    return bool(np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-4))


# ----------------------------------------------------------------------------- input space

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


def resolve_input_space(model, spec: Optional[InputSpec] = None) -> InputSpace:
    """User spec first, then a Rescaling/Normalization front, else plain N(0, 1)."""
    channels = int(_model_inputs(model)[0].shape[-1])
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
    from tflite_retroq.io_utils import library_quiet
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


def guess_input_space_from_outputs(model, channels: int) -> "InputSpace":
    """No preprocessing layer, no BatchNorm: pick the pixel convention whose smooth test images give
    logits of a trained classifier's usual spread; always reported as a guess (the caller warns)."""
    hw = tuple(int(d) for d in model.inputs[0].shape[1:3])
    rng = np.random.default_rng(0)
    low = rng.uniform(0.0, 1.0, (32, 4, 4, channels)).astype(np.float32)
    u = low[:, (np.arange(hw[0]) * 4) // hw[0]][:, :, (np.arange(hw[1]) * 4) // hw[1]]  # blocky "images" in [0, 1]
    cands = [(None, (u - 0.5) / 0.29)] + [((lo, hi), lo + (hi - lo) * u) for lo, hi in _CONVENTIONS[:3]]
    spreads = []
    from tflite_retroq.io_utils import library_quiet
    for rng_, x in cands:
        with library_quiet():
            y = np.asarray(model(x.astype(np.float32), training=False), np.float64)
        if np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
            y = np.log(np.clip(y, 1e-30, 1.0))  # softmax output: back to logits up to a shift
        y = y - y.mean(axis=1, keepdims=True)
        spreads.append(float(np.median(y.std(axis=1))) + 1e-12)
    best = int(np.argmin([abs(np.log(s / _TYPICAL_LOGIT_SPREAD)) for s in spreads]))
    how = (f"guessed (no preprocessing layer, no BatchNorm to infer the input scale from) from the logit spread on "
           f"smooth test images: {spreads[best]:.3g} vs {spreads[0]:.3g} for N(0, 1)")
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


# ----------------------------------------------------------------------------- BatchNorm taps

def bn_layers(model) -> List:
    keras = _keras()
    return [l for l in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(l, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def bn_taps(model) -> Iterator[List]:
    """Record (bn_layer, input_tensor) for every BatchNorm call while the block runs.

    Works for nested models because it wraps the layer's own `call`; the caller
    reads the list inside the same tf.function trace, so the tensors are valid there.
    """
    taps: List = []
    layers = bn_layers(model)
    originals = []
    for layer in layers:
        orig = layer.call

        def tapped(self, inputs, *args, _orig=orig, **kwargs):
            taps.append((self, inputs))
            return _orig(inputs, *args, **kwargs)

        originals.append((layer, "call" in layer.__dict__, orig))
        object.__setattr__(layer, "call", types.MethodType(tapped, layer))
    try:
        yield taps
    finally:
        for layer, had_own, orig in originals:
            if had_own:
                object.__setattr__(layer, "call", orig)
            else:
                object.__delattr__(layer, "call")


def bn_targets(layer) -> Tuple[np.ndarray, np.ndarray]:
    """Running mean and running std (sqrt(var + eps)) of a BatchNorm layer."""
    mean = np.asarray(layer.moving_mean.numpy(), np.float32)
    std = np.sqrt(np.asarray(layer.moving_variance.numpy(), np.float32) + float(layer.epsilon))
    return mean, std


# ----------------------------------------------------------------------------- folding

_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def _bn_affine(bn) -> Tuple[np.ndarray, np.ndarray]:
    """BN(y) = s * y + t per channel (inference mode)."""
    mean, std = bn_targets(bn)
    gamma = bn.gamma.numpy() if bn.scale else np.ones_like(mean)
    beta = bn.beta.numpy() if bn.center else np.zeros_like(mean)
    s = gamma / std
    return s.astype(np.float32), (beta - mean * s).astype(np.float32)


def _fold_pairs(model) -> Dict[int, object]:
    """Map id(producer layer) -> BN layer for every Conv/Dense whose only consumer is a BN."""
    keras = _keras()
    pairs = {}
    for bn in bn_layers(model):
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        if len(bn._inbound_nodes) != 1 or axis not in (-1, len(bn._inbound_nodes[0].input_tensors[0].shape) - 1):
            continue
        parent = bn._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if type(parent).__name__ not in _FOLDABLE or not isinstance(parent, keras.layers.Layer):
            continue
        act = getattr(parent.activation, "__name__", "")
        if act != "linear" or len(parent._inbound_nodes) != 1 or len(parent._outbound_nodes) != 1:
            continue
        pairs[id(parent)] = bn
    return pairs


def fold_batchnorm(model):
    """An equivalent model without BatchNormalization layers.

    A BN right after a Conv2D / DepthwiseConv2D / Dense (linear activation, no other
    consumer) is folded into that layer's kernel and bias. Any other BN becomes a
    per-channel affine layer (a 1x1 DepthwiseConv2D, or a diagonal Dense on rank 2).
    """
    keras = _keras()
    pairs = _fold_pairs(model)
    folded_bns = {id(bn) for bn in pairs.values()}
    todo: List[Tuple[object, Callable[[object], None]]] = []

    def clone(layer):
        cfg = layer.get_config()
        if id(layer) in pairs:
            bn = pairs[id(layer)]
            s, t = _bn_affine(bn)
            w = layer.get_weights()
            k = w[0]
            b = w[1] if layer.use_bias else np.zeros(s.shape, np.float32)
            if type(layer).__name__ == "DepthwiseConv2D":
                k = k * s.reshape(k.shape[2], k.shape[3])
            else:
                k = k * s
            cfg["use_bias"] = True
            new = layer.__class__.from_config(cfg)
            todo.append((new, [k, b * s + t]))
            return new
        if id(layer) in folded_bns:
            return keras.layers.Identity(name=layer.name)
        if isinstance(layer, keras.layers.BatchNormalization):
            s, t = _bn_affine(layer)
            rank = len(layer._inbound_nodes[0].input_tensors[0].shape) if layer._inbound_nodes else 4
            if rank == 4:
                new = keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
                todo.append((new, [s.reshape(1, 1, -1, 1), t]))
            elif rank == 2:
                new = keras.layers.Dense(s.shape[0], name=layer.name)
                todo.append((new, [np.diag(s), t]))
            else:
                raise ModelError(f"BatchNormalization {layer.name!r} on a rank-{rank} tensor cannot be folded; "
                                 "only rank-2 and rank-4 inputs are supported.")
            return new
        new = layer.__class__.from_config(cfg)
        if layer.weights:
            todo.append((new, layer.get_weights()))
        return new

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.Identity):
            return args[0]
        if not getattr(layer, "_call_has_mask_arg", True):
            kwargs.pop("mask", None)  # a BN replaced by an affine layer takes no mask
        return layer(*args, **kwargs)

    is_seq = isinstance(model, keras.Sequential)
    try:
        new_model = keras.models.clone_model(model, clone_function=clone, recursive=True,
                                             **({} if is_seq else {"call_function": call}))
    except Exception as e:
        raise ModelError(f"BatchNorm folding failed for model {model.name!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); only Functional and Sequential models are supported.") from None
    for new, weights in todo:
        new.set_weights(weights)
    return new_model
