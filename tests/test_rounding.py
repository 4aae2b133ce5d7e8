"""Learned rounding (methods/rounding.py) on the tiny BN model, W4 per-channel and per-tensor.

Checked against independent computations: the float weights and scales read back from the files
(one grid step), the codes and int32 biases recomputed by hand from what the pass reports (bit-exact
export, biases by the converter's float32 rule), and the int8 model's outputs on the calibration images against the float model (learned
error at most the nearest-rounding error).
"""
import numpy as np
import pytest

from tflite_retroq.errors import ConfigError
from tflite_retroq.tflite import model as tfm

ITERATIONS = 60


@pytest.fixture(scope="module")
def w4(bn_model, calib_data):
    """(calibrated, {scheme: (nearest W4 bytes, learned W4 bytes, layers)})."""
    import tflite_retroq as rq
    from tflite_retroq.methods.rounding import RoundingConfig, learned_rounding
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    cal = rq.calibrate(bn_model, calib_data)
    out = {}
    for scheme in ("per-channel", "per-tensor"):
        nearest = limit_weight_bits(rq.quantize_calibrated(cal, scheme), cal, 4)
        learned, layers = learned_rounding(nearest, cal, calib_data.images, 4, RoundingConfig(iterations=ITERATIONS),
                                           return_layers=True)
        out[scheme] = (nearest, learned, layers)
    return cal, out


def _weights(model_bytes):
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    return m, sg, list(tfm.weight_ops(m))


@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
def test_never_more_than_one_grid_step(w4, scheme):
    cal, variants = w4
    _, learned, _ = variants[scheme]
    cm, csg, cops = _weights(cal)
    m, sg, ops = _weights(learned)
    moved = 0
    for wop, fop in zip(ops, cops):
        w = tfm.tensor_array(cm, csg, fop.weight).astype(np.float64)
        q = tfm.tensor_array(m, sg, wop.weight).astype(np.float64)
        s = tfm.scales(sg.tensors[wop.weight]).astype(np.float64)
        shape = [1] * w.ndim
        if s.size > 1:
            shape[3 if wop.kind == "DEPTHWISE_CONV_2D" else 0] = -1
        ratio = w / s.reshape(shape)
        assert np.all(np.abs(q - ratio) < 1.0 + 1e-6), wop.output_name
        assert np.all(np.abs(q) <= 7)
        nearest = np.clip(np.sign(ratio) * np.floor(np.abs(ratio) + 0.5), -7, 7)
        moved += int(np.sum(q != nearest))
    assert moved > 0  # the pass really chose roundings other than nearest


@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
def test_exported_integers_equal_optimized(w4, scheme):
    """Codes in the file are the optimizer's; int32 biases are round-half-away(b / (s_in * s_w)) of its bias."""
    _, variants = w4
    _, learned, layers = variants[scheme]
    _assert_exported(learned, layers)


def _assert_exported(learned, layers):
    m, sg, ops = _weights(learned)
    assert [l.output_name for l in layers] == [w.output_name for w in ops]
    for wop, layer in zip(ops, layers):
        assert np.array_equal(tfm.tensor_array(m, sg, wop.weight), layer.codes), wop.output_name
        if wop.bias < 0:
            continue
        s_in = np.float64(tfm.scales(sg.tensors[wop.input])[0])
        s_w = tfm.scales(sg.tensors[wop.weight]).astype(np.float64)
        bias_scale = (np.float32(s_in) * s_w.astype(np.float32)).astype(np.float32)
        # the converter's rule: float32 bias times the float32 reciprocal of the scale, half away from zero
        ratio = (layer.bias.astype(np.float32) * (1.0 / bias_scale.astype(np.float64)).astype(np.float32))
        ratio = ratio.astype(np.float32).astype(np.float64)
        want = (np.sign(ratio) * np.floor(np.abs(ratio) + 0.5)).astype(np.int64)
        assert np.array_equal(tfm.tensor_array(m, sg, wop.bias).astype(np.int64), want), wop.output_name


@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
def test_learned_error_at_most_nearest_on_calibration_images(w4, bn_model, calib_data, scheme):
    from tflite_retroq.evaluate import keras_outputs, run_tflite
    _, variants = w4
    nearest, learned, layers = variants[scheme]
    ref = keras_outputs(bn_model, calib_data.images)
    err_n = float(np.mean((run_tflite(nearest, calib_data.images, resolver="builtin") - ref) ** 2))
    err_l = float(np.mean((run_tflite(learned, calib_data.images, resolver="builtin") - ref) ** 2))
    assert err_l <= err_n, (err_l, err_n)
    assert all(l.learned_error <= l.nearest_error for l in layers)


