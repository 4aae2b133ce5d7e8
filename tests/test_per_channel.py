"""The per-channel pass and convert(scheme='hybrid'), checked against the converter's own models.

One calibration gives the converter's per-tensor and per-channel models; the pass applied to
the per-tensor one must reproduce, bit for bit, the per-channel model's tensors for every chosen
layer and leave the others as the per-tensor model has them.
"""
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.errors import ConfigError, DataError, TFLiteModelError
from tflite_retroq.methods.hybrid import match_layers
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.per_channel import per_channel_ops, to_per_channel

from test_sensitivity import build_residual_model, H, W, C


@pytest.fixture(scope="module")
def model():
    return build_residual_model(1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).normal(0, 1, (24, H, W, C)).astype(np.float32)


@pytest.fixture(scope="module")
def calibrated(model, images):
    return rq.calibrate(model, images)


@pytest.fixture(scope="module", params=["int8", "float"])
def pair(request, calibrated):
    io = request.param
    return io, rq.quantize_calibrated(calibrated, "per-tensor", io), rq.quantize_calibrated(calibrated, "per-channel", io)


def _zp(t):
    z = t.quantization.zeroPoint
    return [] if z is None else [int(v) for v in z]


def _tensors(data):
    """Per weight op: (weight values, weight scales, zero points, quantized_dimension, bias values, bias scales)."""
    m = tfm.read(data)
    out = []
    for w in tfm.weight_ops(m):
        sg = m.subgraphs[w.subgraph]
        wt, bt = sg.tensors[w.weight], sg.tensors[w.bias]
        out.append((tfm.tensor_array(m, sg, w.weight), tfm.scales(wt), _zp(wt),
                    tfm.quantized_dimension(wt), tfm.tensor_array(m, sg, w.bias), tfm.scales(bt),
                    _zp(bt), tfm.quantized_dimension(bt)))
    return out


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_each_chosen_layer_is_bit_exact_with_the_converters_per_channel_model(pair, calibrated):
    io, pt, pc = pair
    want_pt, want_pc = _tensors(pt), _tensors(pc)
    assert len(want_pc) == 4
    assert not any(_same(a, b) for a, b in zip(want_pt, want_pc))  # PT and PC really differ per layer
    for chosen in range(len(want_pc)):
        got = _tensors(to_per_channel(pt, calibrated, [chosen]))
        for i, t in enumerate(got):
            assert _same(t, want_pc[i] if i == chosen else want_pt[i]), (io, chosen, i)
    dims = [t[3] for t in want_pc]
    assert dims == [0, 3, 0, 0]  # CONV_2D, DEPTHWISE_CONV_2D (dim 3), CONV_2D, FULLY_CONNECTED


def test_none_chosen_is_per_tensor_all_chosen_is_per_channel(pair, calibrated, images):
    io, pt, pc = pair
    assert to_per_channel(pt, calibrated, []) == pt
    full = to_per_channel(pt, calibrated, [0, 1, 2, 3])
    assert per_channel_ops(full) == [0, 1, 2, 3] and per_channel_ops(pt) == []
    for resolver in ("auto", "reference"):
        assert np.array_equal(rq.run_tflite(full, images, resolver=resolver),
                              rq.run_tflite(pc, images, resolver=resolver))
    # Layers referenced by output name work like positions.
    names = [w.output_name for w in tfm.weight_ops(tfm.read(pt))]
    assert to_per_channel(pt, calibrated, [names[1]]) == to_per_channel(pt, calibrated, [1])


def test_bad_layer_references(pair, calibrated):
    _, pt, _ = pair
    for ref in (7, -1, "no/such/op", True, 1.0):
        with pytest.raises(TFLiteModelError):
            to_per_channel(pt, calibrated, [ref])
    with pytest.raises(TFLiteModelError):
        to_per_channel(pt, calibrated, [0], bits=9)


def test_keras_layers_map_to_their_ops(model, calibrated):
    mapping = match_layers(model, calibrated)
    assert list(mapping) == ["c0", "dw", "pw", "fc"]
    m = tfm.read(calibrated)
    ops = {w.output_name: w for w in tfm.weight_ops(m)}
    for name, op in mapping.items():  # the converter names the kernel after the layer
        weight_name = tfm.tensor_name(m.subgraphs[0].tensors[ops[op].weight])
        assert f"/{name}_1/" in weight_name, (name, weight_name)
    assert [ops[o].kind for o in mapping.values()] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]


def _plan(names):
    decisions = tuple((n, k, "per-channel" if n in names else "per-tensor", 0.0)
                      for n, k in (("c0", "CONV_2D"), ("dw", "DEPTHWISE_CONV_2D"), ("pw", "CONV_2D"),
                                   ("fc", "FULLY_CONNECTED")))
    return rq.HybridPlan(config=rq.HybridConfig(), per_channel=tuple(names), decisions=decisions)


