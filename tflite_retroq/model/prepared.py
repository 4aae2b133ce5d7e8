"""Prepare once: a model is loaded, validated and BN-folded once per command or API call.

Every stage (synthesis, calibration, sensitivity, the quality estimate, evaluation) takes the
frozen `PreparedModel` that `prepare()` makes, so a path is read once, a classifier validated
once and its BatchNorm folded once, however many stages use it. Public functions still accept a
path or a keras.Model: they call `prepare()` at their top, and `prepare(prepared)` is the record
itself, so a stage handed one never loads or checks the model again.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

from tflite_retroq.model.loading import as_model
from tflite_retroq.model.validation import ModelInfo, validate_classifier


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedModel:
    """The float32 Keras classifier, what validation found, and what is derived from it once.

    `folded()` (BN folded into the preceding layers, as the converter folds it) and
    `input_space(spec)` are computed on first use and kept: the record is frozen, its cache is not.
    """
    model: Any                      # keras.Model computing in float32
    info: ModelInfo
    path: Optional[str] = None      # where it was loaded from, if from a file
    _cache: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.model.name

    def folded(self):
        """The BN-folded twin (the model itself when it has no BatchNorm), made once."""
        if "folded" not in self._cache:
            from tflite_retroq.model.batchnorm import fold_batchnorm
            self._cache["folded"] = fold_batchnorm(self.model) if self.info.num_bn else self.model
        return self._cache["folded"]

    def input_space(self, spec=None):
        """The resolved input space for `spec` (an InputSpec, an InputSpace, or None to detect), made once per spec."""
        from tflite_retroq.model.input_space import resolve_input_space
        key = f"space:{spec!r}"
        if key not in self._cache:
            self._cache[key] = resolve_input_space(self.model, spec)
        return self._cache[key]


def prepare(model) -> PreparedModel:
    """A PreparedModel from a path, a keras.Model or a PreparedModel (returned unchanged).

    Loads (safe_mode) and switches a mixed-precision model to float32, then validates it as a
    single-input image classifier: ModelError otherwise.
    """
    if isinstance(model, PreparedModel):
        return model
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    keras_model = as_model(model)
    return PreparedModel(keras_model, validate_classifier(keras_model), path)


def keras_model(model):
    """The keras.Model behind a PreparedModel, a keras.Model or a path (loaded, not validated)."""
    return model.model if isinstance(model, PreparedModel) else as_model(model)
