"""Behaviours a mutation audit found unguarded (issue 11), each checked against an
independent computation and each seen to fail once with the code broken on purpose:

* nested BatchNorm layers are tapped (not only the outer ones), in bn_taps and in synthesis;
* the clip to the valid pixel range happens inside the optimization loop, exactly;
* a model whose conversion keeps a float operator is refused;
* `convert --data zeroq|gaussian` really changes the data source; `--quiet` silences a real bar;
* inspect's effective-bits figures; weight and bias rounding on exact .5 ties (as the converter);
* Dense -> BatchNorm folding, and BatchNorm with scale=False / center=False;
* `make demo` itself, in its quick form.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import SynthesisConfig
from tflite_retroq.model.batchnorm import bn_layers, bn_taps, fold_batchnorm
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.inspect import inspect_model
from tflite_retroq.quant.uniform import quantize_bias, symmetric_quantize
from tflite_retroq.tflite.weight_bits import limit_weight_bits

from conftest import NUM_CLASSES, build_bn_model

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _bn_distance(pairs):
    """Mean over BN layers of mean_c (mu_batch - mu_run)^2 + mean_c (sd_batch - sqrt(var_run + eps))^2."""
    terms = []
    for bn, a in pairs:
        a = np.asarray(a, np.float64)
        mu, sd = a.mean(axis=(0, 1, 2)), a.std(axis=(0, 1, 2))
        sd_r = np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
        terms.append(np.mean((mu - bn.moving_mean.numpy()) ** 2) + np.mean((sd - sd_r) ** 2))
    return float(np.mean(terms))


# ----------------------------------------------------------------------------- nested BatchNorm

def _nested_bn_inputs(model, x):
    """Inputs of the outer and the inner BN computed with plain Keras sub-models, no package code."""
    block = model.get_layer("block")
    outer_in = keras.Model(model.input, model.get_layer("stem_bn").input)(x)
    block_in = keras.Model(model.input, model.get_layer("stem_bn").output)(x)
    inner_in = keras.Model(block.input, block.get_layer("sub_bn").input)(block_in)
    return [(model.get_layer("stem_bn"), np.asarray(outer_in)), (block.get_layer("sub_bn"), np.asarray(inner_in))]


def test_bn_taps_reach_the_nested_batchnorm(nested_model, normal_images):
    assert sorted(l.name for l in bn_layers(nested_model)) == ["stem_bn", "sub_bn"]
    with bn_taps(nested_model) as taps:
        nested_model(normal_images, training=False)
        got = {l.name: np.asarray(t) for l, t in taps}
    assert sorted(got) == ["stem_bn", "sub_bn"]
    for bn, expect in _nested_bn_inputs(nested_model, normal_images):
        np.testing.assert_allclose(got[bn.name], expect, rtol=1e-5, atol=1e-5)


def test_synthesis_bn_loss_counts_the_nested_batchnorm(nested_model):
    """Step 0 runs on the gaussian images of the same seed; its BN loss averages BOTH layers' terms."""
    g = rq.synthesize(nested_model, SynthesisConfig(mode="gaussian", samples_per_class=2, seed=4), progress=False)
    r = rq.synthesize(nested_model, SynthesisConfig(mode="retro", samples_per_class=2, iterations=1, seed=4),
                      progress=False)
    pairs = _nested_bn_inputs(nested_model, g.images)
    both, outer_only = _bn_distance(pairs), _bn_distance(pairs[:1])
    assert abs(both - outer_only) > 0.05 * both  # the two readings are distinguishable
    assert r.loss_history["bn"][0] == pytest.approx(both, rel=1e-4)


# ----------------------------------------------------------------------------- clip inside the loop

