"""Run a .tflite with the ai-edge-litert interpreter and compare it with the float model.

Metrics that need no labels (top-1 agreement, logit SQNR, KL) resolve much smaller
differences than accuracy on a thousand images, so they come with every result.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from tflite_retroq.errors import DataError, TFLiteModelError, one_line
from tflite_retroq.io_utils import library_quiet

_RESOLVERS = ("auto", "builtin", "reference")


def _interpreter(model_bytes: bytes, resolver: str, num_threads: Optional[int]):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kinds = {"auto": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "reference": OpResolverType.BUILTIN_REF}
    if resolver not in kinds:
        raise ValueError(f"resolver must be one of {_RESOLVERS}")
    try:
        with library_quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate" goes to fd 2
            return Interpreter(model_content=bytes(model_bytes), experimental_op_resolver_type=kinds[resolver],
                               num_threads=num_threads)
    except (ValueError, RuntimeError) as e:
        raise TFLiteModelError(f"The LiteRT interpreter rejected the model ({str(e).splitlines()[0][:200]}).") from None


def run_tflite(model_bytes: bytes, images: np.ndarray, *, batch_size: int = 64, resolver: str = "auto",
               num_threads: Optional[int] = None) -> np.ndarray:
    """Float outputs [N, classes] of the .tflite on float images in the model's input space.

    int8/uint8 inputs are quantized with the model's own input scale/zero point; such outputs
    are dequantized, so results compare directly with the Keras model.
    """
    images = _checked_images(images)
    from tflite_retroq.tflite.pack import refuse_packed
    refuse_packed(model_bytes)
    it = _interpreter(model_bytes, resolver, num_threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    if tuple(inp["shape"][1:]) != tuple(images.shape[1:]):
        raise DataError(f"Images of shape {images.shape[1:]} do not fit the .tflite input {tuple(inp['shape'][1:])}.")
    sig = inp.get("shape_signature")
    fixed = int(sig[0]) if sig is not None and len(sig) and int(sig[0]) > 0 else None
    if fixed is not None:  # a static-batch export takes exactly its batch: run in such batches, pad the last
        batch_size = fixed
        with library_quiet():  # XNNPACK announces itself where it takes the graph: here, or at the first invoke
            it.allocate_tensors()
    current = fixed
    results = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        n = len(x)
        if fixed is not None and n < fixed:
            x = np.concatenate([x, np.zeros((fixed - n,) + x.shape[1:], x.dtype)])
        if current != len(x):
            it.resize_tensor_input(inp["index"], [len(x)] + list(inp["shape"][1:]))
            with library_quiet():
                it.allocate_tensors()
            current = len(x)
        if inp["dtype"] in (np.int8, np.uint8):
            s, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / s) + zp, info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        if start == 0:
            with library_quiet():  # XNNPACK announces itself on the first invoke
                it.invoke()
        else:
            it.invoke()
        y = it.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            s, zp = out["quantization"]
            y = (y.astype(np.float32) - zp) * s
        results.append(np.asarray(y, np.float32).reshape(len(x), -1)[:n])
    return np.concatenate(results, axis=0)


def keras_outputs(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Float Keras outputs through one compiled function (eager calls were ~10x slower on ResNets).

    The last batch is zero-padded so a single traced shape serves every batch.
    """
    import tensorflow as tf

    from tflite_retroq.model.saved_model import compiles_with_xla
    fn = tf.function(lambda x: model(x, training=False), jit_compile=compiles_with_xla(model))
    images = np.asarray(images, np.float32)
    batch_size = min(batch_size, len(images))
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
        out.append(np.asarray(fn(x), np.float32)[:n])
    return np.concatenate(out, axis=0)


