"""Target estimates: Vela (Ethos-U), the TFLite Micro runtime, LiteRT latency, `retroq inspect --target`.

Parsed Vela fields are checked against numbers computed here from the model itself
(weight bytes, MAC count) and against Vela's own clock (cycles / 500 MHz); TFLM
outputs against the LiteRT interpreter on the same int8 model.
"""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.targets import estimate, litert, tflm, vela
from tflite_retroq.errors import TargetError
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.inspect import inspect_model


@pytest.fixture(scope="module")
def flat_cal(flatten_model):
    data = rq.synthesize(flatten_model, rq.SynthesisConfig(mode="gaussian", samples_per_class=3, seed=2),
                         progress=False)
    return rq.calibrate(flatten_model, data, batch_size=1)


@pytest.fixture(scope="module")
def w8(flatten_model, flat_cal):
    return rq.convert(flatten_model, None, calibrated=flat_cal, batch_size=1)


@pytest.fixture(scope="module")
def w4(flatten_model, flat_cal):
    return rq.convert(flatten_model, None, calibrated=flat_cal, batch_size=1, weight_bits=4)


@pytest.fixture(scope="module")
def vela_w8(w8):
    return vela.vela_estimate(w8, "ethos-u55-128")


def _macs(model_bytes):
    """Multiply-accumulates of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED from tensor shapes."""
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    total = 0
    for w in tfm.weight_ops(m):
        wshape = list(sg.tensors[w.weight].shape)
        out = list(sg.tensors[sg.operators[w.index].outputs[0]].shape)
        if w.kind == "CONV_2D":       # weights [out, kh, kw, in]
            total += int(np.prod(out)) * wshape[1] * wshape[2] * wshape[3]
        elif w.kind == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, ch]
            total += int(np.prod(out)) * wshape[1] * wshape[2]
        else:                          # weights [out, in]
            total += int(np.prod(out)) * wshape[1]
    return total


def test_vela_parses_the_summary(w8, vela_w8):
    e = vela_w8
    assert (e.accelerator, e.system_config, e.memory_mode) == ("ethos-u55-128", "Ethos_U55_High_End_Embedded",
                                                               "Shared_Sram")
    assert e.cpu_ops == 0 and e.npu_ops > 0 and e.cpu_op_types == () and e.npu_fraction == 1.0
    m = tfm.read(w8)
    weight_bytes = sum(tfm.tensor_array(m, m.subgraphs[0], w.weight).nbytes for w in tfm.weight_ops(m))
    assert e.original_weight_bytes == weight_bytes == 288 + 144 + 1024
    assert e.macs == _macs(w8) == 4 * 4 * 16 * 18 + 4 * 4 * 16 * 9 + 256 * 4
    assert e.inference_time_s == pytest.approx(e.cycles / 500e6, rel=1e-6)  # U55 High_End_Embedded: 500 MHz
    assert e.inferences_per_second == pytest.approx(1.0 / e.inference_time_s, rel=1e-6)
    assert e.flash_bytes >= e.encoded_weight_bytes > 0 and e.sram_bytes > 0 and e.dram_bytes == 0
    d = e.to_dict()
    assert d["npu_fraction"] == 1.0 and d["cpu_op_types"] == [] and d["vela_version"] == e.vela_version


def test_vela_weight_encoder_rewards_fewer_levels(w4, vela_w8):
    e4 = vela.vela_estimate(w4, "ethos-u55-128")
    assert e4.original_weight_bytes == vela_w8.original_weight_bytes  # still int8 tensors
    assert e4.encoded_weight_bytes < vela_w8.encoded_weight_bytes


def test_vela_other_accelerators(w8):
    for acc in ("ethos-u65-256", "ethos-u85-256"):
        e = vela.vela_estimate(w8, acc)
        assert e.accelerator == acc and e.system_config == vela.ETHOS_U[acc][0]
        assert e.cpu_ops == 0 and e.flash_bytes > 0 and e.inference_time_s > 0


def test_vela_float_model_stays_on_the_cpu(flatten_model):
    fl = rq.float_tflite(flatten_model, batch_size=1)
    e = vela.vela_estimate(fl)
    assert e.npu_ops == 0 and e.cpu_ops == inspect_model(fl)["num_ops"]
    assert set(e.cpu_op_types) == set(inspect_model(fl)["op_counts"])


def test_vela_rejection_is_a_target_error(w8):
    with pytest.raises(TargetError, match="Vela rejected"):
        vela.vela_estimate(w8, "ethos-u99-7")
    with pytest.raises(rq.TFLiteModelError):
        vela.vela_estimate(b"not a model at all")


@pytest.mark.parametrize("module, call", [("ethosu.vela", "vela"), ("tflite_micro", "tflm")])
def test_missing_tool_is_a_target_error(monkeypatch, w8, module, call):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(TargetError, match="targets"):
        vela.vela_estimate(w8) if call == "vela" else tflm.tflm_run(w8)


