"""tflite/weight_tables.py and convert(nonuniform=True): the int8 weights are the numpy quantizer's
levels on the int8 grid, biases follow, every LiteRT resolver runs the result, and the int8 output
matches a float computation with the dequantized weights."""
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.quant import nonuniform as nu
from tflite_retroq.errors import ConfigError
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite import weight_tables as wt
from tflite_retroq.tflite.weight_bits import matched_ops, requantize_op

from conftest import H, W, C, NUM_CLASSES, structured_images


def _images(n=24, seed=1):
    return structured_images(n, np.random.default_rng(seed))


def _expected_int8(w, kind, bits, per_channel):
    """Independent: scale = max|w|/127 per channel (or tensor), levels from nu.quantize, rounded to the grid."""
    axis = (3 if kind == "DEPTHWISE_CONV_2D" else 0) if per_channel else None
    if axis is None:
        scale = np.float32(np.abs(w).max()) / np.float32(127)
        return np.clip(np.round(nu.quantize(w, bits).dequantize().astype(np.float64) / scale), -127, 127), scale
    red = tuple(a for a in range(w.ndim) if a != axis)
    scale = (np.abs(w).max(axis=red).astype(np.float32) / np.float32(127)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    deq = nu.quantize(w, bits, axis=axis).dequantize().astype(np.float64)
    return np.clip(np.round(deq / scale.reshape(shape)), -127, 127), scale


def _check_tensors(out_bytes, cal_bytes, bits, schemes):
    model, cal = tfm.read(out_bytes), tfm.read(cal_bytes)
    seen = 0
    for wop, fop in matched_ops(model, cal):
        sg, fsg = model.subgraphs[wop.subgraph], cal.subgraphs[fop.subgraph]
        w = tfm.tensor_array(cal, fsg, fop.weight)
        per_channel = schemes[wop.kind] if isinstance(schemes, dict) else schemes
        q_exp, scale = _expected_int8(w, wop.kind, bits, per_channel)
        q = tfm.tensor_array(model, sg, wop.weight)
        np.testing.assert_array_equal(q.astype(np.int64), q_exp.astype(np.int64), err_msg=wop.kind)
        np.testing.assert_allclose(tfm.scales(sg.tensors[wop.weight]), np.atleast_1d(scale), rtol=1e-6)
        b = tfm.tensor_array(cal, fsg, fop.bias)
        in_scale = float(tfm.scales(sg.tensors[wop.input])[0])
        bq = tfm.tensor_array(model, sg, wop.bias)
        np.testing.assert_array_equal(bq, np.round(b.astype(np.float64) / (np.float64(in_scale) *
                                                                          np.atleast_1d(scale).astype(np.float64))))
        assert np.unique(q).size <= (2 ** bits) * (len(np.atleast_1d(scale)))
        seen += 1
    assert seen == 4


@pytest.mark.parametrize("scheme, bits", [("per-tensor", 4), ("per-channel", 4), ("per-channel", 6),
                                          ("per-tensor", 8)])
def test_exported_codes_equal_numpy_quantizer(lut_model, lut_calibrated, scheme, bits):
    cal, _ = lut_calibrated
    out = rq.convert(lut_model, None, scheme=scheme, weight_bits=bits, nonuniform=True, calibrated=cal)
    _check_tensors(out, cal, bits, scheme == "per-channel")
    # a uniform model at the same bits is a different file
    assert out != rq.convert(lut_model, None, scheme=scheme, weight_bits=bits, calibrated=cal)


def test_mixed_schemes_follow_each_tensor(lut_model, lut_calibrated):
    """Hybrid-style input (some layers per-tensor, some per-channel): each tensor keeps its own scheme."""
    cal, _ = lut_calibrated
    pc = rq.quantize_calibrated(cal, "per-channel")
    model, calm = tfm.read(pc), tfm.read(cal)
    for wop, fop in matched_ops(model, calm):
        if wop.kind in ("DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            requantize_op(model, calm, wop, fop, 8, per_channel=False)
    mixed = tfm.write(model)
    out = wt.nonuniform_weights(mixed, cal, 4)
    schemes = {"CONV_2D": True, "DEPTHWISE_CONV_2D": False, "FULLY_CONNECTED": False}
    _check_tensors(out, cal, 4, schemes)
    m = tfm.read(out)
    for wop in tfm.weight_ops(m):
        assert (tfm.scales(m.subgraphs[0].tensors[wop.weight]).size > 1) == schemes[wop.kind]


@pytest.mark.parametrize("scheme", ["per-tensor", "per-channel"])
def test_runs_on_all_resolvers_and_matches_float_with_same_weights(lut_model, lut_calibrated, scheme):
    cal, _ = lut_calibrated
    q = rq.quantize_calibrated(cal, scheme)
    out = wt.nonuniform_weights(q, cal, 4)
    x = _images()
    outs = {r: rq.run_tflite(out, x, resolver=r) for r in ("auto", "builtin", "reference")}
    o = tfm.read(out)
    out_t = o.subgraphs[0].tensors[o.subgraphs[0].outputs[0]]
    step = float(tfm.scales(out_t)[0])
    for r, y in outs.items():
        assert np.abs(y - outs["reference"]).max() <= step + 1e-6, r
    # The float model carrying exactly the dequantized int8 weights (q x scale), float activations.
    sim = rq.run_tflite(wt.simulated_model(q, cal, 4, snap=True), x)
    # The int8 model adds activation rounding at each of its 6 quantized activations (input, conv1,
    # dw, conv2, mean, fc): allow one output step per activation.
    assert np.abs(outs["reference"] - sim).max() <= 6 * step
    assert np.mean(np.argmax(sim, 1) == np.argmax(outs["reference"], 1)) >= 0.9


def test_single_layer_within_one_step(tmp_path):
    """Flatten -> Dense, per-channel non-uniform W4: the int8 output equals a numpy float layer with the
    dequantized weights (inputs as the model quantizes them) to within one output step."""
    import keras
    keras.utils.set_random_seed(5)
    inp = keras.Input((4, 4, C))
    out = keras.layers.Dense(NUM_CLASSES)(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(5)
    k = rng.standard_t(3, (4 * 4 * C, NUM_CLASSES)).astype(np.float32) * 0.2
    model.layers[-1].kernel.assign(k)
    model.layers[-1].bias.assign(rng.normal(0, 0.3, NUM_CLASSES).astype(np.float32))
    x = rng.standard_normal((64, 4, 4, C)).astype(np.float32)
    cal = rq.calibrate(model, x)
    for scheme in ("per-channel", "per-tensor"):
        tfl = rq.convert(model, None, scheme=scheme, weight_bits=4, nonuniform=True, calibrated=cal)
        m = tfm.read(tfl)
        sg = m.subgraphs[0]
        (wop,) = list(tfm.weight_ops(m))
        s_in = float(tfm.scales(sg.tensors[sg.inputs[0]])[0])
        zp_in = sg.tensors[sg.inputs[0]].quantization.zeroPoint[0]
        out_t = sg.tensors[sg.outputs[0]]
        s_out = float(tfm.scales(out_t)[0])
        axis = 0 if scheme == "per-channel" else None
        wdeq = nu.quantize(k.T, 4, axis=axis).dequantize()  # TFLite stores FC weights [out, in]
        xq = (np.clip(np.round(x / s_in) + zp_in, -128, 127) - zp_in) * s_in
        # the weights the int8 model holds are the levels rounded to the int8 grid
        sw = tfm.scales(sg.tensors[wop.weight]).reshape(-1, 1)
        wgrid = np.round(wdeq / sw) * sw
        ref = xq.reshape(len(x), -1) @ wgrid.T + model.layers[-1].bias.numpy()
        zp_out = out_t.quantization.zeroPoint[0]
        ref = np.clip(ref, (-128 - zp_out) * s_out, (127 - zp_out) * s_out)  # the output's int8 range
        y = rq.run_tflite(tfl, x, resolver="reference")
        assert np.abs(y - ref).max() <= 1.0 * s_out + 1e-6, (scheme, np.abs(y - ref).max() / s_out)


def test_simulated_k8_keeps_levels_the_int8_grid_merges(lut_model, lut_calibrated):
    cal, _ = lut_calibrated
    q = rq.quantize_calibrated(cal, "per-tensor")
    entries = wt.write_tables(q, cal, 8)[1]
    merged = sum(e.summary()["merged_levels"] for e in entries)
    assert merged > 0  # 256 levels on a 255-point grid cannot all survive
    sim = tfm.read(wt.simulated_model(q, cal, 8))
    calm = tfm.read(cal)
    for wop, fop in matched_ops(tfm.read(q), calm):
        w = tfm.tensor_array(calm, calm.subgraphs[0], fop.weight)
        np.testing.assert_array_equal(tfm.tensor_array(sim, sim.subgraphs[0], fop.weight),
                                      nu.quantize(w, 8).dequantize())


def test_convert_refuses_bad_options(lut_model, lut_calibrated):
    cal, _ = lut_calibrated
    with pytest.raises(ConfigError, match="pack"):
        rq.convert(lut_model, None, pack="zip", calibrated=cal)
    with pytest.raises(ConfigError):
        rq.convert(lut_model, None, nonuniform=True, weight_bits=5, calibrated=cal)
    with pytest.raises(ConfigError):
        rq.convert(lut_model, None, nonuniform="yes", calibrated=cal)


def test_hybrid_then_nonuniform(lut_model, lut_calibrated):
    """convert(scheme='hybrid', nonuniform=True): each tensor gets levels of the scheme hybrid gave it."""
    cal, data = lut_calibrated
    out = rq.convert(lut_model, data, scheme="hybrid", weight_bits=4, nonuniform=True, calibrated=cal,
                     max_per_channel=2)
    m = tfm.read(out)
    calm = tfm.read(cal)
    n_pc = 0
    for wop, fop in matched_ops(m, calm):
        pc = tfm.scales(m.subgraphs[0].tensors[wop.weight]).size > 1
        n_pc += pc
        w = tfm.tensor_array(calm, calm.subgraphs[0], fop.weight)
        q_exp, _ = _expected_int8(w, wop.kind, 4, pc)
        np.testing.assert_array_equal(tfm.tensor_array(m, m.subgraphs[0], wop.weight).astype(np.int64),
                                      q_exp.astype(np.int64), err_msg=wop.output_name)
    assert 1 <= n_pc <= 2, n_pc  # a real mix of schemes
