"""`retroq analyze` and `retroq convert --scheme hybrid`, run for real in subprocesses.

(Their error paths sit with the other CLI error cases in test_cli.py.)
"""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

H, W, C, CLASSES = 16, 16, 3, 4


def _cli():
    exe = Path(sys.executable).with_name("retroq")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "tflite_retroq.cli"]


def retroq(*args):
    return subprocess.run(_cli() + [str(a) for a in args], capture_output=True, text=True, timeout=240)


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny BN model with uneven channel ranges, its synthetic data, and three CLI runs (two at a time)."""
    import keras
    import tflite_retroq as rq
    d = tmp_path_factory.mktemp("hybrid_cli")
    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, C))
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(CLASSES, name="fc")(x)
    model = keras.Model(inp, out)
    for name in ("conv", "dw"):
        k = model.get_layer(name).kernel
        k.assign(k.numpy() * np.geomspace(0.05, 2.0, k.shape[-1]).astype(np.float32))
    model.save(d / "m.keras")
    data = rq.synthesize(model, rq.SynthesisConfig(samples_per_class=3, iterations=5), progress=False)
    data.save(d / "data.npz")
    pool = ThreadPoolExecutor(max_workers=2)
    jobs = {
        "analyze": pool.submit(retroq, "analyze", d / "m.keras", "-o", d / "sens", "--samples", 2, "--iterations", 2,
                               "--weight-bits", 4, "--quiet"),
        "analyze_file": pool.submit(retroq, "analyze", d / "m.keras", "-o", d / "sens_file", "--data-file",
                                    d / "data.npz", "--max-per-channel", 1, "--quiet"),
        "hybrid": pool.submit(retroq, "convert", d / "m.keras", "-o", d / "h.tflite", "--data-file", d / "data.npz",
                              "--scheme", "hybrid", "--threshold", "-1", "--max-per-channel", 2, "--fc-per-tensor",
                              "--report", d / "h.json"),
    }
    yield d, {k: v.result() for k, v in jobs.items()}, model, data
    pool.shutdown(wait=True)


def test_analyze_writes_json_markdown_and_png(runs):
    d, procs, _, _ = runs
    _ok(procs["analyze"])
    files = sorted(p.name for p in (d / "sens").iterdir())
    assert files == ["sensitivity.json", "sensitivity.md", "sensitivity.png"]
    doc = json.loads((d / "sens" / "sensitivity.json").read_text())
    assert [l["name"] for l in doc["sensitivity"]["layers"]] == ["conv", "dw", "fc"]
    assert doc["sensitivity"]["weight_bits"] == 4 and doc["sensitivity"]["num_images"] == 2 * CLASSES
    assert doc["data"]["source"] == "synthesized" and doc["plan"]["config"]["threshold"] == 0.0
    for l, p in zip(doc["sensitivity"]["layers"], doc["plan"]["layers"]):
        assert p["scheme"] == ("per-channel" if l["difference"] > 0 else "per-tensor")
    md = (d / "sens" / "sensitivity.md").read_text()
    assert "| # | layer | op |" in md and "| dw | DEPTHWISE_CONV_2D |" in md
    assert (d / "sens" / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "analyzed 3 layers" in procs["analyze"].stdout


def test_analyze_on_a_data_file_matches_the_api(runs):
    import tflite_retroq as rq
    d, procs, model, data = runs
    _ok(procs["analyze_file"])
    doc = json.loads((d / "sens_file" / "sensitivity.json").read_text())
    assert doc["data"] == {"source": "file", "path": str(d / "data.npz"), "mode": "retro"}
    api = rq.analyze_sensitivity(model, data)
    for got, want in zip(doc["sensitivity"]["layers"], api.layers):
        assert got["kl_per_tensor"] == pytest.approx(want.kl_per_tensor, rel=1e-4, abs=1e-12)
        assert got["kl_per_channel"] == pytest.approx(want.kl_per_channel, rel=1e-4, abs=1e-12)
    assert doc["plan"]["per_channel"] == list(api.select(max_per_channel=1).per_channel)


def test_convert_hybrid_records_the_plan_and_writes_it(runs):
    import tflite_retroq as rq
    from tflite_retroq.tflite.per_channel import per_channel_ops
    d, procs, model, data = runs
    _ok(procs["hybrid"])
    report = json.loads((d / "h.json").read_text())
    plan = report["hybrid"]["plan"]
    # Th=-1 admits every layer, --fc-per-tensor drops fc, the budget keeps 2: conv and dw.
    assert sorted(plan["per_channel"]) == ["conv", "dw"]
    assert plan["config"] == {"threshold": -1.0, "max_per_channel": 2, "fully_connected_per_tensor": True}
    assert [l["scheme"] for l in plan["layers"]] == ["per-channel", "per-channel", "per-tensor"]
    assert report["config"]["quantization"]["scheme"] == "hybrid"
    tfl = (d / "h.tflite").read_bytes()
    assert per_channel_ops(tfl) == [0, 1]
    # The same as the API's hybrid model from the same data.
    want = rq.convert(model, data, scheme="hybrid", threshold=-1.0, max_per_channel=2,
                      fully_connected_per_tensor=True)
    assert np.array_equal(rq.run_tflite(tfl, data.images), rq.run_tflite(want, data.images))
    assert "hybrid: 2/3 per-channel" in procs["hybrid"].stdout
