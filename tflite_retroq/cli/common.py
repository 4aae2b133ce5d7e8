"""What every verb does around its work: cheap checks before TensorFlow, loading, one-line output."""
from __future__ import annotations

import sys
from typing import Optional

from tflite_retroq.errors import ConfigError, ModelError
from tflite_retroq.io_utils import check_not_inputs, check_readable, check_writable, same_file


def check_model_file(path: str) -> str:
    """Cheap checks before TensorFlow is imported (missing, FIFO, unreadable); load_model does the full ones."""
    return check_readable(path, "Model file", ModelError, "pass the path of a saved Keras model (.keras)")


def check_outputs(model_path: str, *paths: Optional[str], data_file: Optional[str] = None) -> None:
    """Every output is writable as a regular file, is none of the inputs, and no two outputs coincide."""
    inputs = [("input model", model_path), ("input dataset (--data-file)", data_file)]
    given = [p for p in paths if p]
    for p in given:
        check_writable(p)
        check_not_inputs(p, inputs)
    for i, p in enumerate(given):
        if any(same_file(p, q) for q in given[:i]):
            raise ConfigError("-o and --report name the same file; choose two different paths.")


def load_checked_model(path: str):
    """Load (a mixed-precision model as its float32 twin) and validate before anything is printed or run."""
    from tflite_retroq.model.loading import as_model  # TensorFlow loads here, after every flag is checked
    from tflite_retroq.model.validation import validate_classifier
    model = as_model(path)
    validate_classifier(model)
    return model


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def say_input_space(data) -> None:
    """The one assumption a data-free tool cannot check against data: said on its own line (after
    success, so a failed run's stdout stays empty), and recorded in the dataset and the report."""
    space = data.metadata.get("input_space")
    say(f"input space: {space.get('source', 'unknown') if isinstance(space, dict) else 'unknown'}")
