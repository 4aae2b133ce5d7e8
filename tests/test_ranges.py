"""The logits' range pass: interval arithmetic checked against brute force, and its place in calibration."""
import itertools

import keras
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.ranges import find_logits, reachable_logit_range, widen_logit_range


def _corners_bound(w, b, lo, hi):
    """Brute force: the affine map's extremes over the box are attained at its corners."""
    vals = [w @ np.array(c) + b for c in itertools.product(*zip(lo, hi))]
    return float(np.min(vals)), float(np.max(vals))


def test_reachable_range_equals_brute_force_over_box_corners():
    rng = np.random.default_rng(0)
    for _ in range(5):
        w, b = rng.normal(size=(6, 5)), rng.normal(size=6)
        lo = rng.uniform(-1, 0.5, 5)
        hi = lo + rng.uniform(0, 2, 5)
        got = reachable_logit_range(w, b, lo, hi)
        np.testing.assert_allclose(got, _corners_bound(w, b, lo, hi), rtol=1e-9)


def _range_of(calibrated: bytes, name: str):
    m = tfm.read(calibrated)
    for t in m.subgraphs[0].tensors:
        if tfm.tensor_name(t) == name:
            return float(t.quantization.min[0]), float(t.quantization.max[0])
    raise KeyError(name)


@pytest.mark.parametrize("fixture", ["bn_model", "softmax_model"])
def test_widened_logit_range_matches_keras_features(fixture, request, calib_data):
    """The widened range is the union of min/max and the interval bound computed here from the Keras
    model's own GAP features and Dense weights (an independent path), and softmax's output is untouched."""
    model = request.getfixturevalue(fixture)
    data = rq.synthesize(model, rq.SynthesisConfig(images=16, iterations=5), progress=False)
    plain = rq.calibrate(model, data, logit_range="calibrated")
    widened, info = rq.calibrate(model, data, logit_range="reachable", return_info=True)
    assert info is not None and info.op == "FULLY_CONNECTED"
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)][-1]
    feats = np.asarray(keras.Model(model.inputs, dense.input)(data.images), np.float64)
    w, b = (a.astype(np.float64) for a in dense.get_weights())
    bound = _corners_bound(w.T, b, feats.min(0), feats.max(0)) if w.shape[0] <= 10 else None
    cal = _range_of(plain, info.tensor)
    np.testing.assert_allclose(info.calibrated, cal, rtol=1e-6)
    expect = (min(cal[0], bound[0]), max(cal[1], bound[1]))
    np.testing.assert_allclose(_range_of(widened, info.tensor), expect, rtol=1e-4, atol=1e-4)
    assert expect[1] - expect[0] > (cal[1] - cal[0]) * 1.05  # it really widened
    out = tfm.read(widened).subgraphs[0].outputs[0]
    out_name = tfm.tensor_name(tfm.read(widened).subgraphs[0].tensors[out])
    if fixture == "softmax_model":
        assert out_name != info.tensor and _range_of(widened, out_name) == _range_of(plain, out_name)


def test_auto_widens_unconfident_synthetic_data_only(bn_model, calib_data, nobn_model):
    """Only gaussian / zeroq data (pushed towards no class) get the pass; real and retro data calibrate plainly."""
    real = rq.SyntheticDataset.from_images(calib_data.images)
    assert calib_data.mode == "retro"
    for data in (real, calib_data):
        plain = rq.calibrate(bn_model, data, logit_range="calibrated")
        auto, info = rq.calibrate(bn_model, data, return_info=True)
        assert info is None and auto == plain
    zeroq = rq.synthesize(bn_model, rq.SynthesisConfig(mode="zeroq", images=8, iterations=2), progress=False)
    assert rq.calibrate(bn_model, zeroq, return_info=True)[1] is not None
    nobn_data = rq.synthesize(nobn_model, rq.SynthesisConfig(images=8, iterations=2),
                              input_spec=rq.InputSpec(value_range=(-3.0, 3.0)), progress=False)
    assert rq.calibrate(nobn_model, nobn_data, return_info=True)[1] is None
    gauss = rq.synthesize(nobn_model, rq.SynthesisConfig(mode="gaussian", images=8),
                          input_spec=rq.InputSpec(value_range=(-3.0, 3.0)), progress=False)
    assert rq.calibrate(nobn_model, gauss, return_info=True)[1] is not None
    assert rq.calibrate(nobn_model, nobn_data, logit_range="reachable", return_info=True)[1] is not None
    with pytest.raises(rq.ConfigError, match="logit_range"):
        rq.calibrate(bn_model, calib_data, logit_range="wide")


def test_no_logits_op_found_leaves_model_unchanged(bn_model, calib_data):
    """A model whose output is not produced by a linear FC/conv (here a ReLU head) is left as calibrated."""
    inp = keras.Input(bn_model.input_shape[1:])
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(4, activation="relu")(x))
    cal = rq.calibrate(model, calib_data, logit_range="calibrated")
    assert find_logits(tfm.read(cal)) is None
    assert widen_logit_range(cal, calib_data.images)[0] == cal
