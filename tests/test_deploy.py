"""Deployment options: `io='uint8'` as TFLite offers it, and the 'mixed-channel' name for the paper's hybrid.

uint8 I/O is checked against the int8 export of the same calibration on LiteRT's reference
kernels: the same input shifted by 128 must give the int8 output shifted by 128, bit for bit.
"""
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.tflite.inspect import inspect_model


@pytest.fixture(scope="module")
def flat_cal(flatten_model):
    data = rq.synthesize(flatten_model, rq.SynthesisConfig(mode="gaussian", samples_per_class=3, seed=2),
                         input_spec=rq.InputSpec(mean=(0.0,), std=(1.0,)), progress=False)
    return rq.calibrate(flatten_model, data), data


def _raw(b, x):
    """Raw integer outputs of one LiteRT reference-kernel invoke per image (no (de)quantization)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=b, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for row in x:
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        ys.append(it.get_tensor(out["index"])[0].copy())
    return np.stack(ys), inp, out


@pytest.mark.parametrize("kw", [dict(), dict(scheme="per-tensor", weight_bits=4)])
def test_uint8_io_is_int8_shifted_by_128(flatten_model, flat_cal, kw):
    cal, _ = flat_cal
    q8 = rq.convert(flatten_model, None, calibrated=cal, **kw)
    qu = rq.convert(flatten_model, None, calibrated=cal, io="uint8", **kw)
    x8 = np.random.default_rng(9).integers(-128, 128, (12, 8, 8, 2)).astype(np.int8)
    xu = (x8.astype(np.int16) + 128).astype(np.uint8)
    y8, i8, o8 = _raw(q8, x8)
    yu, iu, ou = _raw(qu, xu)
    assert iu["dtype"] == ou["dtype"] == np.uint8 and i8["dtype"] == np.int8
    assert iu["quantization"] == (i8["quantization"][0], i8["quantization"][1] + 128)
    assert ou["quantization"] == (o8["quantization"][0], o8["quantization"][1] + 128)
    np.testing.assert_array_equal(yu.astype(np.int16), y8.astype(np.int16) + 128)
    ops = inspect_model(qu)["op_counts"]
    assert ops.get("QUANTIZE") == 2 and "DEQUANTIZE" not in ops  # uint8 -> int8 in, int8 -> uint8 out
    # run_tflite quantizes float images into either input type: the same float outputs
    images = np.random.default_rng(10).standard_normal((5, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(rq.run_tflite(qu, images, resolver="reference"),
                                  rq.run_tflite(q8, images, resolver="reference"))


def test_mixed_channel_is_the_hybrid_scheme(flatten_model, flat_cal):
    cal, data = flat_cal
    assert rq.Scheme("mixed-channel") is rq.Scheme.HYBRID is rq.Scheme.MIXED
    assert rq.QuantizationConfig(scheme="mixed-channel").scheme == rq.Scheme.HYBRID
    a = rq.convert(flatten_model, data, calibrated=cal, scheme="mixed-channel")
    b = rq.convert(flatten_model, data, calibrated=cal, scheme="hybrid")
    assert a == b
    with pytest.raises(rq.ConfigError, match="mixed-channel"):
        rq.QuantizationConfig(scheme="mixed")
