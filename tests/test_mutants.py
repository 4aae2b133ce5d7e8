"""Tests for the ten deliberate bugs (mutants) that survived issue 18's mutation audit.

Each test names its mutant; each was checked by applying the mutant by hand and seeing the
test fail. Values are computed independently of the code under test (closed forms, or the
inputs the fixture itself chose).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tflite_retroq as rq

H, W, C, CLASSES = 8, 8, 3, 4


def _cli(*args, timeout=120):
    from conftest import retroq_command
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("RETROQ_TRACEBACK", None)
    return subprocess.run(retroq_command() + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _keras():
    import keras
    return keras


# ----------------------------------------------------------------------------- CLI

def test_time_budget_zero_means_no_limit():
    """Mutant: `--time-budget 0` no longer mapped to None (no limit)."""
    from tflite_retroq.cli import flags as cf
    try:
        cf.FLAGS(["retroq", "--time-budget", "0"])
        assert cf.synthesis_config("retro").time_budget is None
        cf.FLAGS.unparse_flags()
        cf.FLAGS(["retroq", "--time-budget", "7.5"])
        assert cf.synthesis_config("retro").time_budget == 7.5
    finally:
        cf.FLAGS.unparse_flags()


@pytest.mark.parametrize("verb,flag", [("convert", "--input-range=0,255"), ("convert", "--input-mean=0,0,0"),
                                       ("analyze", "--input-std=1,1,1")])
def test_input_flags_conflict_with_data_file(tmp_path, verb, flag):
    """Mutant: input flags no longer refused beside --data-file (the dataset already fixed the input space)."""
    (tmp_path / "m.keras").write_bytes(b"")  # refused before the model is even opened
    (tmp_path / "d.npz").write_bytes(b"")
    out = tmp_path / ("x.tflite" if verb == "convert" else "dir")
    proc = _cli(verb, tmp_path / "m.keras", "-o", out, "--data-file", tmp_path / "d.npz", flag)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "--data-file" in line and flag.split("=")[0] in line and "conflict" in line, line


def test_report_keeps_logit_range(tmp_path):
    """Mutant: the CLI's JSON report loses `logit_range`. The recorded ranges must be what the
    .tflite's output quantization covers: the widened range inside the int8 output grid."""
    keras = _keras()
    keras.utils.set_random_seed(3)
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    keras.Model(inp, keras.layers.Dense(CLASSES)(x)).save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    rq.SyntheticDataset(images=rng.normal(0, 1, (8, H, W, C)), labels=np.arange(8) % CLASSES,
                        metadata={"mode": "gaussian"}).save(tmp_path / "d.npz")  # synthetic: the range is widened
    proc = _cli("convert", tmp_path / "m.keras", "-o", tmp_path / "m.tflite", "--data-file", tmp_path / "d.npz",
                "--report", tmp_path / "r.json", "--io", "float")
    assert proc.returncode == 0, proc.stderr
    rng_ = json.loads((tmp_path / "r.json").read_text())["synthesis"]["logit_range"]
    lo_c, hi_c = rng_["calibrated"]
    lo_w, hi_w = rng_["widened"]
    assert lo_w <= lo_c < hi_c <= hi_w
    from tflite_retroq.tflite import model as tfm
    m = tfm.read((tmp_path / "m.tflite").read_bytes())
    sg = m.subgraphs[0]
    out_q = [sg.tensors[i] for op in sg.operators for i in op.inputs
             if tfm.op_name(m, op) == "DEQUANTIZE" and op.outputs[0] == sg.outputs[0]][0]
    s, z = float(out_q.quantization.scale[0]), int(out_q.quantization.zeroPoint[0])
    assert s * (-128 - z) <= lo_w + s and hi_w - s <= s * (127 - z)  # the grid spans the recorded range
    assert s * (127 + 128) <= 1.2 * (hi_w - lo_w) + 2 * s  # and not much more


# ----------------------------------------------------------------------------- per-channel pass

@pytest.fixture(scope="module")
def per_tensor_pair():
    keras = _keras()
    keras.utils.set_random_seed(4)
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(6, 3, padding="same")(inp)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    model = keras.Model(inp, keras.layers.Dense(CLASSES)(x))
    images = np.random.default_rng(1).normal(0, 1, (8, H, W, C)).astype(np.float32)
    cal = rq.calibrate(model, images)
    return rq.quantize_calibrated(cal, "per-tensor"), cal


def _weights(data, position):
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(data)
    w = list(tfm.weight_ops(m))[position]
    return tfm.tensor_array(m, m.subgraphs[w.subgraph], w.weight)


def test_per_channel_honours_bits(per_tensor_pair):
    """Mutant: to_per_channel ignores `bits`. At 4 bits every chosen weight lies in [-7, 7] and each
    output channel uses at most 15 levels; at 8 bits the conv uses more than 15 levels."""
    from tflite_retroq.tflite.per_channel import to_per_channel
    pt, cal = per_tensor_pair
    w4 = _weights(to_per_channel(pt, cal, [0], bits=4), 0)
    w8 = _weights(to_per_channel(pt, cal, [0], bits=8), 0)
    assert np.abs(w4).max() == 7 and all(np.unique(ch).size <= 15 for ch in w4)
    assert np.abs(w8).max() == 127 and np.unique(w8).size > 15