def test_convert_hybrid_with_plans(model, images, calibrated, pair):
    io, pt, pc = pair
    none = rq.convert(model, images, scheme="hybrid", plan=_plan([]), calibrated=calibrated, io=io)
    every = rq.convert(model, images, scheme="hybrid", plan=_plan(["fc", "pw", "dw", "c0"]), calibrated=calibrated,
                       io=io)
    assert np.array_equal(rq.run_tflite(none, images), rq.run_tflite(pt, images))
    assert np.array_equal(rq.run_tflite(every, images), rq.run_tflite(pc, images))
    one = rq.convert(model, images, scheme="hybrid", plan=_plan(["dw"]), calibrated=calibrated, io=io)
    assert per_channel_ops(one) == [1]


@pytest.mark.parametrize("bits", [8, 4])
def test_convert_hybrid_follows_the_sensitivity_and_composes_with_weight_bits(model, images, calibrated, bits):
    sens = rq.analyze_sensitivity(model, images, weight_bits=bits)
    plan = sens.select(threshold=-1.0, max_per_channel=2)
    assert len(plan.per_channel) == 2
    out = rq.convert(model, images, scheme="hybrid", threshold=-1.0, max_per_channel=2, weight_bits=bits,
                     calibrated=calibrated)
    order = sens.names
    assert per_channel_ops(out) == sorted(order.index(n) for n in plan.per_channel)
    # Each layer equals the converter's PT or PC model at the same weight bits.
    pt = rq.convert(model, images, scheme="per-tensor", weight_bits=bits, calibrated=calibrated)
    pc = rq.convert(model, images, scheme="per-channel", weight_bits=bits, calibrated=calibrated)
    got, want_pt, want_pc = _tensors(out), _tensors(pt), _tensors(pc)
    for i, name in enumerate(order):
        assert _same(got[i], want_pc[i] if name in plan.per_channel else want_pt[i]), (bits, name)
    # fully_connected_per_tensor keeps the Dense per-tensor even with no budget.
    no_fc = rq.convert(model, images, scheme="hybrid", threshold=-1.0, fully_connected_per_tensor=True,
                       weight_bits=bits, calibrated=calibrated)
    assert per_channel_ops(no_fc) == [0, 1, 2]


def test_hybrid_option_errors(model, images, calibrated):
    with pytest.raises(ConfigError):
        rq.convert(model, images, scheme="per-channel", threshold=0.1, calibrated=calibrated)
    with pytest.raises(ConfigError):
        rq.convert(model, images, scheme="per-tensor", max_per_channel=1, calibrated=calibrated)
    with pytest.raises(ConfigError):
        rq.convert(model, images, scheme="hybrid", plan=_plan([]), threshold=0.1, calibrated=calibrated)
    with pytest.raises(ConfigError):
        rq.convert(model, images, scheme="hybrid", max_per_channel=-2, calibrated=calibrated)
    with pytest.raises(ConfigError):
        rq.quantize_calibrated(calibrated, "hybrid")
    with pytest.raises(DataError):
        rq.convert(model, lambda: iter([[images[:1]]]), scheme="hybrid", calibrated=calibrated)


def test_depth_multiplier_layer_is_bit_exact_and_matched():
    import keras
    keras.utils.set_random_seed(7)
    inp = keras.Input((H, W, C))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw2")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, name="fc")(x)
    m = keras.Model(inp, out)
    bn = m.get_layer("bn")
    bn.gamma.assign(np.geomspace(0.05, 3.0, 6).astype(np.float32))  # uneven channels after folding
    x = np.random.default_rng(2).normal(0, 1, (16, H, W, C)).astype(np.float32)
    cal = rq.calibrate(m, x)
    pt, pc = rq.quantize_calibrated(cal, "per-tensor"), rq.quantize_calibrated(cal, "per-channel")
    assert list(match_layers(m, cal)) == ["dw2", "fc"]
    got, want = _tensors(to_per_channel(pt, cal, [0])), _tensors(pc)
    assert _same(got[0], want[0]) and got[0][3] == 3 and len(got[0][1]) == 6
    plan = rq.HybridPlan(config=rq.HybridConfig(), per_channel=("dw2",),
                         decisions=(("dw2", "DEPTHWISE_CONV_2D", "per-channel", 1.0),
                                    ("fc", "FULLY_CONNECTED", "per-tensor", 0.0)))
    hyb = rq.convert(m, x, scheme="hybrid", plan=plan, calibrated=cal)
    assert _same(_tensors(hyb)[0], want[0]) and per_channel_ops(hyb) == [0]


def test_hybrid_composes_with_nonuniform(model, images, calibrated):
    """Each layer of a non-uniform hybrid equals the non-uniform per-channel or per-tensor model's layer."""
    kw = dict(weight_bits=4, nonuniform=True, calibrated=calibrated)
    hyb = rq.convert(model, images, scheme="hybrid", plan=_plan(["dw", "fc"]), **kw)
    pt, pc = _tensors(rq.convert(model, images, scheme="per-tensor", **kw)), _tensors(
        rq.convert(model, images, scheme="per-channel", **kw))
    got = _tensors(hyb)
    for i, name in enumerate(["c0", "dw", "pw", "fc"]):
        assert _same(got[i], pc[i] if name in ("dw", "fc") else pt[i]), name
