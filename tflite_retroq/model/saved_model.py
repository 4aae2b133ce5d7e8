"""A SavedModel directory (Keras `model.export(dir)`, `tf.saved_model.save`) as a Keras model.

The serving signature becomes a `keras.layers.TFSMLayer` behind a `keras.Input`: a Keras
model whose output is differentiable with respect to its input, so synthesis (class loss,
input prior) and the converter take one path for every kind of input. The graph keeps no
Keras layers, so there is nothing to match BatchNorm statistics to, nor a LayerNormalization
to rewrite: synthesis runs without the BN term (as on a BN-free model) and an op without an
int8 kernel stays float (refused unless allow_float_ops).
"""
from __future__ import annotations

import os

from tflite_retroq.errors import ModelError, one_line
from tflite_retroq.io_utils import library_quiet

_HINT = "export it with model.export(DIR) (Keras 3) or tf.saved_model.save(model, DIR)"


def is_saved_model_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


def check_saved_model_dir(path: str) -> str:
    """Cheap check before TensorFlow loads: a directory must hold saved_model.pb."""
    if not is_saved_model_dir(path):
        raise ModelError(f"Model directory {path!r} holds no saved_model.pb, so it is not a SavedModel; pass a "
                         f".keras file or a SavedModel directory ({_HINT}).")
    return path


def _signature(loaded, path: str):
    sigs = dict(loaded.signatures)
    if "serving_default" in sigs:
        return "serving_default", sigs["serving_default"]
    if len(sigs) == 1:
        return next(iter(sigs.items()))
    names = ", ".join(sorted(sigs)) or "none"
    raise ModelError(f"SavedModel {path!r} has {len(sigs)} signatures ({names}) and no 'serving_default'; "
                     f"{_HINT}, which writes one serving signature.")


def load_saved_model(path: str):
    """The SavedModel's serving signature wrapped as a single-input, single-output keras.Model."""
    import keras
    import tensorflow as tf
    check_saved_model_dir(path)
    try:
        with library_quiet():
            loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many types for a bad SavedModel
        raise ModelError(f"SavedModel {path!r} could not be loaded ({type(e).__name__}: {one_line(e, 200)}); "
                         f"{_HINT}.") from None
    name, fn = _signature(loaded, path)
    inputs = fn.structured_input_signature[1]
    outputs = fn.structured_outputs
    if len(inputs) != 1 or fn.structured_input_signature[0]:
        raise ModelError(f"SavedModel {path!r} signature {name!r} takes {len(inputs)} named inputs "
                         f"({', '.join(sorted(inputs))}); tflite_retroq needs exactly one image input.")
    if not isinstance(outputs, dict) or len(outputs) != 1:
        count = len(outputs) if isinstance(outputs, dict) else "non-dict"
        raise ModelError(f"SavedModel {path!r} signature {name!r} has {count} outputs; tflite_retroq needs exactly "
                         "one output of class scores.")
    (in_name, spec), = inputs.items()
    out_name = next(iter(outputs))
    shape = tuple(spec.shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ModelError(f"SavedModel {path!r} input {in_name!r} has shape {shape}; an image classifier needs a "
                         "fixed (batch, height, width, channels) input: export the model built with "
                         "keras.Input((H, W, C)).")
    if not spec.dtype.is_floating:
        raise ModelError(f"SavedModel {path!r} input {in_name!r} has dtype {spec.dtype.name}; synthesized "
                         "calibration images are float, so the signature must take float32 input.")
    del loaded
    with library_quiet():
        layer = keras.layers.TFSMLayer(path, call_endpoint=name, trainable=False, name="saved_model")
        inp = keras.Input(shape[1:], name=in_name, dtype=spec.dtype.name)
        out = layer(inp)
        out = out[out_name] if isinstance(out, dict) else out
        base = os.path.basename(os.path.normpath(path)) or "saved_model"
        return keras.Model(inp, out, name="".join(c if c.isalnum() or c in "_-" else "_" for c in base))


def compiles_with_xla(model) -> bool:
    """False for a model wrapping a SavedModel: XLA constant-folds through the restored graph, so a synthesis
    that takes 6 s without it took 219 s with it (tiny CNN, measured); everything else compiles faster."""
    import keras
    return not any(isinstance(l, keras.layers.TFSMLayer) for l in model._flatten_layers(include_self=False,
                                                                                        recursive=True))
