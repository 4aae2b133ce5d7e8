"""Qualcomm Hexagon (HTP) placement through LiteRT's AOT compiler plugin (`targets/qualcomm.py`).

The reference for placement is the model itself: operator counts and indices read from the
input flatbuffer, and the stock TFLiteConverter's dynamic-batch export, whose Flatten computes
its shape at run time (SHAPE -> STRIDED_SLICE -> PACK), as the case the compiler splits.
Needs onnxruntime-qnn (in the `dev` extra, so `make test` installs it).
"""
import importlib.util
import os
import shutil
import subprocess

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.errors import TargetError
from tflite_retroq.targets import estimate, qualcomm
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.inspect import inspect_model

SOC = "qualcomm-sm8650"


@pytest.fixture(scope="module")
def default_export(flatten_model):
    data = rq.synthesize(flatten_model, rq.SynthesisConfig(mode="gaussian", samples_per_class=3, seed=2),
                         input_spec=rq.InputSpec(mean=(0.0,), std=(1.0,)), progress=False)
    return rq.convert(flatten_model, data)


@pytest.fixture(scope="module")
def stock_export(flatten_model):
    """The stock converter's full-int8 export of the same model: dynamic batch with run-time shape ops."""
    from conftest import stock_int8
    return stock_int8(flatten_model, np.random.default_rng(4).standard_normal((8, 8, 8, 2)).astype(np.float32))


def test_the_plugin_lists_socs():
    assert SOC in qualcomm.QUALCOMM and "qualcomm-sm8550" in qualcomm.QUALCOMM
    assert set(qualcomm.QUALCOMM) <= set(estimate.TARGETS)
    assert qualcomm.soc_of(SOC) == "SM8650"


def test_default_export_is_one_npu_partition(default_export):
    e = qualcomm.hexagon_estimate(default_export, SOC)
    n_ops = inspect_model(default_export)["num_ops"]
    assert (e.npu_ops, e.cpu_ops, e.partitions) == (n_ops, 0, 1)
    assert e.cpu_op_types == () and e.rejected == () and e.npu_fraction == 1.0
    assert e.compiled_bytes > e.context_bytes > len(default_export)  # the HTP binary is embedded
    d = e.to_dict()
    assert d["soc"] == "SM8650" and d["rejected"] == [] and d["onnxruntime_qnn_version"] != "?"


def test_runtime_shape_ops_stay_on_the_cpu_with_reasons(stock_export):
    m = tfm.read(stock_export)
    names = [tfm.op_name(m, op) for op in m.subgraphs[0].operators]
    e = qualcomm.hexagon_estimate(stock_export, SOC)
    assert e.partitions == 2 and e.npu_ops + e.cpu_ops == len(names)
    assert set(e.cpu_op_types) == {"SHAPE", "STRIDED_SLICE"} and e.cpu_ops == 2
    by_index = {r.index: r for r in e.rejected}
    assert [names[i] for i in sorted(by_index)] == ["SHAPE", "STRIDED_SLICE"]  # the input model's own indices
    shape, slice_ = (by_index[i] for i in sorted(by_index))
    assert shape.op == "Shape" and "not supported" in shape.reason
    assert slice_.op == "StridedSlice" and "Rank" in slice_.reason  # the QNN validator's own words


def test_estimate_dispatch_and_other_socs(default_export):
    d = estimate.estimate(default_export, "qualcomm-sm8550")
    assert d["target"] == "qualcomm-sm8550" and d["soc"] == "SM8550" and d["partitions"] == 1


def test_parse_log_on_a_canned_log():
    text = "\n".join([
        "ERROR: [qnn_compose_graph.cc:1722]", "LiteRT Op #2 'Shape' (code=77) is not supported in Qualcomm Compiler.",
        "ERROR: [qnn_manager.cc:480]", "QNN op validation failed: 'StridedSlice_4' (type=StridedSlice)",
        "LiteRT Op #3 'StridedSlice' (code=45) is not supported in Qualcomm Compiler.",
        "   18000.0ms [ ERROR ]  Output[0] has incorrect Rank 1.", "   20000.0ms [ ERROR ]  Op specific validation failed.",
        "     0.0ms [ ERROR ]   <E> validateNativeOps master op validator StridedSlice_4:qti.aisw:StridedSlice failed 3110",
        "INFO: [compiler_plugin.cc:742] Partitioned subgraph<0>, selected 5 ops, from a total of 7 ops. resulted in "
        "2 partitions.",
        "INFO: [qnn_manager.cc:408] Serialized a context bin of size (bytes): 4096",
        "INFO: [qnn_manager.cc:408] Serialized a context bin of size (bytes): 8192"])
    rejected, totals, context = qualcomm.parse_log(text)
    assert totals == (5, 7, 2) and context == 12288
    assert [(r.index, r.op) for r in rejected] == [(2, "Shape"), (3, "StridedSlice")]
    assert rejected[0].reason == "not supported in Qualcomm Compiler"
    assert rejected[1].reason == "QNN op validation: Output[0] has incorrect Rank 1."
    with pytest.raises(TargetError, match="no partition summary"):
        qualcomm.parse_log("something else entirely")


def test_missing_libraries_are_a_target_error(monkeypatch, default_export):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime_qnn" else real(name, *a))
    with pytest.raises(TargetError, match=r"\.\[qualcomm\]"):
        qualcomm.hexagon_estimate(default_export, SOC)


def test_missing_c_compiler_is_a_target_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TargetError, match="gcc"):
        qualcomm._lpai_stub(str(tmp_path), str(tmp_path))
    (tmp_path / "libQnnLpai.so").write_bytes(b"")  # a wheel that ships the library needs no stub
    assert qualcomm._lpai_stub(str(tmp_path), str(tmp_path / "x")) == []


def test_bad_input(default_export):
    with pytest.raises(TargetError, match="not a Qualcomm target"):
        qualcomm.hexagon_estimate(default_export, "qualcomm-sm1234")
    with pytest.raises(rq.TFLiteModelError):
        qualcomm.hexagon_estimate(b"not a model at all", SOC)


def _retroq(*args):
    from conftest import retroq_command
    env = {k: v for k, v in os.environ.items() if k != "RETROQ_TRACEBACK"}
    return subprocess.run(retroq_command() + [str(a) for a in args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_cli_inspect_qualcomm(tmp_path, stock_export):
    path = tmp_path / "m.tflite"
    path.write_bytes(stock_export)
    proc = _retroq("inspect", path, "--target", SOC)
    assert proc.returncode == 0, proc.stderr
    assert "on the NPU in 2 partitions" in proc.stdout and "op #2 Shape: not supported" in proc.stdout
    assert "op #3 StridedSlice: QNN op validation: Output[0] has incorrect Rank 1." in proc.stdout
