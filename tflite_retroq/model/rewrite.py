"""Keras-model rewrites that let TFLite quantize every op to int8, applied before conversion.

Keras' `LayerNormalization` computes `x * inv + (-mean * inv + beta)`; TFLite has no int8
NEG, so the converter leaves that negation in float between DEQUANTIZE and QUANTIZE
(an int8-only delegate, Vela or TFLite Micro cannot run the file). The same function as
`(x - mean) * rsqrt(var + eps) * gamma + beta` is MEAN, SUB, MUL (square), MEAN, ADD,
RSQRT, MUL, MUL, ADD: every one of them has an int8 kernel. The rewritten model computes
what the original computes (equal in float up to rounding, checked by the tests).
"""
from __future__ import annotations

from tflite_retroq.errors import ModelError, one_line


def _keras():
    import keras
    return keras


def _centered_layer_norm_class():
    """A LayerNormalization that subtracts the mean instead of adding its negation (same weights, same config)."""
    keras = _keras()
    ops = keras.ops

    class CenteredLayerNormalization(keras.layers.LayerNormalization):
        def call(self, inputs):
            x = ops.cast(inputs, "float32")
            axes = list(self.axis)
            ndims = len(x.shape)
            shape = [1] * ndims
            for a in axes:
                shape[a] = x.shape[a]
            mean = ops.mean(x, axis=axes, keepdims=True)
            centered = ops.subtract(x, mean)
            var = ops.mean(ops.multiply(centered, centered), axis=axes, keepdims=True)
            out = ops.multiply(centered, ops.rsqrt(ops.add(var, self.epsilon)))
            if self.gamma is not None:
                out = ops.multiply(out, ops.reshape(self.gamma, shape))
            if self.beta is not None:
                out = ops.add(out, ops.reshape(self.beta, shape))
            return ops.cast(out, self.compute_dtype)

    return CenteredLayerNormalization


def _needs_rewrite(layer) -> bool:
    keras = _keras()
    return (isinstance(layer, keras.layers.LayerNormalization)
            and not getattr(layer, "rms_scaling", False)  # x * rsqrt(var): no negation, already int8
            and type(layer).call is keras.layers.LayerNormalization.call)  # a user subclass keeps its own maths


def layers_to_rewrite(model) -> list:
    """The layers (at any depth) that `int8_friendly` replaces."""
    return [l for l in model._flatten_layers(include_self=False, recursive=True) if _needs_rewrite(l)]


def int8_friendly(model):
    """The model with every stock LayerNormalization replaced by its centered twin; the model itself if none.

    The clone shares nothing with the input model (weights are copied), so the user's model is untouched.
    Raises ModelError when the model has such layers but Keras cannot clone it (a subclassed model).
    """
    if not layers_to_rewrite(model):
        return model
    keras = _keras()
    centered = _centered_layer_norm_class()

    def clone(layer):
        cls = centered if _needs_rewrite(layer) else type(layer)
        return cls.from_config(layer.get_config())

    try:
        new = keras.models.clone_model(model, clone_function=clone, recursive=True)
        new.set_weights(model.get_weights())
    except Exception as e:  # noqa: BLE001 - Keras raises many types for an unclonable model
        raise ModelError(f"The model's LayerNormalization layers must be rewritten for int8 (TFLite has no int8 "
                         f"NEG), but Keras could not clone the model ({type(e).__name__}: {one_line(e, 160)}); "
                         "build it as a functional or Sequential model.") from None
    return new
