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