def test_clip_to_pixel_range_inside_the_loop(bn_model):
    """The loss of step 2 is computed on the images after step 1; with the projection inside the loop
    those are exactly the (clipped) images a 1-iteration run returns. Without it they would be
    unclipped and the losses would differ."""
    cfg = dict(mode="retro", samples_per_class=2, seed=11)
    one = rq.synthesize(bn_model, SynthesisConfig(iterations=1, **cfg), progress=False)
    two = rq.synthesize(bn_model, SynthesisConfig(iterations=2, **cfg), progress=False)
    x1 = one.images.astype(np.float64)
    assert x1.min() == 0.0 and x1.max() == 255.0  # the clip is active after one step
    z1 = (x1 - 127.5) / 63.75  # the normalized space of Rescaling(1/255): +-2 sigma spans [0, 255]
    mu, sd = z1.mean(axis=(0, 1, 2)), z1.std(axis=(0, 1, 2))
    prior = np.mean(mu ** 2) + np.mean((sd - 1.0) ** 2)
    assert two.loss_history["prior"][1] == pytest.approx(prior, rel=1e-4, abs=1e-7)
    pairs = [(bn, keras.Model(bn_model.input, bn.input)(one.images)) for bn in bn_layers(bn_model)]
    assert two.loss_history["bn"][1] == pytest.approx(_bn_distance(pairs), rel=1e-4)


# ----------------------------------------------------------------------------- float operators

def test_model_with_float_operator_is_refused():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.ops.sin(keras.layers.Conv2D(4, 3)(inp))  # SIN has no int8 kernel: it stays float
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    with pytest.raises(rq.RetroQError, match=r"Operator SIN .*could not be quantized to int8"):
        rq.convert(model, data)


# ----------------------------------------------------------------------------- effective bits

def _bits_needed(max_abs):
    """Smallest b whose symmetric grid +-(2^(b-1)-1) holds max_abs."""
    b = 1
    while 2 ** (b - 1) - 1 < max_abs:
        b += 1
    return b


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_inspect_effective_bits(bn_model, calib_data, int8_bytes, bits):
    tfl = int8_bytes if bits == 8 else rq.convert(bn_model, calib_data, weight_bits=bits)
    info = inspect_model(tfl)
    m = tfm.read(tfl)
    ops = {w.index: w for w in tfm.weight_ops(m)}
    assert len(info["layers"]) == 3
    for layer in info["layers"]:
        w = tfm.tensor_array(m, m.subgraphs[0], ops[layer["op_index"]].weight)
        max_abs = int(np.abs(w.astype(np.int64)).max())
        assert layer["max_abs_int"] == max_abs
        assert layer["weight_bits"] == _bits_needed(max_abs) == bits  # max|w| sits on the top level
    # small magnitudes: 0 -> 1 bit, 1 -> 2, 2..3 -> 3, 4..7 -> 4, 8 -> 5
    from tflite_retroq.tflite.inspect import _effective_bits
    assert [_effective_bits(v) for v in (0, 1, 2, 3, 4, 7, 8, 127)] == [_bits_needed(v) for v in
                                                                         (0, 1, 2, 3, 4, 7, 8, 127)]


# ----------------------------------------------------------------------------- .5 ties

def _ties_model():
    """Dense whose weights and biases land exactly on .5 steps: input scale 2^-3 (data in
    [-16, 15.875]), weight scale 2^-4 (max|w| = 127/16), bias scale 2^-7; all exact in binary."""
    inp = keras.Input((1, 1, 4))
    dense = keras.layers.Dense(6, name="fc")
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    k = np.zeros((4, 6), np.float32)
    k[0] = 127 / 16
    k[1] = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) / 16
    b = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32) * 2.0 ** -7
    dense.set_weights([k, b])
    data = np.zeros((4, 1, 1, 4), np.float32)
    data[0], data[1], data[2], data[3] = -16.0, 15.875, 3.0, -7.0
    return model, data


