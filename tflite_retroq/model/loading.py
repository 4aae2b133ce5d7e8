"""Loading a user's model safely: `.keras`, legacy Keras 2 `.h5`, SavedModel, mixed precision -> float32.

Lambda code never runs (safe_mode=True); a model computing in half precision comes back
as its float32 twin, because synthesis and calibration need float32 gradients and ranges.
"""
from __future__ import annotations

import os
import re
import zipfile
from typing import Dict, List

import numpy as np

from tflite_retroq.errors import ModelError, one_line
from tflite_retroq.io_utils import check_readable, library_quiet


def _keras():
    import keras  # imported lazily: TensorFlow start-up is slow and the CLI parses flags first
    return keras


def _load_reason(error: Exception) -> str:
    """A Keras load error on one line, cut at a word (its first line alone is often only a preamble)."""
    text = " ".join(str(error).split())
    return one_line(text) if text else type(error).__name__


def load_model(path: str):
    """Load a `.keras` (or legacy `.h5`) model with safe_mode=True: Lambda code never runs.

    A directory is read as a SavedModel (model/saved_model.py): its serving signature as a Keras model.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from tflite_retroq.model.saved_model import load_saved_model
        return load_saved_model(path)
    # Before Keras opens it: a FIFO would block forever, and an unreadable file is not "corrupt".
    check_readable(path, "Model file", ModelError, "pass a Keras model file saved with model.save('model.keras')")
    keras = _keras()
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ModelError(f"{path!r} is not a valid .keras archive (corrupt or truncated); save it again with model.save().")
    try:
        with library_quiet():  # Keras 2 files warn about compile state; TF probes devices on first use
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except MemoryError:
        raise
    except Exception as e:  # Keras raises many types for a bad file
        model = _load_legacy(keras, path, e)
        if model is None:
            missing = re.search(r"Could not locate (?:class|function) '([^']+)'", str(e))
            if missing:  # the real cause sits deep in Keras's message, behind a generic preamble
                raise ModelError(f"{path!r} uses the custom class {missing.group(1)!r}, which is not registered in "
                                 "this process; in Python, import the module that defines it (decorated with "
                                 "@keras.saving.register_keras_serializable()) before loading, or rebuild the "
                                 "model from built-in Keras layers for the command line.") from None
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
                         f"({type(e).__name__}: {one_line(e, 160)}); save it again under the float32 policy "
                         "(keras.mixed_precision.set_global_policy('float32') before building it).") from None
    if _non_float32_layers(new):
        names = ", ".join(sorted({_policy_name(l) for l in _non_float32_layers(new)}))
        raise ModelError(f"The model computes in {names} and could not be switched to float32; save it again "
                         "under the float32 policy (keras.mixed_precision.set_global_policy('float32')).")
    return new
