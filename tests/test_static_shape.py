"""Static-shape export (`convert(..., batch_size=N)`) and the default export's folded Flatten shapes:
no shape-computing operators, same numbers, the user's signature names.

The reference for "same numbers" is the default dynamic-batch conversion of the same model
from the same calibration images (the converter's own output), and the Keras model itself
for the float export.
"""
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.tflite.inspect import inspect_model

SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}


@pytest.fixture(scope="module")
def flat_model(flatten_model):
    return flatten_model


@pytest.fixture(scope="module")
def flat_images():
    return np.random.default_rng(3).standard_normal((13, 8, 8, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def flat_data(flat_model):
    return rq.synthesize(flat_model, rq.SynthesisConfig(mode="gaussian", samples_per_class=3, seed=2),
                         progress=False)


@pytest.fixture(scope="module")
def calibrations(flat_model, flat_data):
    return {None: rq.calibrate(flat_model, flat_data), 1: rq.calibrate(flat_model, flat_data, batch_size=1)}


def _ops(b):
    return set(inspect_model(b)["op_counts"])


def _input_signature(b):
    from ai_edge_litert.interpreter import Interpreter
    return list(Interpreter(model_content=b).get_input_details()[0]["shape_signature"])


def _per_image(b, images):
    """Independent runner: one LiteRT invoke per image, quantizing by hand."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=b)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for x in images:
        x = x[None]
        if inp["dtype"] == np.int8:
            s, zp = inp["quantization"]
            x = np.clip(np.round(x / s) + zp, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], x)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            s, zp = out["quantization"]
            y = (y - zp) * s
        rows.append(y.reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize("bits", [8, 4])
def test_static_export_drops_shape_ops_and_keeps_outputs(flat_model, calibrations, flat_images, bits):
    dynamic = rq.convert(flat_model, None, calibrated=calibrations[None], weight_bits=bits)
    static = rq.convert(flat_model, None, calibrated=calibrations[1], weight_bits=bits, batch_size=1)
    assert not SHAPE_OPS & _ops(dynamic)  # folded to a constant [-1, 256] shape (fold_batch_reshapes)
    assert not SHAPE_OPS & _ops(static)
    assert _input_signature(dynamic)[0] == -1 and _input_signature(static) == [1, 8, 8, 2]
    # Same calibration images, batched by one either way: identical ranges, so identical integers.
    want = _per_image(dynamic, flat_images)
    np.testing.assert_array_equal(_per_image(static, flat_images), want)
    # run_tflite runs the batch-1 model over many images (13, not a multiple of its batch of 64).
    np.testing.assert_array_equal(rq.run_tflite(static, flat_images), want)


def test_convert_calibrates_with_batch_size(flat_model, flat_data, calibrations, flat_images):
    """convert(batch_size=1) without `calibrated` equals calibrate(batch_size=1) + convert."""
    direct = rq.convert(flat_model, flat_data, batch_size=1, scheme="per-tensor")
    via = rq.convert(flat_model, None, calibrated=calibrations[1], batch_size=1, scheme="per-tensor")
    assert not SHAPE_OPS & _ops(direct)
    # (byte equality does not hold: tensor names carry Keras's per-call layer counters)
    np.testing.assert_array_equal(_per_image(direct, flat_images), _per_image(via, flat_images))


def test_static_float_export_matches_keras(flat_model, flat_images):
    from tflite_retroq.evaluate import keras_outputs
    fl = rq.float_tflite(flat_model, batch_size=1)
    assert not SHAPE_OPS & _ops(fl)
    np.testing.assert_allclose(rq.run_tflite(fl, flat_images), keras_outputs(flat_model, flat_images),
                               rtol=1e-4, atol=1e-4)


def test_batch_of_two_pads_the_last_batch(flat_model, flat_data, flat_images):
    static2 = rq.convert(flat_model, flat_data, batch_size=2)
    assert _input_signature(static2)[0] == 2 and not SHAPE_OPS & _ops(static2)
    dynamic = rq.convert(flat_model, flat_data)
    # 13 images in batches of 2: the last one padded; both models were calibrated in batches of 2 vs 1,
    # and min/max over the same images does not depend on the grouping. The logits-range pass reads float
    # features computed at batch 2 vs 64, which can differ in the last float bit: the output scales then differ
    # by ~1e-7 relative, the int8 outputs not at all.
    np.testing.assert_allclose(rq.run_tflite(static2, flat_images), rq.run_tflite(dynamic, flat_images),
                               rtol=1e-6, atol=1e-7)
    res = rq.evaluate(static2, flat_images, np.zeros(len(flat_images), np.int64), reference=flat_model)
    assert res.n == len(flat_images) and res.agreement is not None


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1"])
def test_bad_batch_size_is_refused(flat_model, flat_data, bad):
    with pytest.raises(rq.ConfigError, match="batch_size"):
        rq.convert(flat_model, flat_data, batch_size=bad)


def test_batch_size_conflicting_with_calibration(flat_model, calibrations):
    with pytest.raises(rq.ConfigError, match="dynamic"):
        rq.convert(flat_model, None, calibrated=calibrations[None], batch_size=1)
    with pytest.raises(rq.ConfigError, match="batch is 1"):
        rq.convert(flat_model, None, calibrated=calibrations[1], batch_size=4)


def test_batch_larger_than_data(flat_model):
    few = rq.SyntheticDataset.from_images(np.zeros((3, 8, 8, 2), np.float32))
    with pytest.raises(rq.DataError, match="fewer than the static batch"):
        rq.calibrate(flat_model, few, batch_size=4)


def test_fixed_batches_regroups_any_generator():
    from tflite_retroq.static_shape import fixed_batches
    images = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)

    def gen():  # uneven user batches: 3, 3, 3, 1
        for i in (0, 3, 6, 9):
            yield [images[i:i + 3]]

    got = list(fixed_batches(gen, 4)())
    assert [len(b[0]) for b in got] == [4, 4]  # the remainder of 2 is dropped
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), images[:8])


def test_static_float_io(flat_model, calibrations, flat_images):
    dynamic = rq.convert(flat_model, None, calibrated=calibrations[None], io="float")
    static = rq.convert(flat_model, None, calibrated=calibrations[1], io="float", batch_size=1)
    assert not SHAPE_OPS & _ops(static)
    np.testing.assert_array_equal(rq.run_tflite(static, flat_images), rq.run_tflite(dynamic, flat_images))


# ----------------------------------------------------------------------------- signature names

def _signature(b):
    """(input names, output names) of the serving signature, as LiteRT reports them."""
    from ai_edge_litert.interpreter import Interpreter
    sig = Interpreter(model_content=b).get_signature_list()["serving_default"]
    return sig["inputs"], sig["outputs"]


def test_static_export_keeps_the_signature_names(flat_model, calibrations, flat_images):
    """The signature input is the Keras Input's name ('image' in the fixture), static or not; a signature
    runner looks it up by that name and gets the same outputs as the dynamic export."""
    from ai_edge_litert.interpreter import Interpreter
    dynamic = rq.convert(flat_model, None, calibrated=calibrations[None])
    static = rq.convert(flat_model, None, calibrated=calibrations[1], batch_size=1)
    assert _signature(dynamic) == _signature(static) == (["image"], ["output_0"])
    assert _signature(rq.float_tflite(flat_model, batch_size=1))[0] == ["image"]
    outs = []
    for b in (dynamic, static):
        it = Interpreter(model_content=b)
        run = it.get_signature_runner("serving_default")
        s, zp = it.get_input_details()[0]["quantization"]
        x = np.clip(np.round(flat_images[:1] / s) + zp, -128, 127).astype(np.int8)
        outs.append(run(image=x)["output_0"])
    np.testing.assert_array_equal(outs[0], outs[1])


# ----------------------------------------------------------------------------- folded Flatten shapes

def test_fold_batch_reshapes_keeps_values_and_dynamic_batch(flat_model, flat_images):
    from tflite_retroq.static_shape import fold_batch_reshapes
    from conftest import stock_int8
    plain = stock_int8(flat_model, flat_images)
    assert SHAPE_OPS <= _ops(plain)  # the problem exists in the stock converter's output
    folded = fold_batch_reshapes(plain)
    assert not SHAPE_OPS & _ops(folded) and _ops(folded) == _ops(plain) - SHAPE_OPS
    assert _input_signature(folded)[0] == -1
    want = _per_image(plain, flat_images)
    np.testing.assert_array_equal(_per_image(folded, flat_images), want)
    for batch in (5, 13):  # the batch stays dynamic: any batch runs, same integers
        np.testing.assert_array_equal(rq.run_tflite(folded, flat_images, batch_size=batch, resolver="reference"),
                                      rq.run_tflite(plain, flat_images, batch_size=batch, resolver="reference"))
    assert fold_batch_reshapes(folded) == folded  # nothing left to fold: the bytes come back unchanged


def test_default_float_export_is_folded_and_matches_keras(flat_model, flat_images):
    from tflite_retroq.evaluate import keras_outputs
    fl = rq.float_tflite(flat_model)
    assert not SHAPE_OPS & _ops(fl) and _input_signature(fl)[0] == -1
    np.testing.assert_allclose(rq.run_tflite(fl, flat_images, batch_size=4), keras_outputs(flat_model, flat_images),
                               rtol=1e-4, atol=1e-4)