def test_ties_round_away_from_zero_like_the_converter():
    model, data = _ties_model()
    calibrated = rq.calibrate(model, data)
    q8 = rq.convert(model, data, calibrated=calibrated)
    m = tfm.read(q8)
    (w,) = list(tfm.weight_ops(m))
    sg = m.subgraphs[0]
    assert tfm.scales(sg.tensors[w.input])[0] == 0.125 and np.all(tfm.scales(sg.tensors[w.weight]) == 0.0625)
    halves = np.array([1, 2, 3, -1, -2, -3])  # 0.5, 1.5, 2.5, -0.5, -1.5, -2.5 rounded half away from zero
    assert np.array_equal(tfm.tensor_array(m, sg, w.bias), halves)  # the converter's own rounding
    assert np.array_equal(tfm.tensor_array(m, sg, w.weight)[:, 1], halves)
    assert not np.array_equal(np.round([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]), halves)  # numpy's ties-to-even differs
    # our pass re-derives the same integers on the ties
    redo = tfm.read(limit_weight_bits(q8, calibrated, 8))
    (w2,) = list(tfm.weight_ops(redo))
    np.testing.assert_array_equal(tfm.tensor_array(redo, redo.subgraphs[0], w2.bias), halves)
    np.testing.assert_array_equal(tfm.tensor_array(redo, redo.subgraphs[0], w2.weight), tfm.tensor_array(m, sg, w.weight))
    bq, _ = quantize_bias(np.array([2.5, -2.5, 3.5]) * 2.0 ** -7, 0.125, np.full(3, 0.0625, np.float32))
    np.testing.assert_array_equal(bq, [3, -3, 4])
    q, _ = symmetric_quantize(np.array([[7.0], [3.5], [-2.5]], np.float32), 4, None)  # scale 1: 3.5 -> 4
    np.testing.assert_array_equal(q.ravel(), [7, 4, -3])


# ----------------------------------------------------------------------------- folding

def _dense_bn_model():
    keras.utils.set_random_seed(6)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(5, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(scale=False, name="bn_noscale")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(6, name="hidden")(x)
    x = keras.layers.BatchNormalization(center=False, name="bn_nocenter")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(6, use_bias=False, name="hidden2")(x)
    x = keras.layers.BatchNormalization(scale=False, center=False, name="bn_bare")(x)
    out = keras.layers.Dense(NUM_CLASSES, name="head")(x)
    model = keras.Model(inp, out, name="dense_bn")
    rng = np.random.default_rng(6)
    for bn in bn_layers(model):
        ch = int(bn.moving_mean.shape[0])
        bn.moving_mean.assign(rng.normal(0, 0.5, ch).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.3, 2.0, ch).astype(np.float32))
        if bn.scale:
            bn.gamma.assign(rng.uniform(0.5, 1.5, ch).astype(np.float32))
        if bn.center:
            bn.beta.assign(rng.normal(0, 0.3, ch).astype(np.float32))
    for name in ("conv", "hidden"):
        layer = model.get_layer(name)
        layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    return model


