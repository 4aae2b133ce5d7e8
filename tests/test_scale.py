"""Issue 12 and the legacy-file part of issue 10: bounded batches, a total image budget, memory refusals,
the time budget's plan, and Keras 2 `.h5` files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import resources
from tflite_retroq.synthesis import plan_synthesis, spread_labels

from conftest import C, H, NUM_CLASSES, W


def test_two_batch_sizes_same_image_count_and_both_calibrate(bn_model):
    """Same --images, batch 4 vs batch 12: the same count, balanced classes, and both convert to models that
    agree with the float model on the synthetic images of the other run."""
    a = rq.synthesize(bn_model, rq.SynthesisConfig(images=12, batch_size=4, iterations=3), progress=False)
    b = rq.synthesize(bn_model, rq.SynthesisConfig(images=12, batch_size=12, iterations=3), progress=False)
    assert len(a) == len(b) == 12
    assert a.metadata["plan"]["batches"] == 3 and b.metadata["plan"]["batches"] == 1
    for d in (a, b):
        np.testing.assert_array_equal(np.bincount(d.labels, minlength=NUM_CLASSES), [3] * NUM_CLASSES)
        assert len(d.loss_history["bn"]) == 3
    for d, other in ((a, b), (b, a)):
        q = rq.convert(bn_model, d)
        r = rq.evaluate(q, other.images, other.labels, reference=bn_model)
        assert r.sqnr_db > 15.0 and r.agreement >= 75.0


def test_same_seed_same_data(bn_model):
    cfg = rq.SynthesisConfig(images=8, batch_size=4, iterations=2, seed=3)
    a, b = (rq.synthesize(bn_model, cfg, progress=False) for _ in range(2))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_spread_labels_cover_distinct_classes_per_batch():
    labels = spread_labels(25, 10, np.random.default_rng(0), None)
    assert len(labels) == 25
    for start in (0, 10):
        assert len(set(labels[start:start + 10].tolist())) == 10  # one batch of 10 holds every class once
    many = spread_labels(64, 1000, np.random.default_rng(0), None)
    assert len(set(many.tolist())) == 64  # fewer images than classes: all distinct


def test_memory_budget_refuses_before_allocating(bn_model, monkeypatch):
    monkeypatch.setenv(resources.ENV_BUDGET, "1")  # 1 MiB
    with pytest.raises(rq.OutOfMemoryError, match="--batch-size|--images"):
        rq.synthesize(bn_model, rq.SynthesisConfig(images=64, batch_size=64, iterations=1), progress=False)


def test_auto_batch_size_follows_the_memory_budget(bn_model, monkeypatch):
    per_image = resources.activation_bytes_per_image(bn_model)
    image_bytes = H * W * C * 4
    monkeypatch.setenv(resources.ENV_BUDGET, str((10 * per_image + 100 * image_bytes) / 2**20))
    plan = plan_synthesis(bn_model, rq.SynthesisConfig(images=100), NUM_CLASSES, (H, W, C))
    assert plan.batch_size * per_image <= 10 * per_image + 1 and plan.batch_size >= 9
    assert plan.batches * plan.batch_size >= 100


def test_activation_elements_counts_every_layer_output(bn_model):
    """Independent count from the layer output shapes of this known model."""
    expect = 0
    for layer in bn_model.layers[1:]:
        expect += int(np.prod(layer.output.shape[1:]))
    assert resources.activation_elements(bn_model) == expect


def test_time_budget_cuts_defaults_only(bn_model):
    cfg = rq.SynthesisConfig(time_budget=10.0)
    plan = plan_synthesis(bn_model, cfg, NUM_CLASSES, (H, W, C), rate=500.0)  # 5000 image-iterations fit
    # 256 images would allow 19 iterations: iterations stop at their floor, then images shrink to fit (steps of 32).
    assert plan.iterations == rq.SynthesisConfig.MIN_ITERATIONS
    assert plan.images * plan.iterations <= 5000 and plan.images % 32 == 0
    assert (plan.images + 32) * plan.iterations > 5000  # the largest that fits
    assert "time budget" in plan.budget_source and plan.measured_rate == 500.0
    kept = plan_synthesis(bn_model, rq.SynthesisConfig(images=256, iterations=100, time_budget=10.0), NUM_CLASSES,
                          (H, W, C), rate=500.0)
    assert (kept.images, kept.iterations) == (256, 100)  # explicit work is never cut
    roomy = plan_synthesis(bn_model, cfg, NUM_CLASSES, (H, W, C), rate=1e9)
    assert (roomy.images, roomy.iterations) == (256, 100)


def test_cli_tiny_memory_budget_one_line_exit_2(tmp_path, bn_model):
    model = tmp_path / "m.keras"
    bn_model.save(model)
    out = tmp_path / "out" / "x.tflite"
    out.parent.mkdir()
    env = dict(os.environ, **{resources.ENV_BUDGET: "1"})
    exe = Path(sys.executable).with_name("retroq")
    proc = subprocess.run([str(exe), "convert", str(model), "-o", str(out), "--images", "64", "--batch-size", "64",
                           "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("retroq: error:"), proc.stderr
    assert "--batch-size" in lines[0] and proc.stdout == ""
    assert list(out.parent.iterdir()) == []


# ----------------------------------------------------------------------------- Keras 2 .h5 files

def _keras2_h5(path: Path):
    """A Keras 3 model saved as .h5, its DepthwiseConv2D config given Keras 2's `groups` key."""
    import h5py
    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, C))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inp, keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(x)))
    model.save(path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "DepthwiseConv2D":
                layer["config"]["groups"] = 1
        f.attrs["model_config"] = json.dumps(cfg)
    return model


def test_keras2_h5_with_groups_loads_as_stock_keras3(tmp_path):
    path = tmp_path / "k2.h5"
    original = _keras2_h5(path)
    with pytest.raises(Exception):  # what a user meets with plain Keras 3
        keras.saving.load_model(path, compile=False, safe_mode=True)
    model = rq.load_model(str(path))
    x = np.random.default_rng(0).uniform(0, 1, (2, H, W, C)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(original(x)))
    assert all(type(l).__module__.startswith("keras") for l in model.layers)  # no class of ours left behind
    model.save(tmp_path / "again.keras")
    keras.saving.load_model(tmp_path / "again.keras", safe_mode=True)


def test_lambda_h5_still_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    inp = keras.Input((H, W, C))
    y = keras.layers.Lambda(lambda t, m=str(marker): (open(m, "w").close(), t)[1])(inp)
    model = keras.Model(inp, keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(y)))
    model.save(tmp_path / "lam.h5")
    if marker.exists():
        marker.unlink()  # building the model ran the lambda once; loading must not
    with pytest.raises(rq.ModelError, match="Lambda"):
        rq.load_model(str(tmp_path / "lam.h5"))
    assert not marker.exists()
