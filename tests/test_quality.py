"""The quality estimate after convert: held-out images, agreement/SQNR and the per-tensor table,
checked against an independent run of the interpreters and numpy."""
import json
import subprocess

import numpy as np
import pytest

import tflite_retroq as rq
from conftest import retroq_command
from tflite_retroq.quality import POOR_AGREEMENT, QualityEstimate, TensorError, holdout_count


def _interp_outputs(model_bytes, images, builtin=False):
    """Independent of tflite_retroq.evaluate: the raw interpreter, one image at a time, (de)quantized by hand.
    `builtin`: the builtin kernels (XNNPACK's int8 kernels round differently in the last step)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    it = Interpreter(model_content=bytes(model_bytes), experimental_op_resolver_type=kind)
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
    got, want = _interp_outputs(int8_bytes, x, builtin=True), _interp_outputs(calibrated, x, builtin=True)
    rmse = float(np.sqrt(np.mean((got - want) ** 2)))
    last = q.tensors[-1]  # graph order: the logits come last
    assert last.rmse == pytest.approx(rmse, rel=1e-6, abs=1e-9)
    assert last.max_abs_error == pytest.approx(float(np.max(np.abs(got - want))), rel=1e-6, abs=1e-9)
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


# ----------------------------------------------------------------------------- round 4 (issue 28)

@pytest.mark.parametrize("n", [4, 16])
def test_held_out_images_never_equal_calibration_images_on_small_sets(bn_model, n):
    """As many held-out images as calibration images, made the same way: with the calibration seed they
    would be the very same images; their own seed stream makes every one of them new."""
    data = rq.synthesize(bn_model, rq.SynthesisConfig(images=n, iterations=2, seed=3), progress=False)
    held = rq.holdout_images(bn_model, data, count=n)
    assert len(held) == n
    flat = data.images.reshape(n, -1).astype(np.float64)
    for x in held.reshape(n, -1):
        assert np.min(np.max(np.abs(flat - x), axis=1)) > 1e-3


def test_holdout_count_resolves_one_percent():
    from tflite_retroq.quality import RESOLVING_IMAGES
    assert RESOLVING_IMAGES == 100 and holdout_count(256) == 100 and holdout_count(10_000) == 100
    assert holdout_count(8) == 16
    assert "6.2-point steps" in QualityEstimate(16, 93.75, 30.0).line()
    assert "steps)" not in QualityEstimate(100, 99.0, 30.0).line().split(",")[0]


@pytest.fixture(scope="module")
def io_variants(bn_model, calib_data):
    cal = rq.calibrate(bn_model, calib_data)
    return cal, {io: rq.convert(bn_model, calib_data, calibrated=cal, io=io) for io in ("int8", "uint8", "float")}


def test_per_tensor_table_is_the_same_for_every_io(io_variants, held_out, bn_model):
    """uint8 and float I/O compute what int8 I/O computes (the uint8 grid is the int8 grid shifted by 128):
    the table must list the same tensors, the output row included, with the same errors in steps."""
    cal, models = io_variants
    tables = {io: rq.estimate_quality(q, bn_model, held_out, calibrated=cal).tensors for io, q in models.items()}
    names = [t.name for t in tables["int8"]]
    for io in ("uint8", "float"):
        assert [t.name for t in tables[io]] == names, io
        for a, b in zip(tables["int8"], tables[io]):
            assert b.rmse_per_scale == pytest.approx(a.rmse_per_scale, rel=1e-5, abs=1e-6), (io, a.name)
    assert tables["int8"][-1].op == tables["uint8"][-1].op == tables["float"][-1].op == "FULLY_CONNECTED"


def test_output_range_and_clip_rate_match_the_interpreter(io_variants, bn_model, held_out):
    """The probe's clip rate: images whose float logits leave [(-128 - zp) s, (127 - zp) s] of the int8
    output, computed here from the interpreter's own output details."""
    from ai_edge_litert.interpreter import Interpreter
    from tflite_retroq.quality import output_range
    _, models = io_variants
    it = Interpreter(model_content=models["int8"])
    s, zp = it.get_output_details()[0]["quantization"]
    lo, hi = (-128 - zp) * s, (127 - zp) * s
    for io in ("int8", "uint8", "float"):
        got = output_range(models[io])
        assert got[0] == pytest.approx(lo) and got[1] == pytest.approx(hi) and got[2] == pytest.approx(s), io
    rng = np.random.default_rng(0)
    loud = (held_out * 4.0).clip(0, 255) + rng.uniform(0, 64, held_out.shape).astype(np.float32)
    q = rq.estimate_quality(models["int8"], bn_model, held_out, probes={"loud": loud, "same": held_out})
    ref = np.asarray(bn_model(loud), np.float64)
    want = 100.0 * np.mean(np.any((ref < lo - s / 2) | (ref > hi + s / 2), axis=1))
    got = {p.name: p for p in q.probes}
    assert got["loud"].clipped == pytest.approx(want) and got["loud"].num_images == len(loud)
    assert "clip on" in q.line() and q.to_dict()["probes"][0]["name"] == "loud"
    assert "stays hidden" in q.to_dict()["limits"]


def test_nan_float_outputs_are_named_never_raised(bn_model, int8_bytes, held_out):
    """A float model that outputs NaN: the estimate says so (NaN is not 'poor'), and the images where it
    is finite still count."""
    import keras
    x = keras.Input(bn_model.input.shape[1:])
    y = bn_model(x)
    nan_all = keras.Model(x, keras.ops.log(-keras.ops.abs(y) - 1.0))
    q = rq.estimate_quality(int8_bytes, nan_all, held_out)
    assert np.isnan(q.agreement) and "NaN" in q.line() and not q.poor and q.warning() is None
    first = keras.ops.sum(x, axis=(1, 2, 3), keepdims=False)[:, None]
    some = keras.Model(x, y + keras.ops.log(first - float(np.median(held_out.sum(axis=(1, 2, 3))))))
    q = rq.estimate_quality(int8_bytes, some, held_out)
    assert np.isfinite(q.agreement) and "left out" in q.note and 0 < q.num_images < len(held_out)


def test_a_failing_estimate_never_fails_the_conversion(bn_model, calib_data):
    from tflite_retroq.quality import estimate_after_conversion
    quality, note = estimate_after_conversion(b"not a tflite model", bn_model, calib_data, None)
    assert quality is None and note.startswith("quality estimate skipped: ") and "\n" not in note


def test_advice_follows_the_flags_used():
    bad = QualityEstimate(100, 80.0, 10.0)
    done = bad.warning({"scheme": "per-channel", "weight_bits": 8, "rounding": "nearest", "data_file": True})
    assert "--scheme per-channel" not in done and "--input-" not in done and "--weight-bits" not in done
    assert "--data-file" in done and "\n" not in done
    open_ = bad.warning({"scheme": "per-tensor", "weight_bits": 4, "rounding": "nearest", "data_file": False})
    for words in ("--scheme per-channel", "--input-range", "--weight-bits", "--rounding learned"):
        assert words in open_
    assert "--rounding learned" not in bad.warning({"scheme": "hybrid", "weight_bits": 4, "rounding": "learned"})
