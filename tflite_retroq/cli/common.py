"""What every verb does around its work: cheap checks before TensorFlow, loading, one-line output."""
from __future__ import annotations

import os
import re
import sys
from typing import Optional

from tflite_retroq.errors import ConfigError, ModelError, OutputError
from tflite_retroq.io_utils import check_not_inputs, check_readable, check_writable, same_file


_TFLITE_MAGIC = b"TFL3"                                   # bytes 4-8 of every .tflite flatbuffer
_KERAS_MAGICS = (b"PK\x03\x04", b"\x89HDF\r\n\x1a\n")   # a .keras zip archive, a legacy HDF5 .h5


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError:
        return b""


def check_model_file(path: str) -> str:
    """Cheap checks before TensorFlow is imported (missing, FIFO, unreadable, a .tflite given where the Keras
    model is meant); load_model does the full ones."""
    if os.path.isdir(path):
        from tflite_retroq.model.saved_model import check_saved_model_dir
        return check_saved_model_dir(path)
    check_readable(path, "Model file", ModelError, "pass the path of a saved Keras model (.keras) or a "
                   "SavedModel directory")
    if _head(path)[4:8] == _TFLITE_MAGIC:
        raise ModelError(f"{path!r} is already a TFLite file; this command takes the Keras model it was made from "
                         "(.keras, .h5 or a SavedModel directory). To look inside a .tflite, use `retroq inspect`.")
    return path


def check_tflite_file(path: str) -> str:
    """`retroq inspect` reads a .tflite: say so plainly when handed the Keras model (or a SavedModel) instead."""
    from tflite_retroq.errors import TFLiteModelError
    hint = "; inspect takes a .tflite file: convert it first with `retroq convert MODEL -o OUT.tflite`."
    if os.path.isdir(path):
        raise TFLiteModelError(f"{path!r} is a directory (a SavedModel is a Keras-side model){hint}")
    check_readable(path, "TFLite file", TFLiteModelError, "pass the path of a .tflite model")
    if _head(path).startswith(_KERAS_MAGICS):
        raise TFLiteModelError(f"{path!r} is a Keras model, not a TFLite file{hint}")
    return path


def check_outputs(model_path: str, *paths: Optional[str], data_file: Optional[str] = None) -> None:
    """Every output is writable as a regular file, is none of the inputs, and no two outputs coincide."""
    inputs = [("input model", model_path), ("input dataset (--data-file)", data_file)]
    given = [p for p in paths if p]
    for p in given:
        check_writable(p)
        check_not_inputs(p, inputs)
    for i, p in enumerate(given):
        for q in given[:i]:
            if same_file(p, q):
                raise ConfigError(f"{q!r} and {p!r} are the same file (the two outputs would overwrite each other); "
                                  "choose two different paths.")


def load_checked_model(path: str):
    """The command's one PreparedModel: loaded (a mixed-precision model as its float32 twin) and validated
    once, before anything is printed or run; every stage takes it as it is."""
    from tflite_retroq.model.prepared import prepare  # TensorFlow loads here, after every flag is checked
    return prepare(path)


_API_ARGUMENT = re.compile(r"\b(weight_dtype|weight_bits|pack|rounding|nonuniform|scheme|io)=(['\"]?)([\w-]+(?:\.\w+)*)\2")


def in_flag_words(text: str) -> str:
    """An API check's message in the CLI's words: weight_dtype='int4' -> --weight-dtype int4, nonuniform=True
    -> --nonuniform, so the line names the flags the user typed."""
    def flag_of(m: "re.Match") -> str:
        name, value = "--" + m.group(1).replace("_", "-"), m.group(3)
        return name if value == "True" else f"{name} {value}"
    return _API_ARGUMENT.sub(flag_of, text)


def check_as_flags(check, *args) -> None:
    """Run an API option check (convert()'s) for the CLI: its ConfigError is said in flag words."""
    try:
        check(*args)
    except ConfigError as e:
        raise ConfigError(in_flag_words(str(e))) from None


class ReaderGone(Exception):
    """The reader of stdout went away (EPIPE, `retroq inspect m.tflite | head -1`): end quietly."""


def emit(text: str) -> None:
    """Write to stdout now; a broken pipe becomes ReaderGone, any other failure (closed, /dev/full) one line."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone() from None
    except (OSError, ValueError) as e:
        stdout_gone()
        reason = getattr(e, "strerror", None) or str(e)
        raise OutputError(f"cannot write to standard output ({reason}); redirect it to a file or a terminal "
                          "that accepts writes.") from None


def stdout_gone() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush of what is still buffered cannot fail."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


def say(text: str) -> None:
    emit(text + "\n")


def say_input_space(data) -> None:
    """The one assumption a data-free tool cannot check against data: said on its own line (after
    success, so a failed run's stdout stays empty), and recorded in the dataset and the report."""
    space = data.metadata.get("input_space")
    say(f"input space: {space.get('source', 'unknown') if isinstance(space, dict) else 'unknown'}")