def test_per_channel_refuses_out_of_range_positions(per_tensor_pair):
    """Mutant: a position one past the last weight op (or negative) is accepted."""
    from tflite_retroq.tflite.per_channel import to_per_channel
    pt, cal = per_tensor_pair
    n = 2  # the fixture's conv and dense
    to_per_channel(pt, cal, [n - 1])
    for ref in (n, -1):
        with pytest.raises(rq.TFLiteModelError, match="out of range"):
            to_per_channel(pt, cal, [ref])


# ----------------------------------------------------------------------------- input space

def test_bn_inference_accounts_for_the_conv_bias():
    """Mutant: the least squares ignores the conv bias (the zero-image response). The BN statistics
    below are those of inputs with mean m and std s through a 1x1 conv with a large bias."""
    keras = _keras()
    from tflite_retroq.model.input_space import infer_input_space_from_bn
    rng = np.random.default_rng(2)
    inp = keras.Input((H, W, C))
    conv = keras.layers.Conv2D(6, 1, use_bias=True)
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    x = keras.layers.GlobalAveragePooling2D()(bn(conv(inp)))
    model = keras.Model(inp, keras.layers.Dense(CLASSES)(x))
    k = rng.normal(0, 1, (C, 6)).astype(np.float32)
    b = rng.uniform(2, 5, 6).astype(np.float32)
    conv.set_weights([k[None, None], b])
    m, s = np.array([0.3, -0.2, 0.1]), 1.5
    bn.moving_mean.assign((m @ k + b).astype(np.float32))
    bn.moving_variance.assign((s ** 2 * np.sum(k ** 2, axis=0)).astype(np.float32))  # independent pixels
    space = infer_input_space_from_bn(model, C)
    assert space is not None
    np.testing.assert_allclose(space.offset, m, atol=2e-3)
    np.testing.assert_allclose(space.scale, s, rtol=0.05)


def test_output_spread_guess_takes_log_of_softmax():
    """Mutant: the guess compares probabilities instead of log-probabilities. This softmax model's logits
    spread about 3 on [0, 255] pixels and 255x less on the other conventions, so the log-probabilities
    single out [0, 255]; its probabilities spread about 0.4, which matches no convention."""
    keras = _keras()
    from tflite_retroq.model.input_space import guess_input_space_from_outputs
    inp = keras.Input((H, W, C))
    dense = keras.layers.Dense(CLASSES, use_bias=False)
    out = keras.layers.Softmax()(dense(keras.layers.GlobalAveragePooling2D()(inp)))
    model = keras.Model(inp, out)
    # a pixel mean of 127.5 per channel: the summed features are about 382; spread = 382 * a * std(v / a)
    v = np.array([-1.5, -0.5, 0.5, 1.5], np.float32)
    a = 3.0 / (3 * 127.5 * float(np.std(v)))
    dense.set_weights([np.tile(a * v, (C, 1))])
    space = guess_input_space_from_outputs(model, C)
    assert space.lo is not None and np.allclose(space.lo, 0) and np.allclose(space.hi, 255), space.source


# ----------------------------------------------------------------------------- planning and memory

def test_plan_takes_time_already_spent_off_the_budget():
    """Mutant: plan_synthesis ignores `spent`. At a rate that fits the default work into 80 % of the
    budget, nothing is cut with nothing spent; with 60 % spent, 40 % is left and iterations shrink."""
    keras = _keras()
    from tflite_retroq.config import SynthesisConfig
    from tflite_retroq.synthesis import plan_synthesis
    inp = keras.Input((H, W, C))
    model = keras.Model(inp, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(inp)))
    cfg = SynthesisConfig(time_budget=30.0)
    n, iters = cfg.total_images(CLASSES), SynthesisConfig.DEFAULT_ITERATIONS
    rate = n * iters / (0.8 * 30.0)
    fresh = plan_synthesis(model, cfg, CLASSES, (H, W, C), rate=rate, spent=0.0)
    late = plan_synthesis(model, cfg, CLASSES, (H, W, C), rate=rate, spent=18.0)
    assert (fresh.images, fresh.iterations) == (n, iters)
    assert late.images * late.iterations <= 12.0 * rate + 1e-6 or late.iterations == SynthesisConfig.MIN_ITERATIONS


def test_memory_budget_is_the_smaller_of_half_available_and_the_cap(monkeypatch):
    """Mutant: `min` turned into `max` in memory_budget."""
    from tflite_retroq import resources
    monkeypatch.delenv(resources.ENV_BUDGET, raising=False)
    monkeypatch.setattr(resources, "available_bytes", lambda: 100 << 30)
    assert resources.memory_budget() == resources.MAX_BUDGET
    monkeypatch.setattr(resources, "available_bytes", lambda: 1 << 30)
    assert resources.memory_budget() == 512 << 20


@pytest.mark.parametrize("total,batch", [(8, 4), (4, 4), (9, 3)])
def test_fixed_batches_keeps_every_full_batch(total, batch):
    """Mutant: fixed_batches drops exactly one full batch (e.g. `count > batch_size`)."""
    from tflite_retroq.static_shape import fixed_batches
    images = np.arange(total * 2, dtype=np.float32).reshape(total, 2)

    def gen():
        for i in range(total):
            yield [images[i:i + 1]]

    out = [b[0] for b in fixed_batches(gen, batch)()]
    assert [len(b) for b in out] == [batch] * (total // batch)
    np.testing.assert_array_equal(np.concatenate(out), images[:total // batch * batch])
