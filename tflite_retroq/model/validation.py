"""Is this a model we can quantize? A single-input NHWC float image classifier with sane weights."""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from tflite_retroq.errors import ModelError
from tflite_retroq.io_utils import library_quiet
from tflite_retroq.model.batchnorm import bn_layers


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    input_shape: Tuple[int, int, int]  # H, W, C
    num_classes: int
    outputs_probabilities: bool
    num_bn: int


# Trained networks have weights of order 1; at this size squared activation statistics
# overflow float32 (max 3.4e38) and synthesis produces NaN.
_MAX_ABS_WEIGHT = 1e15


def model_inputs(model):
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
    inputs = model_inputs(model)
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


def has_attention(model) -> bool:
    """Whether any layer (at any depth) is a Keras attention layer."""
    import keras
    kinds = (keras.layers.MultiHeadAttention, keras.layers.Attention, keras.layers.AdditiveAttention)
    return any(isinstance(l, kinds) for l in model._flatten_layers(include_self=False, recursive=True))
