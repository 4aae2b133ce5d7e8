"""evaluate: metrics against hand-computed values; the interpreter runner on real models."""
import math

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import DataError, TFLiteModelError
from tflite_retroq.evaluate import compare, mean_kl, sqnr_db, to_probabilities

from conftest import NUM_CLASSES


# ----------------------------------------------------------------------------- metrics

def test_sqnr_db_hand_values():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    test = ref + np.array([[0.1, 0.0], [0.0, -0.2]])
    # signal 1+4+9+16 = 30, noise 0.01+0.04 = 0.05 -> 10 log10(600)
    assert sqnr_db(ref, test) == pytest.approx(27.781512503836437, abs=1e-9)
    assert sqnr_db(ref, ref.copy()) == math.inf
    assert sqnr_db(ref, 2 * ref) == pytest.approx(0.0, abs=1e-12)  # noise power == signal power


def test_mean_kl_on_probabilities():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    q = np.array([[0.9, 0.1], [0.2, 0.8]])
    kl0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108...
    assert mean_kl(p, q) == pytest.approx(kl0 / 2, rel=1e-6)
    assert mean_kl(p, p) == pytest.approx(0.0, abs=1e-9)


def test_mean_kl_on_logits_softmaxes_once():
    a = np.array([[2.0, 0.0, -1.0]])
    b = np.array([[0.0, 1.0, 0.5]])
    pa = np.exp(a) / np.exp(a).sum()
    pb = np.exp(b) / np.exp(b).sum()
    assert mean_kl(a, b) == pytest.approx(float(np.sum(pa * np.log(pa / pb))), rel=1e-6)
    # logits shifted by a constant are the same distribution
    assert mean_kl(a, a + 3.0) == pytest.approx(0.0, abs=1e-9)


def test_to_probabilities():
    p = np.array([[0.25, 0.75]])
    np.testing.assert_allclose(to_probabilities(p), p)
    logits = np.array([[0.25, 0.25]])  # non-negative but not a distribution
    np.testing.assert_allclose(to_probabilities(logits), [[0.5, 0.5]])


def test_compare_agreement_and_accuracy():
    ref = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], float)
    out = np.array([[0.9, 0, 0], [0, 0.8, 0], [0.5, 0, 0.1], [0, 0, 3]], float)
    labels = np.array([0, 1, 0, 2])
    r = compare(out, labels, ref)
    assert r.n == 4
    assert r.agreement == pytest.approx(50.0)  # rows 0, 1 agree
    assert r.accuracy == pytest.approx(100.0)  # argmax 0, 1, 0, 2
    assert r.sqnr_db == pytest.approx(10 * math.log10(4 / np.sum((ref - out) ** 2)))
    only_labels = compare(out, labels)
    assert only_labels.agreement is None and only_labels.sqnr_db is None and only_labels.kl is None
    assert set(r.to_dict()) == {"n", "accuracy", "agreement", "sqnr_db", "kl"}


# ----------------------------------------------------------------------------- interpreter

@pytest.fixture(scope="module")
def float_bytes(bn_model):
    return rq.float_tflite(bn_model)


def test_float_tflite_matches_keras(bn_model, float_bytes, pixel_images):
    y = rq.run_tflite(float_bytes, pixel_images)
    ref = np.asarray(bn_model(pixel_images))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("fixture", ["nested_model", "sequential_model", "softmax_model"])
def test_float_tflite_matches_keras_other_models(fixture, normal_images, request):
    model = request.getfixturevalue(fixture)
    y = rq.run_tflite(rq.float_tflite(model), normal_images)
    ref = np.asarray(model(normal_images))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_batch_size_does_not_change_outputs(int8_bytes, float_bytes, calib_data):
    x = calib_data.images[:12]
    for b in (int8_bytes, float_bytes):
        y1 = rq.run_tflite(b, x, batch_size=1)
        y7 = rq.run_tflite(b, x, batch_size=7)  # 7 + 5: the input is resized twice
        assert y1.shape == (12, NUM_CLASSES)
        np.testing.assert_array_equal(y1, y7)


def test_run_tflite_dequantizes_int8(int8_bytes, calib_data):
    """Independent int8 path: quantize the input by hand, run the raw interpreter, dequantize."""
    from ai_edge_litert.interpreter import Interpreter
    x = calib_data.images[:3]
    it = Interpreter(model_content=int8_bytes)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], [3] + list(inp["shape"][1:]))
    it.allocate_tensors()
    s, zp = inp["quantization"]
    it.set_tensor(inp["index"], np.clip(np.rint(x / s) + zp, -128, 127).astype(np.int8))
    it.invoke()
    so, zo = out["quantization"]
    expect = (it.get_tensor(out["index"]).astype(np.float32) - zo) * so
    np.testing.assert_allclose(rq.run_tflite(int8_bytes, x), expect, rtol=1e-6)


@pytest.mark.parametrize("resolver", ["auto", "builtin", "reference"])
def test_all_resolvers_run(resolver, int8_bytes, float_bytes, calib_data, bn_model):
    x = calib_data.images[:6]
    ref_int8 = rq.run_tflite(int8_bytes, x, resolver="builtin")
    y = rq.run_tflite(int8_bytes, x, resolver=resolver)
    from ai_edge_litert.interpreter import Interpreter
    out_scale = Interpreter(model_content=int8_bytes).get_output_details()[0]["quantization"][0]
    assert np.max(np.abs(y - ref_int8)) <= 2 * out_scale + 1e-7  # kernels may differ by a rounding step
    yf = rq.run_tflite(float_bytes, x, resolver=resolver)
    np.testing.assert_allclose(yf, np.asarray(bn_model(x)), rtol=1e-4, atol=1e-4)


def test_evaluate_against_keras_reference(int8_bytes, bn_model, calib_data):
    x, labels = calib_data.images, calib_data.labels
    r = rq.evaluate(int8_bytes, x, labels, reference=bn_model, batch_size=5)
    ref = np.asarray(bn_model(x), np.float64)
    y = rq.run_tflite(int8_bytes, x).astype(np.float64)
    assert r.n == len(x)
    assert r.agreement == pytest.approx(100.0 * np.mean(np.argmax(y, 1) == np.argmax(ref, 1)))
    assert r.accuracy == pytest.approx(100.0 * np.mean(np.argmax(y, 1) == labels))
    assert r.sqnr_db == pytest.approx(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2)), rel=1e-4)
    assert r.sqnr_db > 15 and r.agreement >= 85 and 0 <= r.kl < 0.1
    # a precomputed reference array gives the same result
    r2 = rq.evaluate(int8_bytes, x, labels, reference=ref.astype(np.float32))
    assert r2.agreement == r.agreement and r2.sqnr_db == pytest.approx(r.sqnr_db, rel=1e-5)


def test_run_tflite_errors(int8_bytes, normal_images):
    with pytest.raises(DataError, match="do not fit"):
        rq.run_tflite(int8_bytes, normal_images[:, :8])
    with pytest.raises(TFLiteModelError):
        rq.run_tflite(b"\x00" * 64, normal_images)
    with pytest.raises(ValueError, match="resolver"):
        rq.run_tflite(int8_bytes, normal_images, resolver="gpu")
