"""Smoke test of `benchmarks/targets.py --quick` (MLPerf IC ResNet-8 from the shared zoo, ~1 min on 2 cores).

Like the other benchmark smoke tests it FAILS, never skips, when the zoo is missing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("RETROQ_ZOO", REPO / ".." / "shared" / "zoo")).resolve()


def test_targets_quick(tmp_path):
    assert (ZOO / "mlperf_tiny" / "ic_resnet8.h5").is_file(), f"shared model zoo missing at {ZOO}; set RETROQ_ZOO"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.targets", "--quick", f"--zoo_dir={ZOO}",
                           f"--out={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "targets.json").read_text())
    assert (tmp_path / "targets.png").stat().st_size > 10_000
    assert "--quick" in doc["command"] and "## Static-shape export" in (tmp_path / "targets.md").read_text()
    rows = {r["variant"]: r for r in doc["rows"]}
    pc = rows["per-channel W8"]
    assert pc["npu_pct"] == 100.0 and pc["lat_auto_x"] == 1.0 and pc["tflm_steps"] == 0.0
    assert pc["agreement"] > 90.0
    # the weight encoder rewards fewer levels; the float model has nothing on the NPU
    assert rows["per-channel W4"]["u55_encoded_kib"] < pc["u55_encoded_kib"]
    assert rows["float"]["u55_us"] is None and rows["float"]["npu_pct"] == 0.0
    static = doc["static"]["MLPerf IC ResNet-8"]
    # the default (dynamic-batch) export has constant Flatten shapes too: no SHAPE/STRIDED_SLICE/PACK either way
    assert static["dynamic"]["shape_ops"] == 0 and static["static"]["shape_ops"] == 0
    assert static["static"]["vela_cpu_ops"] == 0
