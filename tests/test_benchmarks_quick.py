"""Smoke test of the real-model benchmark: `calibration_sources.py --quick` on ResNet-20.

Needs the shared zoo (../shared/zoo or $RETROQ_ZOO). Like test_zoo_resnet.py it FAILS,
never skips, when the zoo is missing: CI provides it. Takes ~1.5 min on 2 cores.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("RETROQ_ZOO", REPO / ".." / "shared" / "zoo")).resolve()


def test_calibration_sources_quick(tmp_path):
    assert (ZOO / "cifar10" / "resnet20.npz").is_file(), f"shared model zoo missing at {ZOO}; set RETROQ_ZOO"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.calibration_sources", "--quick",
                           f"--zoo_dir={ZOO}", f"--out={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "calibration_sources.json").read_text())
    assert (tmp_path / "calibration_sources.md").read_text().startswith("# ")
    assert "--quick" in doc["command"] and doc["date"] and "CPU" in doc["machine"]
    rows = {(r["model"], r["source"], r["weights"]): r for r in doc["rows"]}
    models = {r["model"] for r in doc["rows"]}
    assert models == {"ResNet-20", "ResNet-20 (BN folded)"}
    for model in models:
        assert rows[(model, "fp32", "FP32")]["agreement"] == 100.0
        for source in ("real", "gaussian", "zeroq", "retro"):
            for w in ("W8A8", "W6A8", "W4A8"):
                r = rows[(model, source, w)]
                assert 0.0 <= r["accuracy"] <= 100.0 and 0.0 <= r["agreement"] <= 100.0
                assert r["kl"] >= 0.0
        for source in ("zeroq", "retro"):
            assert rows[(model, source, "W8A8")]["synthesis_s"] > 0.0
        # int8 calibrated on real images stays close to the float model
        assert rows[(model, "real", "W8A8")]["agreement"] > 90.0
        assert rows[(model, "real", "W8A8")]["sqnr_db"] > 10.0
    # FP32 ResNet-20 on all of test_first1017: the PyTorch reference is 91.64 %
    assert abs(rows[("ResNet-20", "fp32", "FP32")]["accuracy_full_test"] - 91.64) <= 0.1
    # folding BN barely changes the float model
    assert abs(rows[("ResNet-20", "fp32", "FP32")]["accuracy"]
               - rows[("ResNet-20 (BN folded)", "fp32", "FP32")]["accuracy"]) < 1.0


def test_nonuniform_quick(tmp_path):
    """`benchmarks/nonuniform.py --quick`: ResNet-20, W4, every variant, LUT sizes, TFLM identity, PNGs (~1 min)."""
    assert (ZOO / "cifar10" / "resnet20.npz").is_file(), f"shared model zoo missing at {ZOO}; set RETROQ_ZOO"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.nonuniform", "--quick", f"--zoo_dir={ZOO}",
                           f"--out={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "nonuniform.json").read_text())
    rows = {(r["method"], r["scheme"], r["weights"]): r for r in doc["rows"]}
    for method, scheme in (("uniform", "per-tensor"), ("uniform", "per-channel"), ("non-uniform", "per-tensor"),
                           ("non-uniform", "per-channel"), ("k-means", "per-tensor")):
        r = rows[(method, scheme, "W4A8")]
        assert 0.0 <= r["agreement"] <= 100.0
        assert r["lut_bytes"] < r["size_bytes"] and r["tflm_packed_identical"] is True  # W4 always packs
        if method != "uniform":
            assert 0.0 <= r["sim_agreement"] <= 100.0
    assert rows[("uniform", "per-channel", "W4A8")]["agreement"] > 80.0
    for png in ("nonuniform_hist_resnet20.png", "nonuniform_layers_resnet20.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Non-uniform minus uniform" in (tmp_path / "nonuniform.md").read_text()


def test_hybrid_quick(tmp_path):
    """`benchmarks.hybrid --quick` on MLPerf ResNet-8 only: every variant row, the budgets, Fig. 4 / Fig. 5 files."""
    assert (ZOO / "mlperf_tiny").is_dir(), f"shared model zoo missing at {ZOO}; set RETROQ_ZOO"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.hybrid", "--quick", "--models=ic_resnet8",
                           "--eval_limit=200", "--naive_models=", f"--zoo_dir={ZOO}", f"--out={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "hybrid_quick.json").read_text())
    rows = {(r["weights"], r["scheme"]): r for r in doc["rows"]}
    for w in ("W8A8", "W4A8"):
        assert rows[(w, "per-tensor")]["per_channel_layers"] == "0/10"
        assert rows[(w, "per-channel")]["per_channel_layers"] == "10/10"
        assert rows[(w, "hybrid budget 10% (N=1)")]["n_per_channel"] <= 1
        assert rows[(w, "hybrid budget 25% (N=2)")]["n_per_channel"] <= 2
        assert rows[(w, "hybrid Th=0")]["speedup"] > 0
    assert {r["source"] for r in doc["fidelity"]} == {"real", "gaussian", "zeroq", "retro"}
    assert [round(r["rho_difference"], 9) for r in doc["fidelity"] if r["source"] == "real"] == [1.0]
    for name in ("hybrid_ic_resnet8_w8.png", "hybrid_ic_resnet8_w4.png", "hybrid_ic_resnet8_fidelity.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "## Gap recovered" in (tmp_path / "hybrid_quick.md").read_text()
