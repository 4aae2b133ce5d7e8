"""Issue 16: the same command gives the same model (work planned from the model, not from a clock),
and the converter hook gives the same model as `rq.convert`."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import resources
from tflite_retroq.synthesis import plan_synthesis, plan_work

from conftest import C, H, NUM_CLASSES, W, retroq_command


def test_forward_flops_by_hand(bn_model):
    """bn_model: Rescaling, Conv 3x3 3->8 'same', BN, ReLU, depthwise 3x3 on 8, BN, GAP, Dense 8->4."""
    hw = H * W
    macs = hw * 8 * (3 * 3 * 3) + hw * 8 * (3 * 3) + 8 * NUM_CLASSES
    elementwise = hw * C + hw * 8 + hw * 8 + hw * 8 + 8  # rescale, bn1, relu, bn2, gap
    assert resources.forward_flops(bn_model) == 2 * macs + elementwise


def test_default_plan_from_model_cost_by_hand(bn_model):
    """No time budget: images x iterations x forward FLOPs fits WORK_FLOPS, iterations cut first (steps of 10),
    then images (steps of 32); nothing measured, explicit work kept."""
    flops = resources.forward_flops(bn_model)
    cfg = rq.SynthesisConfig()
    assert cfg.time_budget is None
    roomy = plan_synthesis(bn_model, cfg, NUM_CLASSES, (H, W, C))
    assert flops * 256 * 100 <= cfg.WORK_FLOPS  # a tiny model: the full defaults fit
    assert (roomy.images, roomy.iterations, roomy.measured_rate) == (256, 100, None)
    # Costlier models: pretend the budget allows 7000, 3000, 100 image-iterations.
    fake_flops = cfg.WORK_FLOPS // 7000
    assert plan_work(cfg, fake_flops, 256, 100)[:2] == (256, 20)          # 7000 // 256 = 27 -> 20 (steps of 10)
    fake_flops = cfg.WORK_FLOPS // 3000
    assert plan_work(cfg, fake_flops, 256, 100)[:2] == (128, 20)          # floor 20; 3000 // 20 = 150 -> 128
    fake_flops = cfg.WORK_FLOPS // 100
    assert plan_work(cfg, fake_flops, 256, 100)[:2] == (64, 20)           # both floors
    assert plan_work(rq.SynthesisConfig(images=256, iterations=100), fake_flops, 256, 100)[:2] == (256, 100)
    assert plan_work(rq.SynthesisConfig(iterations=50), cfg.WORK_FLOPS // 3200, 256, 50)[:2] == (64, 50)


def test_auto_batch_ignores_free_memory(bn_model, monkeypatch):
    """The batch plan reads a fixed reference budget: more free memory does not change it."""
    monkeypatch.setattr(resources, "available_bytes", lambda: 64 << 30)
    a = plan_synthesis(bn_model, rq.SynthesisConfig(), NUM_CLASSES, (H, W, C))
    monkeypatch.setattr(resources, "available_bytes", lambda: 5 << 30)
    b = plan_synthesis(bn_model, rq.SynthesisConfig(), NUM_CLASSES, (H, W, C))
    assert (a.images, a.iterations, a.batch_size) == (b.images, b.iterations, b.batch_size)


def _tensors(model_bytes: bytes) -> dict:
    """{tensor name: (type, shape, scales, zero points, constant bytes)} of a .tflite model."""
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    out = {}
    for i, t in enumerate(sg.tensors):
        q = t.quantization
        data = tfm.tensor_array(m, sg, i)
        out[tfm.tensor_name(t)] = (int(t.type), tuple(t.shape), tuple(q.scale) if q is not None and q.scale is not None
                                   else (), tuple(q.zeroPoint) if q is not None and q.zeroPoint is not None else (),
                                   None if data is None else data.tobytes())
    ops = [tfm.op_name(m, op) for op in sg.operators]
    return out, ops


def test_hook_gives_the_same_model_as_convert(bn_model):
    """A plain TFLiteConverter fed through `rq.representative_dataset` gives the model `rq.convert` gives: the same
    operators, every tensor's type, shape, scales, zero points and constant data equal, and bit-identical outputs.
    (The files differ as bytes: the one-shot converter and calibrate-then-quantize lay out buffers and metadata
    differently.)"""
    import tensorflow as tf
    from tflite_retroq.evaluate import run_tflite
    data = rq.synthesize(bn_model, rq.SynthesisConfig(images=8, iterations=3), progress=False)
    ours = rq.convert(bn_model, data)
    conv = tf.lite.TFLiteConverter.from_keras_model(bn_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rq.representative_dataset(data)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    hook = bytes(conv.convert())
    (t_ours, ops_ours), (t_hook, ops_hook) = _tensors(ours), _tensors(hook)
    assert ops_ours == ops_hook
    assert t_ours == t_hook
    x = np.random.default_rng(0).uniform(0, 255, (16, H, W, C)).astype(np.float32)
    np.testing.assert_array_equal(run_tflite(ours, x), run_tflite(hook, x))


BURN = "import time\nt = time.time()\nwhile time.time() - t < 600: sum(i * i for i in range(10000))\n"


def test_same_convert_twice_under_load_gives_identical_bytes(tmp_path, bn_model):
    """Default work (no --images/--iterations: the plan must not read a clock), the second run beside two
    CPU-burning processes: byte-identical .tflite files."""
    model = tmp_path / "m.keras"
    bn_model.save(model)
    cmd = retroq_command() + ["convert", str(model), "--quiet", "--seed", "5", "--samples", "2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.run(cmd + ["-o", str(tmp_path / "a.tflite")], capture_output=True, text=True, env=env,
                           timeout=600)
    assert first.returncode == 0, first.stderr
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(2)]
    try:
        second = subprocess.run(cmd + ["-o", str(tmp_path / "b.tflite")], capture_output=True, text=True, env=env,
                                timeout=600)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "a.tflite").read_bytes() == (tmp_path / "b.tflite").read_bytes()
