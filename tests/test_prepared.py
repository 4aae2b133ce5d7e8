"""Prepare once: a command or API call loads, validates and BN-folds the model once.

The counts are taken by wrapping the three functions that do the work (as_model, validate_classifier,
fold_batchnorm) where `prepare` calls them; a stage that reloaded, revalidated or refolded the model
would raise a count above one. The prepared record is also checked against the model it wraps.
"""
import dataclasses

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.model import batchnorm, prepared as prep
from tflite_retroq.model.prepared import PreparedModel, prepare


@pytest.fixture
def counts(monkeypatch):
    seen = {"load": 0, "validate": 0, "fold": 0}

    def counted(fn, key):
        def wrapper(*a, **k):
            seen[key] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(prep, "as_model", counted(prep.as_model, "load"))
    monkeypatch.setattr(prep, "validate_classifier", counted(prep.validate_classifier, "validate"))
    monkeypatch.setattr(batchnorm, "fold_batchnorm", counted(batchnorm.fold_batchnorm, "fold"))
    return seen


def test_prepare_is_idempotent_and_frozen(bn_model):
    p = prepare(bn_model)
    assert prepare(p) is p
    assert p.model is bn_model and p.info.num_bn == 2 and p.info.input_shape == tuple(bn_model.input.shape[1:])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.model = None
    assert p.folded() is p.folded()  # made once
    x = np.random.default_rng(0).uniform(0, 255, (4,) + p.info.input_shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(p.folded()(x)), np.asarray(bn_model(x)), rtol=1e-4, atol=1e-4)
    assert not any(type(l).__name__ == "BatchNormalization" for l in p.folded().layers)


def test_convert_hybrid_learned_prepares_once(bn_model, calib_data, counts):
    """Hybrid (sensitivity + layer matching, both on the folded twin), learned rounding and calibration:
    one load, one validation, one fold for the whole call."""
    rq.convert(bn_model, calib_data, scheme="hybrid", weight_bits=4, rounding="learned",
               rounding_config=rq.RoundingConfig(iterations=5))
    assert counts == {"load": 1, "validate": 1, "fold": 1}


def test_stages_take_a_prepared_model_as_it_is(bn_model, calib_data, counts):
    p = prepare(bn_model)
    counts.update(load=0, validate=0, fold=0)
    cal = rq.calibrate(p, calib_data)
    rq.analyze_sensitivity(p, calib_data)
    q = rq.convert(p, calib_data, calibrated=cal, scheme="hybrid")
    rq.estimate_quality(q, p, rq.holdout_images(p, calib_data, count=4))
    assert counts == {"load": 0, "validate": 0, "fold": 1}
