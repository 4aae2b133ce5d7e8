"""tflite_retroq: data-free full-integer int8 TensorFlow Lite from a Keras classifier.

Public API (everything else is internal and may change):

    data = synthesize(model, SynthesisConfig(mode="retro"))
    tflite_bytes = convert(model, data, scheme="per-channel", weight_bits=8)
    result = evaluate(tflite_bytes, images, labels, reference=model)

Your own TFLiteConverter: `rq.RetroQConverter(converter, data, **convert_options).convert()` runs it
and then every pass `convert` applies (the same model); `rq.representative_dataset(data)` is the bare hook.
"""
from tflite_retroq.config import InputSpec, IOType, QuantizationConfig, Scheme, SynthesisConfig, SynthesisMode
from tflite_retroq.converter import RetroQConverter, calibrate, convert, float_tflite, quantize_calibrated
from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.errors import (ConfigError, DataError, InputSpecError, ModelError, OutOfMemoryError, OutputError,
                                  QuantizationError, RetroQError, TFLiteModelError)
from tflite_retroq.errors import TargetError
from tflite_retroq.targets.litert import LiteRTLatency, litert_latency
from tflite_retroq.targets.tflm import TFLMResult, tflm_run
from tflite_retroq.targets.vela import VelaEstimate, vela_estimate
from tflite_retroq.evaluate import EvalResult, evaluate, run_tflite
from tflite_retroq.model.batchnorm import fold_batchnorm
from tflite_retroq.model.loading import load_model
from tflite_retroq.synthesis import synthesize
from tflite_retroq.quality import QualityEstimate, estimate_quality, holdout_images
from tflite_retroq.config import HybridConfig
from tflite_retroq.methods.plan import HybridPlan, LayerSensitivity, SensitivityResult, select_layers
from tflite_retroq.methods.sensitivity import analyze_sensitivity
from tflite_retroq.methods.rounding import RoundingConfig


def representative_dataset(data: SyntheticDataset, batch_size: int = 1):
    """The converter hook: `converter.representative_dataset = representative_dataset(data)`."""
    return data.representative_dataset(batch_size=batch_size)


__version__ = "0.1.0"

__all__ = [
    "synthesize", "convert", "RetroQConverter", "calibrate", "quantize_calibrated", "float_tflite", "representative_dataset",
    "evaluate", "run_tflite", "EvalResult", "fold_batchnorm", "load_model", "SyntheticDataset",
    "SynthesisConfig", "SynthesisMode", "QuantizationConfig", "Scheme", "IOType", "InputSpec",
    "RoundingConfig",
    "analyze_sensitivity", "select_layers", "SensitivityResult", "LayerSensitivity", "HybridPlan", "HybridConfig",
    "RetroQError", "ModelError", "InputSpecError", "DataError", "TFLiteModelError", "OutputError", "ConfigError",
    "OutOfMemoryError", "QuantizationError",
    # targets: Vela (Ethos-U), TFLite Micro, LiteRT latency
    "TargetError", "vela_estimate", "VelaEstimate", "tflm_run", "TFLMResult", "litert_latency", "LiteRTLatency",
    # the quality estimate on held-out synthetic images
    "estimate_quality", "holdout_images", "QualityEstimate",
]
