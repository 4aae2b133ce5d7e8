"""tflite/pack.py: LUT packing through tflite-micro's compressor. A packed model runs on the TFLite
Micro runtime bit-identically to its unpacked twin; the twin agrees with LiteRT; inspect reads the
tables back; LiteRT refuses the packed file with a clear error."""
import json
import subprocess
import sys

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.errors import TFLiteModelError
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite import pack
from tflite_retroq.tflite.inspect import inspect_model

from conftest import structured_images


def _images(n=12):
    return structured_images(n, np.random.default_rng(2))


@pytest.fixture(scope="module")
def variants(lut_model, lut_calibrated):
    cal, _ = lut_calibrated
    return {
        "nu-pt-4": rq.convert(lut_model, None, scheme="per-tensor", weight_bits=4, nonuniform=True, calibrated=cal),
        "nu-pc-4": rq.convert(lut_model, None, scheme="per-channel", weight_bits=4, nonuniform=True, calibrated=cal),
        "uni-pc-4": rq.convert(lut_model, None, scheme="per-channel", weight_bits=4, calibrated=cal),
        "nu-pt-6": rq.convert(lut_model, None, scheme="per-tensor", weight_bits=6, nonuniform=True, calibrated=cal),
    }


def _out_step(tfl):
    m = tfm.read(tfl)
    return float(tfm.scales(m.subgraphs[0].tensors[m.subgraphs[0].outputs[0]])[0])


@pytest.mark.parametrize("name", ["nu-pt-4", "nu-pc-4", "uni-pc-4", "nu-pt-6"])
def test_packed_bit_identical_to_twin_on_tflm_and_twin_agrees_with_litert(variants, name):
    plain = variants[name]
    packed = pack.pack_lut(plain)
    assert pack.is_packed(packed) and not pack.is_packed(plain)
    assert len(packed) < len(plain)
    x = _images()
    y_plain, y_packed = pack.run_tflm(plain, x), pack.run_tflm(packed, x)
    np.testing.assert_array_equal(y_packed, y_plain)
    y_lite = rq.run_tflite(plain, x, resolver="reference")
    assert np.abs(y_plain - y_lite).max() <= _out_step(plain) + 1e-6
    assert np.mean(np.argmax(y_plain, 1) == np.argmax(y_lite, 1)) >= 0.9


def test_plan_uses_index_bits_of_the_levels(variants):
    plan = {c.name: c for c in pack.lut_plan(variants["nu-pt-4"])}
    big = [c for c in plan.values() if c.elements == 4608]
    assert big and big[0].index_bits == 4 and big[0].axis is None  # per-tensor: 16 levels, one table
    plan = [c for c in pack.lut_plan(variants["nu-pc-4"]) if c.elements == 4608]
    # per-channel levels differ per channel: one 16-entry table per output channel
    assert plan and plan[0].index_bits == 4 and plan[0].axis == 0 and plan[0].tables == 32
    assert plan[0].distinct > 16
    # the layout follows the quantization even where one shared table would be smaller (15 values in all):
    # TFLM decodes a per-channel tensor packed with a shared table to wrong outputs
    plan = [c for c in pack.lut_plan(variants["uni-pc-4"]) if c.elements == 4608]
    assert plan[0].distinct <= 15 and plan[0].axis == 0 and plan[0].tables == 32


def test_inspect_reads_packed_tables_back(variants):
    plain = variants["nu-pc-4"]
    packed = pack.pack_lut(plain)
    info = inspect_model(packed)
    assert info["lut_packed"] and "TFLite Micro only" in info["runtime"]
    rows = [t for t in info["tables"] if t["packed"]]
    assert rows
    # the decoded values equal the unpacked twin's int8 weights (independent of the library's encoder)
    pm, um = tfm.read(packed), tfm.read(plain)
    decoded = pack.unpacked_weights(pm)
    plain_by_name = {w.output_name: tfm.tensor_array(um, um.subgraphs[0], w.weight) for w in tfm.weight_ops(um)}
    for wop in tfm.weight_ops(pm):
        key = (0, int(wop.weight))
        if key in decoded:
            np.testing.assert_array_equal(decoded[key]["values"], plain_by_name[wop.output_name])
    plain_info = inspect_model(plain)
    assert not plain_info["lut_packed"] and "LiteRT" in plain_info["runtime"]
    by_out = {t["output"]: t for t in plain_info["tables"]}
    for t in rows:
        assert t["distinct_values"] == by_out[t["output"]]["distinct_values"]
        assert (t["index_bits"], t["tables"]) == (by_out[t["output"]]["index_bits"], by_out[t["output"]]["tables"])
        assert t["packed_bytes"] < t["plain_bytes"]
    from tflite_retroq.reports.report import format_inspect
    text = format_inspect(info)
    assert "TFLite Micro only" in text and "weight tables (LUT, packed)" in text


def test_litert_refuses_packed_model(variants):
    with pytest.raises(TFLiteModelError):
        rq.run_tflite(pack.pack_lut(variants["nu-pt-4"]), _images(2))


def test_pack_refusals(variants, int8_bytes):
    with pytest.raises(TFLiteModelError, match="already"):
        pack.pack_lut(pack.pack_lut(variants["nu-pt-4"]))
    with pytest.raises(TFLiteModelError, match="would shrink none"):
        pack.pack_lut(int8_bytes)  # the tiny BN model: no tensor would shrink


def test_convert_pack_lut(lut_model, lut_calibrated, variants):
    cal, _ = lut_calibrated
    packed = rq.convert(lut_model, None, scheme="per-tensor", weight_bits=4, nonuniform=True, pack="lut",
                        calibrated=cal)
    assert packed == pack.pack_lut(variants["nu-pt-4"])


def test_cli_nonuniform_pack_and_inspect(lut_model, lut_calibrated, tmp_path):
    _, data = lut_calibrated
    lut_model.save(tmp_path / "m.keras")
    data.save(str(tmp_path / "d.npz"))
    cli = [sys.executable, "-m", "tflite_retroq.cli"]
    out = tmp_path / "m.tflite"
    proc = subprocess.run(cli + ["convert", str(tmp_path / "m.keras"), "-o", str(out), "--data-file",
                                 str(tmp_path / "d.npz"), "--weight-bits", "4", "--nonuniform", "--pack", "lut",
                                 "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "non-uniform W4" in proc.stdout and "TFLite Micro only" in proc.stdout
    assert pack.is_packed(out.read_bytes())
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["config"]["quantization"]["nonuniform"] is True and rep["config"]["quantization"]["pack"] == "lut"
    proc = subprocess.run(cli + ["inspect", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "runtime: TFLite Micro only" in proc.stdout and "weight tables (LUT, packed)" in proc.stdout
    proc = subprocess.run(cli + ["inspect", str(out), "--json"], capture_output=True, text=True, timeout=120)
    info = json.loads(proc.stdout)
    assert info["lut_packed"] and any(t["packed"] and t["index_bits"] == 4 for t in info["tables"])
