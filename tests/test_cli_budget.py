"""`retroq convert --size-budget` and `retroq analyze --pareto`, run for real in subprocesses."""
import json
import subprocess

import numpy as np
import pytest

from tflite_retroq.tflite import model as tfm


def retroq(*args, timeout=300):
    from conftest import retroq_command
    return subprocess.run(retroq_command() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def files(tmp_path_factory, lut_model, lut_calibrated):
    d = tmp_path_factory.mktemp("budget_cli")
    lut_model.save(d / "m.keras")
    lut_calibrated[1].save(d / "data.npz")
    return d


def test_convert_size_budget_report_and_file_agree(files):
    d = files
    proc = _ok(retroq("convert", d / "m.keras", "-o", d / "o.tflite", "--data-file", d / "data.npz",
                      "--size-budget", "0.85x", "--report", d / "r.json", "--quiet"))
    rep = json.loads((d / "r.json").read_text())["size_budget"]
    data = (d / "o.tflite").read_bytes()
    assert len(data) == rep["file_bytes"] <= rep["budget_bytes"] == int(np.floor(0.85 * rep["w8_bytes"]))
    assert "size budget 0.85x" in proc.stdout + proc.stderr
    assert 0.0 <= rep["holdout"]["agreement"] <= 1.0 and rep["holdout"]["images"] >= 16  # checked on held-out images
    m = tfm.read(data)
    for layer in rep["layers"]:  # widths and bytes read back from the file
        w = next(w for w in tfm.weight_ops(m) if w.index == layer["op_index"])
        t = m.subgraphs[0].tensors[w.weight]
        q = np.abs(tfm.tensor_array(m, m.subgraphs[0], w.weight).astype(int)).max()
        assert q == 2 ** (layer["bits"] - 1) - 1 and len(m.buffers[t.buffer].data) == layer["bytes"]
    info = json.loads(_ok(retroq("inspect", d / "o.tflite", "--json")).stdout)
    assert {l["op_index"]: l["weight_bytes"] for l in info["layers"]} == {l["op_index"]: l["bytes"] for l in rep["layers"]}


@pytest.mark.parametrize("budget,expect", [("10", "smallest reachable file"), ("12 parsecs", "not a size")])
def test_convert_size_budget_refused(files, budget, expect, tmp_path):
    d = files
    out = tmp_path / "x.tflite"
    proc = retroq("convert", d / "m.keras", "-o", out, "--data-file", d / "data.npz", "--size-budget", budget, "--quiet")
    lines = [l for l in proc.stderr.splitlines() if l.startswith("retroq:")]
    assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
    assert not out.exists()


def test_convert_size_budget_above_w8_says_so(files, tmp_path):
    d = files
    proc = _ok(retroq("convert", d / "m.keras", "-o", tmp_path / "x.tflite", "--data-file", d / "data.npz",
                      "--size-budget", "2x", "--quiet"))
    assert "at or above the W8 file" in proc.stderr


def test_analyze_pareto(files, tmp_path):
    d = files
    out = tmp_path / "an"
    _ok(retroq("analyze", d / "m.keras", "-o", out, "--data-file", d / "data.npz", "--pareto", "--quiet"))
    doc = json.loads((out / "pareto.json").read_text())
    sizes = [p["file_bytes"] for p in doc["points"]]
    assert sizes == sorted(sizes) and len(sizes) >= 2 and sizes[-1] == doc["w8_bytes"]
    assert all(p["widths"].get("W8", 0) == 0 for p in doc["points"][:1])  # the smallest point: every layer W4
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "| file bytes |" in (out / "pareto.md").read_text()
    assert any(p["pareto"] for p in doc["points"])
