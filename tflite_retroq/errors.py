"""Typed errors: one clear sentence saying what is wrong and how to fix it.

The CLI maps every RetroQError to one line on stderr and exit code 2, so the
message must stand on its own.
"""
import contextlib
from typing import Iterator


def one_line(text: object, limit: int = 240) -> str:
    """One line of at most `limit` characters, cut at a word boundary (never mid-word)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "..."


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


class OutOfMemoryError(RetroQError, MemoryError):
    """The work did not fit in memory (MemoryError or TensorFlow's ResourceExhaustedError).

    Also a MemoryError, so existing `except MemoryError` handlers still catch it.
    """


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, or TensorFlow's ResourceExhaustedError, recognized without importing TensorFlow."""
    if isinstance(error, MemoryError):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return "ResourceExhaustedError" in names or ("OpError" in names and "RESOURCE_EXHAUSTED" in str(error)[:2000])


@contextlib.contextmanager
def out_of_memory_as_error(what: str, fix: str = "lower batch_size or the number of images") -> Iterator[None]:
    """Turn running out of memory inside the block into one OutOfMemoryError that says what to lower."""
    try:
        yield
    except OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - only out-of-memory errors are translated, the rest re-raised
        if not is_out_of_memory(e):
            raise
        raise OutOfMemoryError(f"Out of memory while {what}; {fix}.") from None


class TargetError(RetroQError):
    """A target tool (Vela, the TFLite Micro runtime) is missing or rejected the model."""


class QuantizationError(RetroQError):
    """A weight tensor cannot be quantized as asked (empty, non-finite, too few levels)."""