def _activation_lower_bound(model_bytes):
    """Bytes of the largest (inputs + output) set of non-constant tensors one op needs at once."""
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    size = {9: 1, 2: 4, 0: 4}
    best = 0
    for op in sg.operators:
        live = [i for i in list(op.inputs) + list(op.outputs) if i >= 0 and tfm.tensor_array(m, sg, i) is None]
        best = max(best, sum(int(np.prod(sg.tensors[i].shape)) * size[sg.tensors[i].type] for i in set(live)))
    return best


def test_tflm_matches_litert(w8, w4):
    images = np.random.default_rng(5).standard_normal((6, 8, 8, 2)).astype(np.float32)
    for b in (w8, w4):
        r = tflm.tflm_run(b, images)
        assert r.outputs.shape == (6, 4)
        np.testing.assert_array_equal(r.outputs, rq.run_tflite(b, images, resolver="reference"))
        assert r.arena_bytes >= _activation_lower_bound(b) > 0
        assert r.model_bytes == len(b) and r.to_dict()["arena_bytes"] == r.arena_bytes


def test_tflm_runs_a_dynamic_batch_model_too(flatten_model, flat_cal):
    """The default (dynamic) export also runs on TFLM, with the same outputs as the static one."""
    data = rq.synthesize(flatten_model, rq.SynthesisConfig(mode="gaussian", samples_per_class=3, seed=2),
                         progress=False)
    dyn = rq.convert(flatten_model, data)
    images = np.random.default_rng(6).standard_normal((3, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(tflm.tflm_run(dyn, images).outputs,
                                  rq.run_tflite(dyn, images, resolver="reference"))


def test_tflm_errors(w8):
    with pytest.raises(TargetError, match="arena"):
        tflm.tflm_run(w8, arena_size=256)
    with pytest.raises(TargetError, match="do not fit"):
        tflm.tflm_run(w8, np.zeros((1, 4, 4, 2), np.float32))


def test_litert_latency(w8, w4):
    lat = litert.litert_latency(w8, runs=5, warmup=1)
    assert isinstance(lat, litert.LiteRTLatency) and lat.runs == 5 and lat.num_threads == 1
    assert all(getattr(lat, f"{r}_s") > 0 for r in litert.RESOLVERS) and " us" in str(lat)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lat.auto_s = 0.0
    only = litert.litert_latency(w8, ("builtin",), runs=2, warmup=0)
    assert only.builtin_s > 0 and only.auto_s is None and only.reference_s is None
    both = litert.litert_latencies({"w8": w8, "w4": w4}, ("builtin",), runs=3, warmup=0)
    assert set(both) == {"w8", "w4"} and set(both["w4"]) == {"builtin"}
    with pytest.raises(rq.ConfigError):
        litert.litert_latency(w8, runs=0)


def test_estimate_dispatch(w8):
    assert estimate.estimate(w8, "tflm")["arena_bytes"] > 0
    assert estimate.estimate(w8, "ethos-u55-128")["npu_ops"] > 0
    with pytest.raises(rq.ConfigError, match="not known"):
        estimate.estimate(w8, "hexagon")


# ----------------------------------------------------------------------------- CLI

def _retroq(*args):
    exe = Path(sys.executable).with_name("retroq")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "tflite_retroq.cli"]
    env = {k: v for k, v in os.environ.items() if k != "RETROQ_TRACEBACK"}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=180, env=env)


def test_cli_inspect_target(tmp_path, w8, vela_w8):
    path = tmp_path / "m.tflite"
    path.write_bytes(w8)
    proc = _retroq("inspect", path, "--target", "ethos-u55-128,tflm")
    assert proc.returncode == 0, proc.stderr
    assert "weight layers:" in proc.stdout and "target estimates:" in proc.stdout
    assert f"{vela_w8.encoded_weight_bytes:,}" in proc.stdout and "tensor arena" in proc.stdout
    proc = _retroq("inspect", path, "--json", "--target", "tflm,ethos-u85-256")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["layers"] and set(info["targets"]) == {"tflm", "ethos-u85-256"}
    assert info["targets"]["tflm"]["arena_bytes"] == tflm.tflm_run(w8).arena_bytes
    assert info["targets"]["ethos-u85-256"]["original_weight_bytes"] == vela_w8.original_weight_bytes


@pytest.mark.parametrize("args, expect", [
    (["--target", "hexagon"], "not known"),
    (["--target", ""], "needs a value"),
])
def test_cli_inspect_target_errors(tmp_path, w8, args, expect):
    path = tmp_path / "m.tflite"
    path.write_bytes(w8)
    proc = _retroq("inspect", path, *args)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("retroq: error:"), proc.stderr
    assert expect in lines[0] and proc.stdout == ""