def test_convert_learned_matches_pass_deterministic_and_quiet(bn_model, calib_data, w4, capfd):
    import tflite_retroq as rq
    cal, variants = w4
    cfg = rq.RoundingConfig(iterations=ITERATIONS)
    capfd.readouterr()
    a = rq.convert(bn_model, calib_data, weight_bits=4, calibrated=cal, rounding="learned", rounding_config=cfg)
    out, err = capfd.readouterr()
    assert a == variants["per-channel"][1]
    assert out == "" and err == "", (out, err)


def test_options_refused(bn_model, calib_data):
    import tflite_retroq as rq
    from tflite_retroq.methods.rounding import RoundingConfig
    with pytest.raises(ConfigError, match="rounding"):
        rq.convert(bn_model, calib_data, rounding="stochastic")
    with pytest.raises(ConfigError, match="non-uniform"):
        rq.convert(bn_model, calib_data, weight_bits=4, nonuniform=True, rounding="learned")
    with pytest.raises(ConfigError, match="iterations"):
        RoundingConfig(iterations=-1)


def test_cli_learned_int4(bn_model, calib_data, tmp_path):
    """`retroq convert --rounding learned --weight-dtype int4` writes an INT4 file; clashes exit 2 before TF."""
    import subprocess
    from conftest import retroq_command
    model_path, data_path, out = tmp_path / "m.keras", tmp_path / "d.npz", tmp_path / "m4.tflite"
    bn_model.save(model_path)
    calib_data.save(str(data_path))
    proc = subprocess.run(retroq_command() + ["convert", str(model_path), "-o", str(out), "--data-file", str(data_path),
                                              "--weight-bits", "4", "--rounding", "learned", "--weight-dtype", "int4",
                                              "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "learned rounding" in proc.stdout and "INT4 weights" in proc.stdout, proc.stdout
    m = tfm.read(out.read_bytes())
    assert {m.subgraphs[0].tensors[w.weight].type for w in tfm.weight_ops(m)} == {tfm.INT4}
    bad = subprocess.run(retroq_command() + ["convert", str(model_path), "-o", str(tmp_path / "x.tflite"),
                                             "--weight-dtype", "int4"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--weight-bits 4" in bad.stderr and "weight_bits=" not in bad.stderr  # flag words
    assert not (tmp_path / "x.tflite").exists()


# --- Each test below pins one property that a plausible bug breaks (checked by applying the bug). ---

def _fc_problem(seed=0, n=256, cin=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, cin)).astype(np.float32), rng


def test_bias_shift_recovers_a_known_offset():
    """Weights exactly on the grid, targets offset per channel by c: the returned bias is b + c (numpy truth)."""
    from tflite_retroq.methods.reconstruct import LayerOp, optimize_layer
    x, rng = _fc_problem(1)
    s = np.full(4, 0.05, np.float32)
    codes = rng.integers(-7, 8, (4, 8)).astype(np.float32)
    w = codes * s[:, None]
    b = rng.normal(0, 0.2, 4).astype(np.float32)
    c = np.array([0.3, -0.2, 0.5, -0.4], np.float32)
    y = x.astype(np.float64) @ w.T.astype(np.float64) + b + c
    got_codes, got_bias = optimize_layer(LayerOp("FULLY_CONNECTED"), x, y.astype(np.float32), w, s, 0, 4, b, 1.0,
                                         400, 32, 0.01, 0.02, 0)
    assert np.array_equal(got_codes.astype(np.float32), codes)
    assert np.allclose(got_bias, b + c, atol=0.03), (got_bias, b + c)


def test_codes_stay_within_qmax_even_when_the_target_wants_more():
    """A weight at +7 steps whose target sits at +8: at 4 bits the code must stay 7 (the grid is +-(2^(b-1)-1))."""
    from tflite_retroq.methods.reconstruct import LayerOp, optimize_layer
    x, _ = _fc_problem(2, cin=4)
    s = np.array([0.5], np.float32)
    w = np.array([[3.5, 0.5, -1.0, 1.5]], np.float32)          # w / s = [7, 1, -2, 3]: on the grid, 7 = qmax
    target_w = w.copy()
    target_w[0, 0] = 4.0                                         # 8 steps: outside the 4-bit grid
    y = (x.astype(np.float64) @ target_w.T.astype(np.float64)).astype(np.float32)
    codes, _ = optimize_layer(LayerOp("FULLY_CONNECTED"), x, y, w, s, None, 4, np.zeros(1, np.float32), 1.0,
                              300, 32, 0.01, 0.05, 0)
    assert int(np.max(np.abs(codes))) <= 7, codes
    assert np.array_equal(codes, np.array([[7, 1, -2, 3]], np.int8))


def test_fitting_bias_keeps_the_original_only_where_the_learned_bias_would_not_fit():
    from tflite_retroq.methods.rounding import _fitting_bias
    in_scale, scale = 0.01, np.array([1e-3, 1e-3, 1e-3], np.float32)
    limit = (2 ** 31 - 1) // 2 * in_scale * 1e-3                 # largest |bias| the int32 range holds here (~1.07e4)
    bias0 = np.array([1.0, 1.0e4, -2.0], np.float32)
    learned = np.array([1.5, 1.2e4, -2.5], np.float32)
    want = np.where(np.abs(learned) > limit, bias0, learned)
    assert list(want) == [1.5, 1.0e4, -2.5]
    assert np.array_equal(_fitting_bias(learned, bias0, in_scale, scale), want)


def test_learned_biases_reach_the_file(w4):
    """The pass moves some int32 bias away from nearest rounding's (the learned shift is exported)."""
    _, variants = w4
    for scheme, (nearest, learned, layers) in variants.items():
        assert any(not l.kept_nearest for l in layers), scheme
        nm, nsg, nops = _weights(nearest)
        m, sg, ops = _weights(learned)
        moved = sum(int(np.sum(tfm.tensor_array(m, sg, a.bias) != tfm.tensor_array(nm, nsg, b.bias)))
                    for a, b in zip(ops, nops) if a.bias >= 0)
        assert moved > 0, scheme


def test_targets_are_saturated_at_the_output_range():
    """First layer (1x1 conv, no activation) on images beyond the calibrated range: the reported nearest error
    equals a numpy computation against float targets clipped to what the int8 output tensor can hold."""
    import keras
    import tflite_retroq as rq
    from tflite_retroq.methods.rounding import RoundingConfig, learned_rounding
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(5, 1, name="c1")
    out = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(conv(inp)))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(4)
    calib = rng.standard_normal((32, 8, 8, 3)).astype(np.float32)
    images = 3.0 * rng.standard_normal((16, 8, 8, 3)).astype(np.float32)   # beyond the calibrated ranges
    cal = rq.calibrate(model, rq.SyntheticDataset.from_images(calib))
    nearest = limit_weight_bits(rq.quantize_calibrated(cal, "per-channel"), cal, 4)
    _, layers = learned_rounding(nearest, cal, images, 4, RoundingConfig(iterations=0), return_layers=True)
    m, sg, ops = _weights(nearest)
    first = ops[0]
    s_in, zp_in = float(tfm.scales(sg.tensors[first.input])[0]), int(sg.tensors[first.input].quantization.zeroPoint[0])
    xq = (np.clip(np.round(images / s_in) + zp_in, -128, 127) - zp_in) * s_in
    codes = tfm.tensor_array(m, sg, first.weight).astype(np.float64)[:, 0, 0, :]           # [cout, cin]
    wq = codes * tfm.scales(sg.tensors[first.weight]).astype(np.float64)[:, None]
    k, b = (np.asarray(v, np.float64) for v in conv.get_weights())
    out_t = sg.tensors[sg.operators[first.index].outputs[0]]
    s_out, zp_out = float(tfm.scales(out_t)[0]), int(out_t.quantization.zeroPoint[0])
    lo, hi = (-128 - zp_out) * s_out, (127 - zp_out) * s_out
    y = np.clip(images.astype(np.float64) @ k[0, 0] + b, lo, hi)
    assert np.mean(images.astype(np.float64) @ k[0, 0] + b > hi) > 0.01   # the clip matters here
    pred = np.clip(xq @ wq.T + b, lo, hi)
    want = float(np.mean(np.sum((pred - y) ** 2, axis=-1)))
    assert layers[0].nearest_error == pytest.approx(want, rel=1e-3)


def test_per_layer_bits_mapping(bn_model, calib_data):
    """bits={op index: width}: mapped ops optimized on their own grid, absent ops byte-identical, bad plans refused."""
    import tflite_retroq as rq
    from tflite_retroq.methods.rounding import RoundingConfig, learned_rounding
    from tflite_retroq.tflite.weight_bits import matched_ops, requantize_op
    cal = rq.calibrate(bn_model, calib_data)
    qm, cm = tfm.read(rq.quantize_calibrated(cal, "per-channel")), tfm.read(cal)
    pairs = list(matched_ops(qm, cm))
    plan = {pairs[0][0].index: 6, pairs[-1][0].index: 4}          # first conv W6, dense W4, depthwise left at W8
    for wop, fop in pairs:
        if wop.index in plan:
            requantize_op(qm, cm, wop, fop, plan[wop.index], per_channel=True)
    mixed = tfm.write(qm)
    out, layers = learned_rounding(mixed, cal, calib_data.images, plan, RoundingConfig(iterations=ITERATIONS),
                                   return_layers=True)
    assert len(layers) == 2
    m0, sg0, ops0 = _weights(mixed)
    m, sg, ops = _weights(out)
    _, csg, cops = _weights(cal)
    for wop, before, fop in zip(ops, ops0, cops):
        q = tfm.tensor_array(m, sg, wop.weight).astype(np.float64)
        if wop.index not in plan:
            assert np.array_equal(q, tfm.tensor_array(m0, sg0, before.weight))
            assert np.array_equal(tfm.tensor_array(m, sg, wop.bias), tfm.tensor_array(m0, sg0, before.bias))
            continue
        qmax = 2 ** (plan[wop.index] - 1) - 1
        w = tfm.tensor_array(cm, csg, fop.weight).astype(np.float64)
        s = tfm.scales(sg.tensors[wop.weight]).astype(np.float64)
        shape = [1] * w.ndim
        shape[3 if wop.kind == "DEPTHWISE_CONV_2D" else 0] = -1
        assert np.max(np.abs(q)) <= qmax
        assert np.all(np.abs(q - w / s.reshape(shape)) < 1.0 + 1e-6)
    with pytest.raises(ConfigError, match="weight-op indices"):
        learned_rounding(mixed, cal, calib_data.images, {999: 4})
    with pytest.raises(ConfigError, match="beyond 4 bits"):    # the depthwise op still holds 8-bit codes
        learned_rounding(mixed, cal, calib_data.images, {pairs[1][0].index: 4})
    with pytest.raises(ConfigError, match="not valid"):
        learned_rounding(mixed, cal, calib_data.images, {pairs[0][0].index: 9})


def test_block_reconstruction_keeps_the_guarantees():
    """blocks=True on a residual model: codes within one step of w / s at 4 bits, the file holds the reported
    codes and biases (bit-exact, the converter's rule), and the int8 model's output error (LiteRT) on the
    images is at most nearest rounding's."""
    import keras
    import tflite_retroq as rq
    from tflite_retroq.evaluate import run_tflite
    from tflite_retroq.methods.rounding import RoundingConfig, learned_rounding
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    keras.utils.set_random_seed(31)
    inp = keras.Input((10, 10, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(a)
    b = keras.layers.Conv2D(8, 3, padding="same")(b)
    x = keras.layers.ReLU()(keras.layers.Add()([a, b]))
    out = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    images = np.random.default_rng(6).standard_normal((48, 10, 10, 3)).astype(np.float32)
    cal = rq.calibrate(model, rq.SyntheticDataset.from_images(images))
    nearest = limit_weight_bits(rq.quantize_calibrated(cal, "per-channel"), cal, 4)
    out_b, layers = learned_rounding(nearest, cal, images, 4, RoundingConfig(iterations=80, blocks=True),
                                     return_layers=True)
    assert sum(1 for l in layers if l.iterations == layers[1].iterations) >= 2   # the block's ops share one run
    _assert_exported(out_b, layers)
    assert any(not l.kept_nearest for l in layers)
    m, sg, ops = _weights(out_b)
    cm, csg, cops = _weights(cal)
    for wop, fop, layer in zip(ops, cops, layers):
        q = tfm.tensor_array(m, sg, wop.weight)
        w = tfm.tensor_array(cm, csg, fop.weight).astype(np.float64)
        s = tfm.scales(sg.tensors[wop.weight]).astype(np.float64)
        shape = [1] * w.ndim
        shape[3 if wop.kind == "DEPTHWISE_CONV_2D" else 0] = -1
        assert np.all(np.abs(q - w / s.reshape(shape)) < 1.0 + 1e-6) and np.max(np.abs(q)) <= 7
    ref = keras.Model(inp, out)(images).numpy()
    err = {k: float(np.mean((run_tflite(v, images, resolver="builtin") - ref) ** 2))
           for k, v in (("nearest", nearest), ("blocks", out_b))}
    assert err["blocks"] <= err["nearest"], err


def test_interpreter_fallback_and_progress(bn_model, calib_data, w4, monkeypatch, capfd):
    """A model the TF simulation does not cover is captured on the LiteRT interpreter instead; the pass still
    keeps every layer at most at nearest rounding's error, and progress=True reports an ETA per layer."""
    from tflite_retroq.methods import rounding
    cal, variants = w4
    nearest = variants["per-channel"][0]
    monkeypatch.setattr(rounding, "simulate_supported", lambda model: False)
    capfd.readouterr()
    out, layers = rounding.learned_rounding(nearest, cal, calib_data.images, 4, rounding.RoundingConfig(iterations=20),
                                            progress=True, return_layers=True)
    err = capfd.readouterr().err
    assert len(layers) == 3 and all(l.learned_error <= l.nearest_error for l in layers)
    assert all(f"rounding {i}/3 " in err for i in (1, 2, 3)) and "ETA" in err and "100% done" in err, err
    _assert_exported(out, layers)
