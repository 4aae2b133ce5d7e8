"""BatchNorm: taps on every BN input for Algorithm 1, and folding into the preceding layer.

Works on Keras 3 functional and Sequential models, nested ones included, and never changes
the caller's model for longer than a `with` block.
"""
from __future__ import annotations

import contextlib
import types
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np

from tflite_retroq.errors import ModelError
from tflite_retroq.model.loading import _keras


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
    if not isinstance(model, keras.Model):
        raise ModelError(f"fold_batchnorm takes a loaded Keras model, got {type(model).__name__}"
                         + (f" {model!r}; load it first with tflite_retroq.load_model({model!r})."
                            if isinstance(model, str) else "; pass a keras.Model."))
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