def test_cli_convert_static_batch(tmp_path, flatten_model):
    model_path = tmp_path / "m.keras"
    flatten_model.save(model_path)
    out = tmp_path / "static.tflite"
    proc = _retroq("convert", model_path, "-o", out, "--data", "gaussian", "--samples", "2", "--static-batch", "1",
                   "--quiet", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["config"]["quantization"]["static_batch"] == 1
    info = inspect_model(out.read_bytes())
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(info["op_counts"])
    assert info["inputs"][0]["shape"] == [1, 8, 8, 2]
    bad = _retroq("convert", model_path, "-o", tmp_path / "x.tflite", "--static-batch", "0")
    assert bad.returncode == 2 and "--static-batch" in bad.stderr and "between 1 and" in bad.stderr and not (tmp_path / "x.tflite").exists()
    bad = _retroq("inspect", out, "--static-batch", "1")
    assert bad.returncode == 2 and "does not apply" in bad.stderr


def test_tflm_runs_lut_packed_models(flatten_model, flat_cal):
    """A LUT-packed model (DECODE operators, which LiteRT cannot run) runs on TFLM with the same outputs as its
    unpacked twin, and `inspect` reads it (scalar tensors without a shape vector)."""
    kw = dict(calibrated=flat_cal, batch_size=1, scheme="per-tensor", nonuniform=True, weight_bits=4)
    twin = rq.convert(flatten_model, None, **kw)
    packed = rq.convert(flatten_model, None, pack="lut", **kw)
    assert "CUSTOM" in inspect_model(packed)["op_counts"]  # DECODE
    images = np.random.default_rng(8).standard_normal((3, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(tflm.tflm_run(packed, images).outputs, tflm.tflm_run(twin, images).outputs)


def test_scalar_constant_without_shape_vector(flatten_model, flat_cal):
    """Flatbuffer writers may drop an empty shape vector (a scalar constant, e.g. PACK's -1 after a ModelT
    round trip in the packing passes); tensor_array and inspect treat it as a scalar instead of crashing."""
    import tensorflow as tf
    # The stock converter's dynamic-batch export (ours folds Flatten's shape): PACK takes scalar constants.
    m = tfm.read(bytes(tf.lite.TFLiteConverter.from_keras_model(flatten_model).convert()))
    sg = m.subgraphs[0]
    scalars = [i for i, t in enumerate(sg.tensors) if t.shape is not None and len(t.shape) == 0
               and tfm.tensor_array(m, sg, i) is not None]
    assert scalars
    for i in scalars:
        sg.tensors[i].shape = None
    b = tfm.write(m)
    m2 = tfm.read(b)
    assert all(tfm.tensor_array(m2, m2.subgraphs[0], i).shape == () for i in scalars)
    assert "PACK" in inspect_model(b)["op_counts"]


# ----------------------------------------------------------------------------- Vela options, per-target errors

def test_vela_system_config_and_memory_mode(w8, vela_w8):
    """Deep_Embedded clocks the U55 at 200 MHz (Vela's Arm/vela.ini) instead of High_End's 500 MHz."""
    e = vela.vela_estimate(w8, "ethos-u55-128", system_config="Ethos_U55_Deep_Embedded", memory_mode="Sram_Only")
    assert (e.system_config, e.memory_mode) == ("Ethos_U55_Deep_Embedded", "Sram_Only")
    assert e.inference_time_s == pytest.approx(e.cycles / 200e6, rel=1e-6)
    assert e.macs == vela_w8.macs and e.inference_time_s > vela_w8.inference_time_s
    d = estimate.estimate(w8, "ethos-u55-128", system_config="Ethos_U55_Deep_Embedded")
    assert (d["system_config"], d["memory_mode"]) == ("Ethos_U55_Deep_Embedded", "Shared_Sram")  # default mode
    with pytest.raises(rq.ConfigError, match="Ethos_U55_Deep_Embedded"):
        vela.vela_estimate(w8, "ethos-u55-128", system_config="Ethos_U55_Tiny")
    with pytest.raises(rq.ConfigError, match="Sram_Only"):
        vela.vela_estimate(w8, "ethos-u55-128", memory_mode="Sram_Lots")


def test_one_failing_target_does_not_hide_the_others(tmp_path, flatten_model, flat_cal):
    """U55 rejects a LUT-packed file (TFLM's DECODE); TFLM still reports its arena, and the exit code says
    that a target failed (1), with one error line for it."""
    packed = rq.convert(flatten_model, None, calibrated=flat_cal, batch_size=1, scheme="per-tensor",
                        nonuniform=True, weight_bits=4, pack="lut")
    results, failed = estimate.estimates(packed, ["ethos-u55-128", "tflm"])
    assert failed == 1 and "error" in results["ethos-u55-128"]
    assert results["tflm"]["arena_bytes"] == tflm.tflm_run(packed).arena_bytes
    path = tmp_path / "packed.tflite"
    path.write_bytes(packed)
    proc = _retroq("inspect", path, "--target", "ethos-u55-128,tflm", "--system-config", "Ethos_U55_Deep_Embedded")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("retroq: error: target ethos-u55-128:")
    assert "ethos-u55-128: FAILED" in proc.stdout and f"tensor arena {results['tflm']['arena_bytes']:,}" in proc.stdout


def test_cli_vela_options_need_an_ethos_target(tmp_path, w8):
    path = tmp_path / "m.tflite"
    path.write_bytes(w8)
    proc = _retroq("inspect", path, "--target", "tflm", "--memory-mode", "Sram_Only")
    assert proc.returncode == 2 and "needs an Ethos-U target" in proc.stderr and proc.stdout == ""
