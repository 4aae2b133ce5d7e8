"""Typed errors: one clear sentence saying what is wrong and how to fix it.

The CLI maps every RetroQError to one line on stderr and exit code 2, so the
message must stand on its own.
"""


class RetroQError(Exception):
    """Base class of every error tflite_retroq raises on purpose."""


class ModelError(RetroQError):
    """The Keras model is missing, unreadable, or not a single-input image classifier."""


class InputSpecError(RetroQError):
    """The input-space description (mean/std/range) does not fit the model."""


class DataError(RetroQError):
    """A synthetic dataset file or array is missing, corrupt or does not fit the model."""


class TFLiteModelError(RetroQError):
    """A .tflite file is missing, corrupt, or lacks what a pass needs."""


class OutputError(RetroQError):
    """An output path cannot be written."""


class ConfigError(RetroQError):
    """Options that are invalid or conflict with each other."""


class QuantizationError(RetroQError):
    """A weight tensor cannot be quantized as asked (empty, non-finite, too few levels)."""
