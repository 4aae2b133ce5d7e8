"""INT4 weight storage (tflite/int4.py) and the converter's bias-overflow rule (quant/uniform.fit_bias).

INT4 files are run on the LiteRT interpreter against their int8-container twins; the bias rule is
checked against a hand computation and against the converter's own 8-bit output.
"""
import numpy as np
import pytest

from tflite_retroq.errors import ConfigError, TFLiteModelError
from tflite_retroq.quant.uniform import BIAS_MAX, fit_bias
from tflite_retroq.tflite import model as tfm


def test_int4_packing_by_hand():
    # element 0 in the low nibble, two's complement nibbles: [1, -1] -> 0xF1, [-8, 7] -> 0x78, odd count padded
    packed = tfm.pack_int4(np.array([1, -1, -8, 7, 3], np.int8))
    assert packed.tolist() == [0xF1, 0x78, 0x03]
    assert tfm.unpack_int4(packed, [5]).tolist() == [1, -1, -8, 7, 3]


@pytest.fixture(scope="module")
def w4_pair(lut_model, lut_calibrated):
    import tflite_retroq as rq
    cal, data = lut_calibrated
    twin = rq.convert(lut_model, data, weight_bits=4, calibrated=cal)
    int4 = rq.convert(lut_model, data, weight_bits=4, calibrated=cal, weight_dtype="int4")
    return twin, int4, data


def test_int4_file_runs_identical_to_int8_twin(w4_pair):
    from tflite_retroq.evaluate import run_tflite
    twin, int4, data = w4_pair
    m = tfm.read(int4)
    kinds = {w.kind for w in tfm.weight_ops(m) if m.subgraphs[0].tensors[w.weight].type == tfm.INT4}
    assert kinds == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    # same integers, only the container differs
    t = tfm.read(twin)
    for a, b in zip(tfm.weight_ops(t), tfm.weight_ops(m)):
        assert np.array_equal(tfm.tensor_array(t, t.subgraphs[0], a.weight), tfm.tensor_array(m, m.subgraphs[0], b.weight))
    for resolver in ("builtin", "reference"):
        assert np.array_equal(run_tflite(twin, data.images, resolver=resolver),
                              run_tflite(int4, data.images, resolver=resolver)), resolver
    weights = sum(int(np.prod(m.subgraphs[0].tensors[w.weight].shape)) for w in tfm.weight_ops(m))
    assert len(twin) - len(int4) >= weights // 2 - 64  # half a byte saved per weight


def test_int4_refused_where_it_cannot_hold(lut_model, lut_calibrated):
    import tflite_retroq as rq
    from tflite_retroq.tflite.int4 import to_int4
    cal, data = lut_calibrated
    with pytest.raises(ConfigError, match="weight_bits=4"):
        rq.convert(lut_model, data, weight_bits=8, calibrated=cal, weight_dtype="int4")
    with pytest.raises(ConfigError, match="non-uniform"):
        rq.convert(lut_model, data, weight_bits=4, calibrated=cal, weight_dtype="int4", nonuniform=True)
    with pytest.raises(TFLiteModelError, match="outside"):
        to_int4(rq.convert(lut_model, data, weight_bits=8, calibrated=cal))


def test_fit_bias_rule_by_hand():
    s_in = 0.05
    scale = np.array([1e-9, 0.01], np.float32)
    bias = np.array([4.0, 4.0], np.float32)
    new, mask = fit_bias(scale, bias, s_in)
    # channel 0: 4 / (0.05 * 1e-9) = 8e10 > 2^30 - 1, so s = (4 / (2^31 - 1) // 2) / 0.05; channel 1 fits
    assert mask.tolist() == [True, False]
    assert new[0] == np.float32(4.0 / 1073741823 / np.float64(np.float32(0.05)))
    assert new[1] == np.float32(0.01)
    assert abs(4.0 / (np.float64(np.float32(s_in)) * new[0])) <= BIAS_MAX + 1
    # per tensor: the largest |bias| decides, at >= the limit
    one, m1 = fit_bias(np.array([1e-9], np.float32), np.array([1.0, -4.0], np.float32), s_in)
    assert m1.tolist() == [True] and one[0] == np.float32(4.0 / 1073741823 / np.float64(np.float32(0.05)))


def _overflow_model():
    """Conv whose channel 0 has near-zero weights and a large bias: its bias cannot fit at max|w|/127."""
    import keras
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, name="fc")(x)
    model = keras.Model(inp, out)
    conv = model.get_layer("conv")
    k = conv.kernel.numpy()
    k[..., 0] = 1e-9 * np.sign(k[..., 0] + 1e-12)
    conv.kernel.assign(k)
    conv.bias.assign(np.array([3.0, 0.1, -0.1, 0.2], np.float32))
    return model


def test_bias_overflow_as_the_converter(tmp_path):
    import tflite_retroq as rq
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    model = _overflow_model()
    images = np.random.default_rng(0).standard_normal((16, 6, 6, 2)).astype(np.float32)
    cal = rq.calibrate(model, images, logit_range="calibrated")
    q8 = rq.quantize_calibrated(cal)
    m = tfm.read(q8)
    conv = next(w for w in tfm.weight_ops(m) if w.kind == "CONV_2D")
    sg = m.subgraphs[0]
    s_in = np.float64(tfm.scales(sg.tensors[conv.input])[0])
    hand = np.float32(3.0 / BIAS_MAX / np.float64(np.float32(s_in)))
    assert tfm.scales(sg.tensors[conv.weight])[0] == pytest.approx(hand, rel=1e-6)  # the converter's own rule
    # our pass at 8 bits reproduces the converter bit for bit, the enlarged channel included
    ours = tfm.read(limit_weight_bits(q8, cal, 8))
    for a, b in zip(tfm.weight_ops(m), tfm.weight_ops(ours)):
        for idx in ("weight", "bias"):
            ta, tb = sg.tensors[getattr(a, idx)], ours.subgraphs[0].tensors[getattr(b, idx)]
            assert np.array_equal(tfm.tensor_array(m, sg, getattr(a, idx)),
                                  tfm.tensor_array(ours, ours.subgraphs[0], getattr(b, idx)))
            np.testing.assert_allclose(tfm.scales(ta), tfm.scales(tb), rtol=1e-6)
    # at 4 bits the channel is enlarged too, and its bias is exact, not clipped
    q4 = tfm.read(limit_weight_bits(q8, cal, 4))
    c4 = next(w for w in tfm.weight_ops(q4) if w.kind == "CONV_2D")
    s4 = tfm.scales(q4.subgraphs[0].tensors[c4.weight])
    assert s4[0] == hand
    bq = tfm.tensor_array(q4, q4.subgraphs[0], c4.bias)
    bias_scale = np.float32(np.float32(s_in) * hand)  # the bias scale is a float32 product, as the converter's
    ratio = 3.0 / np.float64(bias_scale)
    assert int(bq[0]) == int(np.floor(ratio + 0.5)) and abs(int(bq[0])) <= BIAS_MAX + 1
