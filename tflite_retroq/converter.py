"""The only module that touches tf.lite.TFLiteConverter.

Calibrate once (a float model with activation ranges recorded), then quantize as
many ways as wanted from that one calibration: per-channel and per-tensor share
every activation scale, so they differ in weights alone.
"""
from __future__ import annotations

import contextlib
import io
from typing import Callable, Iterator, List, Optional, Union

import numpy as np

from tflite_retroq.config import IOType, QuantizationConfig, Scheme, check_bools
from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.errors import (ConfigError, DataError, OutOfMemoryError, QuantizationError, RetroQError,
                                  is_out_of_memory, one_line)
from tflite_retroq.model.prepared import keras_model, prepare
from tflite_retroq.model.rewrite import int8_friendly
from tflite_retroq.tflite.model import verify

RepresentativeData = Union[SyntheticDataset, np.ndarray, Callable[[], Iterator[List[np.ndarray]]]]


@contextlib.contextmanager
def _quiet():
    """The converter prints a SavedModel summary to stdout, INFO logs and native chatter
    (`fully_quantize: 0, ...`) to fd 2; keep the API as quiet as the CLI."""
    from absl import logging as absl_logging
    from tflite_retroq.io_utils import library_quiet
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), library_quiet():
            yield
    finally:
        absl_logging.set_verbosity(level)


def _as_generator(data: RepresentativeData, input_shape) -> Callable[[], Iterator[List[np.ndarray]]]:
    if isinstance(data, np.ndarray):
        data = SyntheticDataset.from_images(data)
    if isinstance(data, SyntheticDataset):
        data.check_fits(input_shape)
        return data.representative_dataset()
    if callable(data):
        return data
    raise DataError(f"Calibration data must be a SyntheticDataset, an image array or a generator function, "
                    f"got {type(data).__name__}.")


def _keras_converter(model):
    import tensorflow as tf
    with _quiet():
        return tf.lite.TFLiteConverter.from_keras_model(model)


LOGIT_RANGE_MODES = ("auto", "reachable", "calibrated")


def calibrate(model, data: RepresentativeData, *, logit_range: str = "auto", return_info: bool = False,
              batch_size: Optional[int] = None, converter=None):
    """Float .tflite with BN folded and activation min/max recorded from `data`.

    `logit_range`: "reachable" widens the logits' range to what the classifier can reach over
    the feature ranges seen in `data` (synthetic images are never as confident as real ones,
    so min/max clips the deciding logit; see tflite/ranges.py); "calibrated" keeps min/max;
    "auto" widens for gaussian and zeroq data only (retro data needs nothing beyond plain
    calibration, so the converter hook gives the same model). With return_info, returns (bytes, LogitRange|None).
    `batch_size` fixes the batch dimension (static-shape export, see static_shape.py).
    `converter`: the user's own TFLiteConverter for this model (RetroQConverter), run in calibrate-only
    mode instead of a fresh one; a fresh one is made where the model needs a rewrite or a fixed batch.
    """
    import tensorflow as tf
    from tflite_retroq.static_shape import check_batch_size, fixed_batch_model, fixed_batches, fold_batch_reshapes
    from tflite_retroq.tflite.ranges import widen_logit_range
    if logit_range not in LOGIT_RANGE_MODES:
        raise ConfigError(f"logit_range={logit_range!r} is not valid; choose one of {', '.join(LOGIT_RANGE_MODES)}.")
    batch_size = check_batch_size(batch_size)
    prepared = prepare(model)  # a PreparedModel (from convert) passes through: no reload, no revalidation
    info = prepared.info
    # LayerNormalization without NEG, which has no int8 kernel (model/rewrite.py)
    friendly = int8_friendly(prepared.model)
    gen = _as_generator(data, info.input_shape)
    if batch_size is not None:
        friendly, gen = fixed_batch_model(friendly, batch_size), fixed_batches(gen, batch_size)
    # The user's own converter runs where it converts exactly this model; else a fresh one (same result)
    own = (converter is not None and friendly is prepared.model
           and getattr(converter, "_keras_model", None) is friendly)
    conv = converter if own else _keras_converter(friendly)
    saved = {k: getattr(conv, k, None) for k in _CALIBRATION_SETTINGS}
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv._experimental_calibrate_only = True
    try:
        with _quiet():
            calibrated = bytes(conv.convert())
    except RetroQError:
        raise
    except Exception as e:
        if is_out_of_memory(e):
            raise OutOfMemoryError("Out of memory while calibrating with TFLite; lower the number of calibration "
                                   "images.") from None
        raise RetroQError(f"TFLite calibration failed ({type(e).__name__}: {_converter_reason(e)}); "
                          "the model may use an operator TFLite cannot convert.") from None
    finally:
        if own:  # the user's converter is theirs again, as they configured it
            for k, v in saved.items():
                setattr(conv, k, v)
    if batch_size is None:  # dynamic batch without SHAPE/STRIDED_SLICE/PACK around Flatten (NPU-friendly)
        calibrated = fold_batch_reshapes(calibrated)
    # Retro data carries real-like ranges by itself (confident targets: benchmarks/results/zoo_models.md), so it
    # gets plain min/max calibration: the converter hook (`rq.representative_dataset`) gives the same model.
    # Gaussian and zeroq images are pushed towards no class at all; only they get the logits-range pass.
    synthetic = isinstance(data, SyntheticDataset) and data.mode in ("gaussian", "zeroq")
    widened = None
    if logit_range == "reachable" or (logit_range == "auto" and synthetic):
        images = data.images if isinstance(data, SyntheticDataset) else _images_of(data, info.input_shape)
        calibrated, widened = widen_logit_range(calibrated, images)
    return (calibrated, widened) if return_info else calibrated