def reference_outputs(reference, images: np.ndarray) -> np.ndarray:
    """The float outputs to compare with: given as an array (or list) of outputs, or computed from the
    float model (a PreparedModel, a keras.Model or a model path) on `images`. Shape and finiteness are
    checked against the .tflite's outputs by `_checked_reference`."""
    if isinstance(reference, (np.ndarray, list, tuple)):
        try:
            return np.asarray(reference, np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"reference outputs must be a numeric [N, classes] array ({one_line(e, 100)}); pass "
                            "the float model's outputs on the same images, or the model itself.") from None
    if reference is None or isinstance(reference, (bool, int, float, bytes)):
        raise DataError(f"reference must be the float model (a keras.Model or its path) or its [N, classes] "
                        f"outputs on the same images, got {type(reference).__name__}.")
    from tflite_retroq.model.prepared import keras_model
    return keras_outputs(keras_model(reference), images)


def _checked_images(images) -> np.ndarray:
    """A non-empty, finite [N, H, W, C] float32 batch, else DataError (NaN would turn every metric into noise)."""
    try:
        x = np.asarray(images, np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"images must be a numeric [N, H, W, C] array ({one_line(e, 100)}).") from None
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"images must be a non-empty [N, H, W, C] array, got shape {x.shape}; pass at least "
                        "one image.")
    if not np.all(np.isfinite(x)):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise DataError(f"images contain NaN or inf ({bad} of {x.size} values); pass finite pixel values.")
    return x


def _checked_labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"labels must be {n} integer class indices (one per image), got {y.dtype} of shape "
                        f"{y.shape}; pass one label per image.")
    return y.astype(np.int64)


def _checked_reference(reference, outputs: np.ndarray) -> np.ndarray:
    r = np.asarray(reference, np.float64)
    if r.shape != outputs.shape:
        raise DataError(f"reference outputs have shape {r.shape} but the .tflite gives {outputs.shape} "
                        f"({outputs.shape[1]} classes for {outputs.shape[0]} images); pass the float model's "
                        "outputs on the same images, or the model itself.")
    if not np.all(np.isfinite(r)):
        raise DataError("reference outputs contain NaN or inf; check the float model on these images.")
    return r


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def to_probabilities(y: np.ndarray) -> np.ndarray:
    """Outputs that already are probabilities stay as they are (never softmax twice)."""
    if np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=2e-2):
        return y / y.sum(axis=1, keepdims=True)
    return _softmax(y)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(signal power / error power) of the outputs, in dB (inf when identical)."""
    noise = float(np.sum((reference.astype(np.float64) - test) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else float(10.0 * np.log10(signal / noise))


def mean_kl(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean KL(p_ref || p_test) over images."""
    p, q = to_probabilities(reference), to_probabilities(test)
    eps = 1e-12
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))


@dataclasses.dataclass(frozen=True)
class EvalResult:
    n: int
    accuracy: Optional[float]       # top-1 on labels, percent
    agreement: Optional[float]      # top-1 agreement with the reference, percent
    sqnr_db: Optional[float]
    kl: Optional[float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare(outputs: np.ndarray, labels: Optional[np.ndarray] = None, reference: Optional[np.ndarray] = None
            ) -> EvalResult:
    acc = None if labels is None else float(np.mean(np.argmax(outputs, 1) == _checked_labels(labels, len(outputs)))
                                            * 100.0)
    if reference is None:
        return EvalResult(len(outputs), acc, None, None, None)
    reference = _checked_reference(reference, outputs)
    agree = float(np.mean(np.argmax(outputs, 1) == np.argmax(reference, 1)) * 100.0)
    return EvalResult(len(outputs), acc, agree, sqnr_db(reference, outputs), mean_kl(reference, outputs))


def evaluate(model_bytes: bytes, images: np.ndarray, labels: Optional[np.ndarray] = None, *,
             reference=None, batch_size: int = 64, resolver: str = "auto") -> EvalResult:
    """Accuracy of a .tflite, and agreement / logit SQNR / KL against `reference`
    (a Keras model or its precomputed outputs on the same images)."""
    images = _checked_images(images)
    if labels is not None:
        _checked_labels(labels, len(images))  # before the interpreter runs
    outputs = run_tflite(model_bytes, images, batch_size=batch_size, resolver=resolver)
    if reference is not None:
        reference = reference_outputs(reference, images)
    return compare(outputs, labels, reference)