def test_fold_dense_batchnorm_and_scale_center_false(normal_images):
    model = _dense_bn_model()
    x = normal_images[:, :8, :8, :]
    folded = fold_batchnorm(model)
    assert not bn_layers(folded)
    kinds = [type(l).__name__ for l in folded.layers if l.weights]
    assert kinds == ["Conv2D", "Dense", "Dense", "Dense"], kinds  # every BN folded into its producer
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-5)
    # numpy fold, one layer per BN flavour: s = gamma / sqrt(var + eps) (gamma = 1 without scale),
    # t = beta - mean * s (beta = 0 without center); kernel * s, bias * s + t
    for prod, bn_name in (("conv", "bn_noscale"), ("hidden", "bn_nocenter"), ("hidden2", "bn_bare")):
        bn, layer = model.get_layer(bn_name), model.get_layer(prod)
        var, mean = bn.moving_variance.numpy().astype(np.float64), bn.moving_mean.numpy().astype(np.float64)
        gamma = bn.gamma.numpy() if bn.scale else 1.0
        beta = bn.beta.numpy() if bn.center else 0.0
        s = gamma / np.sqrt(var + bn.epsilon)
        t = beta - mean * s
        k = layer.kernel.numpy().astype(np.float64)
        b = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros_like(s)
        fk, fb = folded.get_layer(prod).get_weights()
        np.testing.assert_allclose(fk, k * s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fb, b * s + t, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- CLI: --data, --quiet

def _cli():
    from conftest import retroq_command
    return retroq_command()


def _run(args):
    env = {k: v for k, v in os.environ.items() if k != "RETROQ_TRACEBACK"}
    return subprocess.run(_cli() + [str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT, env=env)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("guards_cli")
    model = build_bn_model(0)
    model.save(d / "m.keras")
    runs = {
        "gaussian": ["convert", d / "m.keras", "-o", d / "g.tflite", "--data", "gaussian", "--samples", 1,
                     "--seed", 3, "--quiet"],
        "zeroq": ["convert", d / "m.keras", "-o", d / "z.tflite", "--data", "zeroq", "--samples", 1,
                  "--iterations", 3, "--seed", 3, "--quiet"],
        "quiet": ["synthesize", d / "m.keras", "-o", d / "q.npz", "--samples", 1, "--iterations", 3, "--quiet"],
        "loud": ["synthesize", d / "m.keras", "-o", d / "l.npz", "--samples", 1, "--iterations", 3],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(_run, v) for k, v in runs.items()}
        yield d, model, {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("mode, iterations", [("gaussian", 0), ("zeroq", 3)])
def test_convert_data_flag_changes_the_source(cli_runs, mode, iterations):
    d, model, procs = cli_runs
    proc = procs[mode]
    assert proc.returncode == 0, proc.stderr
    out = (d / ("g.tflite" if mode == "gaussian" else "z.tflite")).read_bytes()
    assert f"calibration images {mode}" in proc.stdout
    kw = {"iterations": iterations} if iterations else {}
    data = rq.synthesize(model, SynthesisConfig(mode=mode, samples_per_class=1, seed=3, **kw), progress=False)
    assert out == rq.convert(model, data)  # the same bytes as the API on that data source
    other = (d / ("z.tflite" if mode == "gaussian" else "g.tflite")).read_bytes()
    assert out != other


def test_quiet_silences_a_real_progress_bar(cli_runs):
    d, _, procs = cli_runs
    assert procs["loud"].returncode == 0 and procs["quiet"].returncode == 0
    assert "synthesis [" in procs["loud"].stderr  # the same run without --quiet has a bar...
    assert procs["quiet"].stderr == ""  # ...which --quiet silences
    quiet, loud = rq.SyntheticDataset.load(d / "q.npz"), rq.SyntheticDataset.load(d / "l.npz")
    np.testing.assert_array_equal(quiet.images, loud.images)  # and nothing else changes


# ----------------------------------------------------------------------------- make demo

def test_make_demo_quick(tmp_path):
    """The command of `make demo` (read from the Makefile), run with --quick."""
    recipe = re.search(r"^demo:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    argv = shlex.split(recipe.replace("$(PY)", shlex.quote(sys.executable)))
    assert argv[1:3] == ["-m", "tflite_retroq.demo"], argv
    argv = [a for a in argv if not a.startswith("--out") and a != "demo_out"] + ["--quick", f"--out={tmp_path}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["quick"] is True and report["epochs"] == 3
    assert [r["calibration"].split()[0] for r in report["rows"]] == ["none", "gaussian", "zeroq", "retro"]
    for row in report["rows"][1:]:
        assert 0.0 <= row["w8_accuracy"] <= 100.0 and 0.0 <= row["w4_accuracy"] <= 100.0
        assert np.isfinite(row["w8_sqnr_db"])
    for mode in ("gaussian", "zeroq", "retro"):
        for bits in (8, 4):
            assert (tmp_path / f"digits_int8_w{bits}_{mode}.tflite").read_bytes()[4:8] == b"TFL3"
        assert (tmp_path / f"synthetic_{mode}.png").stat().st_size > 0
    assert "Demo: data-free int8" in proc.stdout