_CALIBRATION_SETTINGS = ("optimizations", "representative_dataset", "_experimental_calibrate_only")


def _images_of(data: RepresentativeData, input_shape) -> np.ndarray:
    """The calibration images behind an array or a generator function (for the logit-range pass)."""
    if isinstance(data, np.ndarray):
        return data.astype(np.float32)
    return np.concatenate([np.asarray(batch[0], np.float32).reshape((-1,) + tuple(input_shape)) for batch in data()])


def _converter_reason(error: Exception) -> str:
    """The converter's own diagnosis (MLIR's `error: ...` line), not a fragment of its IR dump, cut at a word."""
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    for line in lines:
        if "error:" in line:
            return one_line(line.split("error:", 1)[1], 300)
    return one_line(lines[0], 300) if lines else "no details"


def quantize_calibrated(calibrated: bytes, scheme: Union[str, Scheme] = Scheme.PER_CHANNEL,
                        io: Union[str, IOType] = IOType.INT8, *, allow_float_ops: bool = False) -> bytes:
    """Full-integer int8 model from a calibrated float model (see `calibrate`).

    An op TFLite cannot quantize stays float between DEQUANTIZE and QUANTIZE; that is refused
    unless `allow_float_ops` (int8-only accelerators cannot run it: tflite.inspect.float_ops).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert
    cfg = QuantizationConfig(scheme=scheme, io=io)
    check_bools(allow_float_ops=allow_float_ops)
    calibrated = verify(calibrated, "The calibrated model")  # the converter would crash on bad bytes
    if cfg.scheme == Scheme.HYBRID:
        raise ConfigError("scheme='hybrid' needs the Keras model and images for its sensitivity analysis; "
                          "use convert(model, data, scheme='hybrid', calibrated=...).")
    io_type = tf.int8 if cfg.io == IOType.INT8 else tf.float32
    with _quiet():
        # fully_quantize=False as TFLiteConverter does: the I/O types then follow
        # input/output_data_type (fully_quantize=True forces int8 I/O even for io='float').
        out = tfl_convert.mlir_quantize(calibrated, disable_per_channel=cfg.scheme == Scheme.PER_TENSOR,
                                        fully_quantize=False, input_data_type=io_type, output_data_type=io_type)
        if cfg.io == IOType.UINT8:  # as TFLiteConverter does for inference_input/output_type=tf.uint8
            from tensorflow.lite.python.util import modify_model_io_type
            out = modify_model_io_type(bytes(out), tf.uint8, tf.uint8)
    out = bytes(out)
    if not allow_float_ops:
        _check_fully_integer(out)
    return out


def _check_fully_integer(model_bytes: bytes) -> None:
    """Refuse a result in which some op still computes in float (it would not run on an int8-only delegate)."""
    from tflite_retroq.tflite.inspect import float_ops
    found = float_ops(model_bytes)
    if found:
        raise QuantizationError(f"Operator{'s' if len(found) > 1 else ''} {', '.join(found)} could not be quantized "
                                "to int8; replace them, or keep them float with allow_float_ops=True (--allow-float-ops): "
                                "int8-only accelerators cannot run such a file.")


def convert(model, data: RepresentativeData, *, scheme: Union[str, Scheme] = "per-channel", weight_bits: int = 8,
            io: Union[str, IOType] = "int8", calibrated: Optional[bytes] = None, logit_range: str = "auto",
            batch_size: Optional[int] = None, nonuniform: bool = False, pack: Optional[str] = None,
            threshold: Optional[float] = None, max_per_channel: Optional[int] = None,
            fully_connected_per_tensor: bool = False, plan=None, allow_float_ops: bool = False,
            rounding: str = "nearest", weight_dtype: str = "int8", rounding_config=None,
            progress: bool = False, size_budget=None, return_plan: bool = False):
    """Keras model + calibration data -> full-integer int8 .tflite bytes.

    `weight_bits` 6 or 4 limits weights to +-(2^(b-1)-1) on their own scale (still int8
    tensors), re-derived from the BN-folded float weights. Pass `calibrated` (from
    `calibrate`) to skip calibration when producing several variants. `logit_range`: see
    `calibrate`. The default export keeps a dynamic batch with constant Flatten shapes (no
    SHAPE/STRIDED_SLICE/PACK: one Hexagon NPU partition); `batch_size=1` fixes the batch as well.
    `io`: 'int8' (default), 'uint8' (TFLite's inference_input_type=uint8) or 'float'. `nonuniform=True`: 2^weight_bits IQR-cluster levels per weight
    tensor (or channel) instead of a uniform grid (tflite.weight_tables). `pack="lut"`: weight
    tables packed for TFLite Micro (tflite.pack); such a file runs on TFLM, not on LiteRT.

    scheme='hybrid': per-tensor, except the layers whose per-channel sensitivity gain
    (KL_PT - KL_PC on `data`, at `weight_bits`) exceeds `threshold` (default 0), at most
    `max_per_channel` of them, FULLY_CONNECTED excluded if `fully_connected_per_tensor`;
    or exactly the layers of a precomputed `plan` (sensitivity.HybridPlan).

    `allow_float_ops=True` keeps an op TFLite cannot quantize in float instead of refusing the
    model (`tflite.inspect.float_ops` lists them); LayerNormalization is rewritten so it needs none.
    `rounding="learned"`: each weight's rounding (up or down) and each bias learned (layer by layer, a
    residual block's ops together) to reconstruct the float outputs on the images of `data`
    (methods.rounding; `rounding_config` a
    RoundingConfig; progress on stderr with `progress=True`). `weight_dtype="int4"` (needs
    weight_bits=4) stores the weights as INT4, two per byte, which LiteRT runs (tflite.int4).

    `size_budget` (bytes, '64KB', '0.6x' of the W8 file): each weight layer at W8, W6 or W4, chosen on
    `data` to minimize the summed per-layer KL under the budget (methods.budget); W4 layers stored as INT4
    (or all narrow layers LUT-packed with pack='lut'); a budget below the all-W4 file is refused, one at or
    above the W8 file gives the W8 model. With `return_plan`, returns (bytes, BudgetPlan).
    """
    from tflite_retroq.methods import hybrid
    from tflite_retroq.static_shape import check_calibrated_batch
    from tflite_retroq.tflite.weight_tables import check_options, finish
    check_options(nonuniform, pack, weight_bits)
    from tflite_retroq.methods.rounding import check_rounding, learned_rounding
    from tflite_retroq.tflite.int4 import check_weight_dtype, to_int4
    check_bools(nonuniform=nonuniform, fully_connected_per_tensor=fully_connected_per_tensor,
                allow_float_ops=allow_float_ops, progress=progress)
    check_rounding_config(rounding_config)
    check_rounding(rounding, nonuniform)
    check_weight_dtype(weight_dtype, weight_bits, nonuniform, pack)
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    if size_budget is not None or return_plan:
        from tflite_retroq.methods.budget import check_budget_options
        check_budget_options(size_budget, return_plan, scheme, weight_bits, nonuniform, weight_dtype, plan)
    cfg = QuantizationConfig(scheme=scheme, weight_bits=weight_bits, io=io)
    hcfg = hybrid.hybrid_config(cfg.scheme, threshold, max_per_channel, fully_connected_per_tensor, plan)
    if calibrated is not None:
        calibrated = verify(calibrated, "calibrated=")  # before any native code parses the caller's bytes
    model = prepare(model)  # loaded, validated (and BN-folded when needed) once for every stage below
    if calibrated is None:
        calibrated = calibrate(model, data, logit_range=logit_range, batch_size=batch_size)
    check_calibrated_batch(calibrated, batch_size)
    quantized = quantize_calibrated(calibrated, Scheme.PER_TENSOR if hcfg is not None else cfg.scheme, cfg.io,
                                    allow_float_ops=allow_float_ops)
    if hcfg is not None:
        quantized = hybrid.hybrid(model, data, quantized, calibrated, hcfg, weight_bits=cfg.weight_bits, plan=plan)
    if size_budget is not None:
        from tflite_retroq.methods.budget import budget_convert
        return budget_convert(model, data, quantized, calibrated, size_budget, pack, rounding, rounding_config,
                              progress, return_plan)
    if cfg.weight_bits != 8 and not nonuniform:
        quantized = limit_weight_bits(quantized, calibrated, cfg.weight_bits)
    if rounding == "learned":
        images = data.images if isinstance(data, SyntheticDataset) else _images_of(data, model.info.input_shape)
        quantized = learned_rounding(quantized, calibrated, images, cfg.weight_bits, rounding_config, progress)
    quantized = finish(quantized, calibrated, cfg.weight_bits, nonuniform, pack)
    return to_int4(quantized) if weight_dtype == "int4" else quantized


def check_rounding_config(rounding_config) -> None:
    """None or a RoundingConfig: a mode name or a dict would fail deep inside learned rounding."""
    from tflite_retroq.methods.rounding import RoundingConfig
    if rounding_config is not None and not isinstance(rounding_config, RoundingConfig):
        raise ConfigError(f"rounding_config must be a RoundingConfig, got {type(rounding_config).__name__} "
                          f"{one_line(repr(rounding_config), 40)}; pass rq.RoundingConfig(iterations=...) "
                          "(or leave it None), with rounding='learned'.")


def float_tflite(model, *, batch_size: Optional[int] = None) -> bytes:
    """Plain float32 .tflite of the model (the accuracy reference on the interpreter)."""
    from tflite_retroq.static_shape import check_batch_size, fixed_batch_model, fold_batch_reshapes
    model, batch_size = keras_model(model), check_batch_size(batch_size)
    conv = _keras_converter(model if batch_size is None else fixed_batch_model(model, batch_size))
    with _quiet():
        out = bytes(conv.convert())
    return fold_batch_reshapes(out) if batch_size is None else out


class RetroQConverter:
    """The plugin form of the converter hook: the user's own TFLiteConverter, then every pass `convert` applies.

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        ...                                    # the user's own settings
        converter = rq.RetroQConverter(converter, data, weight_bits=4)   # the one new line
        tflite_bytes = converter.convert()     # the model rq.convert(model, data, weight_bits=4) writes

    `convert()` runs the user's converter in calibrate-only mode on `data` (then restores its
    settings) and hands the calibrated model to `convert`, so every data mode, scheme and option
    gives exactly what `rq.convert` gives. Options are `convert`'s keyword arguments. Where an option
    is not given, the converter's own `inference_input_type` (int8, uint8 or float32) sets `io` and
    `_experimental_disable_per_channel` sets `scheme='per-tensor'`. `model` is needed only for a
    converter not made by `from_keras_model`. Other attributes read and write through to the wrapped
    converter, so code that configures it after wrapping keeps working.
    """

    def __init__(self, converter, data: RepresentativeData, *, model=None, **options):
        import inspect
        allowed = [p.name for p in inspect.signature(convert).parameters.values()
                   if p.kind == p.KEYWORD_ONLY and p.name != "calibrated"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"RetroQConverter got unknown option{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)}; it takes rq.convert's options: {', '.join(allowed)}.")
        if not hasattr(converter, "convert") or not hasattr(converter, "representative_dataset"):
            raise ConfigError(f"RetroQConverter wraps a tf.lite.TFLiteConverter, got {type(converter).__name__}; "
                              "make one with tf.lite.TFLiteConverter.from_keras_model(model).")
        object.__setattr__(self, "_converter", converter)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_options", dict(options))

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "_converter"), name)

    def __setattr__(self, name, value):
        setattr(self._converter, name, value)

    def options(self) -> dict:
        """The `convert` options this wrapper applies (the converter's own I/O and per-channel settings filled in)."""
        import tensorflow as tf
        opts = dict(self._options)
        if "io" not in opts:
            io_of = {tf.int8: "int8", tf.uint8: "uint8", tf.float32: "float", None: "int8"}
            io = io_of.get(getattr(self._converter, "inference_input_type", None))
            if io is None:
                raise ConfigError(f"The converter's inference_input_type "
                                  f"{getattr(self._converter, 'inference_input_type', None)!r} has no full-integer "
                                  "equivalent; set it to tf.int8, tf.uint8 or tf.float32, or pass io=.")
            opts["io"] = io
        if "scheme" not in opts and getattr(self._converter, "_experimental_disable_per_channel", False):
            opts["scheme"] = "per-tensor"
        return opts

    def convert(self) -> bytes:
        model = self._model if self._model is not None else getattr(self._converter, "_keras_model", None)
        if model is None:
            raise ConfigError("This converter was not made by TFLiteConverter.from_keras_model, so the Keras model "
                              "is unknown; pass it: RetroQConverter(converter, data, model=model).")
        opts = self.options()
        model = prepare(model)  # once for both stages
        calibrated = calibrate(model, self._data, logit_range=opts.get("logit_range", "auto"),
                               batch_size=opts.get("batch_size"), converter=self._converter)
        return convert(model, self._data, calibrated=calibrated, **opts)
