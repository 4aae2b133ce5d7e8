"""The quality estimate after convert: held-out images, agreement/SQNR and the per-tensor table,
checked against an independent run of the interpreters and numpy."""
import json
import subprocess

import numpy as np
import pytest

import tflite_retroq as rq
from conftest import retroq_command
from tflite_retroq.quality import POOR_AGREEMENT, QualityEstimate, TensorError, holdout_count


def _interp_outputs(model_bytes, images):
    """Independent of tflite_retroq.evaluate: the raw interpreter, one image at a time, (de)quantized by hand."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=bytes(model_bytes))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for x in images:
        x = x[None]
        if i["dtype"] == np.int8:
            s, zp = i["quantization"]
            x = np.clip(np.round(x / s) + zp, -128, 127).astype(np.int8)
        it.set_tensor(i["index"], x)
        it.invoke()
        y = it.get_tensor(o["index"]).astype(np.float64)
        if o["dtype"] == np.int8:
            s, zp = o["quantization"]
            y = (y - zp) * s
        ys.append(y.reshape(-1))
    return np.stack(ys)


@pytest.fixture(scope="module")
def held_out(bn_model, calib_data):
    return rq.holdout_images(bn_model, calib_data)


def test_held_out_images_are_new_and_alike(calib_data, held_out):
    assert len(held_out) == holdout_count(len(calib_data)) == 16
    assert held_out.shape[1:] == calib_data.images.shape[1:]
    flat_cal = calib_data.images.reshape(len(calib_data), -1)
    for x in held_out.reshape(len(held_out), -1):  # none of them is a calibration image
        assert np.min(np.max(np.abs(flat_cal - x), axis=1)) > 1e-3
    # made in the same input space: the same valid range as the calibration images
    assert held_out.min() >= calib_data.images.min() - 1e-6 or held_out.min() >= 0.0
    assert held_out.max() <= 255.0 + 1e-3


def test_agreement_and_sqnr_match_an_independent_computation(bn_model, calib_data, int8_bytes, held_out):
    calibrated = rq.calibrate(bn_model, calib_data)
    q = rq.estimate_quality(int8_bytes, bn_model, held_out, calibrated=calibrated)
    ref = np.asarray(bn_model(held_out), np.float64)
    out = _interp_outputs(int8_bytes, held_out)
    agree = 100.0 * np.mean(np.argmax(out, 1) == np.argmax(ref, 1))
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - out) ** 2))
    assert q.num_images == len(held_out)
    assert q.agreement == pytest.approx(agree, abs=1e-9)
    assert q.sqnr_db == pytest.approx(sqnr, abs=1e-3)
    assert "agreement" in q.line() and f"{q.sqnr_db:.1f} dB" in q.line()


def test_per_tensor_table_matches_the_interpreters(bn_model, calib_data, int8_bytes, held_out):
    """The logits tensor's row equals the RMSE between the int8 and the calibrated float model's outputs,
    computed from the two models' plain outputs; every row is a real int8 activation."""
    calibrated = rq.calibrate(bn_model, calib_data)
    q = rq.estimate_quality(int8_bytes, bn_model, held_out, calibrated=calibrated)
    assert len(q.tensors) >= 4  # conv, depthwise, pool, logits at least
    from tflite_retroq.quality import TABLE_IMAGES
    x = held_out[:TABLE_IMAGES]
    got, want = _interp_outputs(int8_bytes, x), _interp_outputs(calibrated, x)
    rmse = float(np.sqrt(np.mean((got - want) ** 2)))
    last = q.tensors[-1]  # graph order: the logits come last
    # float kernels differ in the last bits between XNNPACK (here) and the builtin ones (the table)
    assert last.rmse == pytest.approx(rmse, rel=1e-4, abs=1e-9)
    assert last.max_abs_error == pytest.approx(float(np.max(np.abs(got - want))), rel=1e-4, abs=1e-9)
    for t in q.tensors:
        assert t.scale > 0 and 0.0 <= t.rmse <= t.max_abs_error + 1e-12
        assert t.rmse_per_scale < 50  # int8 W8A8 of a calibrated model: errors of a few steps, not of the range


def test_poor_is_flagged_by_its_thresholds():
    good = QualityEstimate(32, 100.0, 30.0, (TensorError("a", "CONV_2D", 0.1, 0.03, 0.1),))
    assert not good.poor and good.warning() is None
    bad = QualityEstimate(32, POOR_AGREEMENT - 1.0, 30.0)
    assert bad.poor and "--input-range" in bad.warning() and "\n" not in bad.warning()
    assert QualityEstimate(32, 100.0, 9.0).poor


def test_cli_prints_the_quality_line_and_reports_the_table(tmp_path, bn_model, calib_data):
    model_path, data_path = tmp_path / "m.keras", tmp_path / "d.npz"
    bn_model.save(model_path)
    calib_data.save(str(data_path))
    out, report = tmp_path / "m.tflite", tmp_path / "r.json"
    proc = subprocess.run(retroq_command() + ["convert", str(model_path), "-o", str(out), "--data-file",
                                              str(data_path), "--report", str(report), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("quality estimate")]
    assert len(lines) == 1 and "not used for calibration" in lines[0]
    doc = json.loads(report.read_text())
    q = doc["quality"]
    assert q["num_images"] == 16 and f"{q['agreement']:.1f} %" in lines[0] and f"{q['sqnr_db']:.1f} dB" in lines[0]
    assert q["tensors"] and all(t["rmse_per_scale"] >= 0 for t in q["tensors"])
    # the report's numbers are those of the written model on the same held-out images
    held = rq.holdout_images(bn_model, rq.SyntheticDataset.load(str(data_path)))
    again = rq.estimate_quality(out.read_bytes(), bn_model, held)
    assert again.agreement == pytest.approx(q["agreement"]) and again.sqnr_db == pytest.approx(q["sqnr_db"], abs=1e-6)
