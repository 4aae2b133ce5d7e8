"""Qualcomm Hexagon placement of every zoo model's exports: is the default export one NPU partition?

For each model: the stock TFLiteConverter's dynamic-batch full-int8 export (the "before": a
Flatten computes its shape at run time), our default export (dynamic batch, Flatten shape
folded to a constant), our `--static-batch 1` export, and MLPerf's own int8 file where the zoo
has one. Each is compiled for SM8650 with LiteRT's AOT plugin (targets/qualcomm.py); the default
export also through the CLI, `retroq inspect --target qualcomm-sm8650 --json`, the issue's
acceptance command. Placement does not depend on the calibration values, so calibration uses
a few Gaussian images (the ranges, and so the integers, are not meant to be accurate here).

    .venv/bin/python -m benchmarks.hexagon                       # 4 zoo models, a few minutes
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_list("models", ["resnet20", "resnet56", "ic_resnet8", "vww_mobilenetv1_96"], "Models to run.")
flags.DEFINE_string("soc", "qualcomm-sm8650", "Qualcomm target.")

COLUMNS = ["model", "export", "batch", "ops", "shape_ops", "npu_ops", "cpu_ops", "partitions", "cpu_op_types",
           "compiled_kib", "cli_partitions"]


def _stock_int8(model, images: np.ndarray) -> bytes:
    """The plain converter's full-int8 export: the reference for what our default export changed."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[None]] for x in images)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def _cli_partitions(tfl: bytes, soc: str):
    """`retroq inspect MODEL --target SOC --json`, for real: the partitions it reports."""
    exe = os.path.join(os.path.dirname(sys.executable), "retroq")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tflite_retroq.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(tfl)
        proc = subprocess.run(cmd + ["inspect", path, "--target", soc, "--json"], capture_output=True, text=True,
                              timeout=600)
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"
    return json.loads(proc.stdout)["targets"][soc]["partitions"]


def _load(key: str):
    from benchmarks.zoo import mlperf
    from benchmarks.zoo.cifar_resnet import build_resnet
    if key.startswith("resnet"):
        return build_resnet(int(key[6:]), FLAGS.zoo_dir), (0.0, 255.0), None
    ref = None
    try:
        ref = mlperf.reference_tflite(key, FLAGS.zoo_dir)
    except FileNotFoundError:
        pass
    return mlperf.load_model(key, FLAGS.zoo_dir), mlperf.INPUT_RANGE[key], ref


def run_model(key: str) -> List[Dict]:
    import tflite_retroq as rq
    from tflite_retroq.static_shape import SHAPE_OPS, input_batch
    from tflite_retroq.targets.qualcomm import hexagon_estimate
    from tflite_retroq.tflite.inspect import inspect_model
    model, value_range, reference = _load(key)
    lo, hi = value_range
    shape = tuple(model.input_shape[1:])
    images = np.random.default_rng(0).uniform(lo, hi, (16,) + shape).astype(np.float32)
    data = rq.SyntheticDataset.from_images(images)
    exports = {"stock converter (dynamic batch)": _stock_int8(model, images),
               "ours, default (dynamic batch)": rq.convert(model, data),
               "ours, --static-batch 1": rq.convert(model, data, batch_size=1)}
    if reference is not None:
        exports["MLPerf int8 reference"] = reference
    rows = []
    for name, tfl in exports.items():
        info = inspect_model(tfl)
        e = hexagon_estimate(tfl, FLAGS.soc)
        row = {"model": key, "export": name, "batch": input_batch(tfl) or "dynamic", "ops": info["num_ops"],
               "shape_ops": sum(info["op_counts"].get(k, 0) for k in SHAPE_OPS), "npu_ops": e.npu_ops,
               "cpu_ops": e.cpu_ops, "partitions": e.partitions, "cpu_op_types": ",".join(e.cpu_op_types) or None,
               "compiled_kib": e.compiled_bytes / 1024,
               "rejected": [r.to_dict() for r in e.rejected]}
        if name.startswith("ours, default"):
            row["cli_partitions"] = _cli_partitions(tfl, FLAGS.soc)
        rows.append(row)
        common.log(f"{key} {name}: {e.npu_ops} NPU / {e.cpu_ops} CPU ops, {e.partitions} partitions")
    return rows


def main(argv):
    del argv
    started = time.perf_counter()
    rows: List[Dict] = []
    for key in FLAGS.models:
        rows += run_model(key)
    reasons = [f"- {r['model']}, {r['export']}: op #{x['index']} {x['op']}: {x['reason']}"
               for r in rows for x in r["rejected"]]
    notes = (f"Compiled for {FLAGS.soc} with LiteRT's Qualcomm AOT plugin (`targets/qualcomm.py`; placement and size, "
             "no timing offline). ops: operators in the .tflite; shape_ops: SHAPE/STRIDED_SLICE/PACK among them; "
             "partitions: NPU partitions (1 = the whole model in one dispatch); cli_partitions: what `retroq inspect "
             "--target ... --json` reported for the default export. Calibration: 16 uniform random images in the "
             "model's pixel range (placement does not depend on the values).")
    extra_md = ("Operators left on the CPU, with the compiler's reasons:\n\n" + "\n".join(reasons)) if reasons else ""
    common.write_results(FLAGS.out, "hexagon", "Qualcomm Hexagon placement of the zoo models' exports", rows,
                         COLUMNS, started=started, notes=notes, extra_md=extra_md,
                         params={"models": FLAGS.models, "soc": FLAGS.soc})


if __name__ == "__main__":
    app.run(main)
