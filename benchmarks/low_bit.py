"""Do 4- and 6-bit weights keep float accuracy without data? Nearest vs learned rounding, synthetic vs real.

Per model: one retro synthesis (256 images, 30 steps, no time budget) and 256 real training images; each calibrated once;
from each calibration W8/W6/W4 (int8 activations, per-channel) with rounding "nearest" and "learned"
(`--learned_bits`). Per row: top-1 on real test images (agreement only for VWW, whose zoo images are
CIFAR pictures), agreement / logit SQNR vs FP32, conversion seconds (calibration excluded, learned
rounding included), file size as int8 containers and, at W4, as INT4 (tflite/int4.py). Per model the
TFLite Micro tensor arena of the plain W4 file and of its LUT-packed twin (batch-1 export; weight
values do not change an arena). Peer rows: ai-edge-quantizer 0.10 fed the same images, static W8A8
and W4A8 (min-max) and W4A8 with its GPTQ algorithm (registered for FULLY_CONNECTED only in 0.10).

    .venv/bin/python -m benchmarks.low_bit --models ic_resnet8 --out /tmp/lb_r8     # one model
    .venv/bin/python -m benchmarks.low_bit --merge /tmp/lb_r8,/tmp/lb_r20           # -> results/low_bit.*
    .venv/bin/python -m benchmarks.low_bit --quick --out /tmp/q                      # smoke test
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List

import numpy as np
from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", os.environ.get("RETROQ_ZOO", common.DEFAULT_ZOO), "Shared model zoo directory.")
flags.DEFINE_list("models", ["ic_resnet8", "resnet20", "fashion_dw_bn"],
                  "ic_resnet8, vww_mobilenetv1_96, resnet20/32/44/56, fashion_dw_bn, fashion_cnn_nobn.")
flags.DEFINE_list("weight_bits", ["8", "6", "4"], "Weight bit widths (activations int8).")
flags.DEFINE_list("learned_bits", ["8", "6", "4"], "Bit widths that also get learned rounding.")
flags.DEFINE_list("sources", ["synthetic", "real"], "Calibration data: synthetic (retro) and/or real (256).")
flags.DEFINE_integer("eval_images", 1017, "Test images evaluated (Fashion: the first N of 10000).")
flags.DEFINE_bool("peer", True, "Also run ai-edge-quantizer on the same images.")
flags.DEFINE_bool("arena", True, "Measure the TFLM arena (plain vs LUT-packed W4, batch 1).")
flags.DEFINE_integer("synth_images", 256, "Synthetic images (retro, package defaults otherwise).")
flags.DEFINE_integer("synth_iterations", 30, "Synthesis steps, fixed (no time budget) so a rerun is the same run.")
flags.DEFINE_bool("quick", False, "Smoke test: tiny synthesis, 64 real images, 100 eval images, W4 only.")
flags.DEFINE_bool("layerwise", False, "Only learned rounding layer by layer (RoundingConfig(blocks=False)), rows "
                  "'learned-layer', beside the default block reconstruction in a merge.")
flags.DEFINE_string("merge", None, "Comma-separated result dirs to merge into --out (no conversion).")
flags.DEFINE_string("note", "", "Extra text for the Markdown (e.g. what a merge left out).")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")

COLUMNS = ["model", "method", "data", "bits", "rounding", "top1", "delta_fp32", "agreement", "sqnr_db", "seconds",
           "size_kb", "int4_kb"]
NAMES = {"ic_resnet8": "MLPerf IC ResNet-8", "vww_mobilenetv1_96": "MLPerf VWW MobileNetV1",
         "fashion_dw_bn": "Fashion dw+BN", "fashion_cnn_nobn": "Fashion CNN raw pixels"}


def load(key: str):
    """(display name, Keras model, InputSpec or None, eval images, eval labels or None, 256 real images)."""
    import tflite_retroq as rq
    n = FLAGS.eval_images
    if key.startswith("resnet"):
        from benchmarks.zoo.cifar_resnet import build_resnet, load_cifar
        x, y = load_cifar(FLAGS.zoo_dir, "test")
        real = load_cifar(FLAGS.zoo_dir, "train")[0][:256]
        return f"ResNet-{key[6:]}", build_resnet(int(key[6:]), FLAGS.zoo_dir), None, x[:n], y[:n], real
    if key.startswith("fashion_"):
        from benchmarks.zoo import fashion
        kind = key[len("fashion_"):]
        x, y = fashion.eval_images(kind)
        real = fashion.eval_images(kind, "train")[0][:256]
        return NAMES[key], fashion.trained_model(kind), rq.InputSpec(value_range=fashion.INPUT_RANGE[kind]), \
            x[:n], y[:n], real
    from benchmarks.zoo import mlperf
    x, y = mlperf.eval_images(key, FLAGS.zoo_dir)
    real = mlperf.eval_images(key, FLAGS.zoo_dir, "train")[0][:256]
    labels = y[:n] if mlperf.FLOAT_TOP1.get(key) is not None else None
    return NAMES[key], mlperf.load_model(key, FLAGS.zoo_dir), rq.InputSpec(value_range=mlperf.INPUT_RANGE[key]), \
        x[:n], labels, real


def metrics(tfl: bytes, x, y, ref) -> Dict:
    from tflite_retroq.evaluate import compare, run_tflite
    out = run_tflite(tfl, x, batch_size=128)
    r = compare(out, y, ref)
    return {"top1": None if y is None else r.accuracy, "agreement": r.agreement, "sqnr_db": r.sqnr_db}


def arena(model, data) -> Dict:
    """TFLM arena (bytes) of the plain and the LUT-packed W4 batch-1 file, and their sizes."""
    import tflite_retroq as rq
    from tflite_retroq.targets.tflm import tflm_run
    cal = rq.calibrate(model, data, batch_size=1)
    plain = rq.convert(model, data, weight_bits=4, calibrated=cal, batch_size=1)
    packed = rq.convert(model, data, weight_bits=4, calibrated=cal, batch_size=1, pack="lut")
    return {"arena_plain": tflm_run(plain).arena_bytes, "arena_lut": tflm_run(packed).arena_bytes,
            "size_plain": len(plain), "size_lut": len(packed)}


def peer_rows(name, model, images, x, y, ref, source, fp32) -> List[Dict]:
    """ai-edge-quantizer static recipes on the float .tflite, calibrated on `images`."""
    import tflite_retroq as rq
    from ai_edge_quantizer import quantizer as aeq_quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName
    from tflite_retroq.io_utils import library_quiet
    float_model = rq.float_tflite(model)
    rows = []
    for bits, algo in ((8, None), (4, None), (4, "gptq")):
        t0 = time.perf_counter()
        qt = aeq_quantizer.Quantizer(float_model)
        qt.add_static_config(".*", TFLOperationName.ALL_SUPPORTED, 8, bits)
        if algo == "gptq":
            qt.add_static_config(".*", TFLOperationName.FULLY_CONNECTED, 8, bits, algorithm_key=AlgorithmName.GPTQ)
        from ai_edge_litert.interpreter import Interpreter
        sig = Interpreter(model_content=float_model).get_signature_list()
        key = next(iter(sig))
        in_name = sig[key]["inputs"][0]
        calib = {key: [{in_name: images[i:i + 1].astype(np.float32)} for i in range(len(images))]}
        with library_quiet():
            result = qt.calibrate(calib, num_threads=2)
            q = bytes(qt.quantize(result, enable_progress_report=False).quantized_model)
        secs = time.perf_counter() - t0
        m = metrics(q, x, y, ref)
        rows.append(dict(model=name, method="ai-edge-quantizer" + (" GPTQ(FC)" if algo else ""), data=source,
                         bits=bits, rounding="nearest" if algo is None else "gptq", seconds=secs,
                         size_kb=len(q) / 1024, delta_fp32=_delta(m, fp32), **m))
    return rows


def _delta(m, fp32):
    return None if m["top1"] is None or fp32 is None else m["top1"] - fp32


def run_model(key: str) -> Dict:
    import tflite_retroq as rq
    from tflite_retroq.evaluate import keras_outputs
    from tflite_retroq.methods.rounding import RoundingConfig
    from tflite_retroq.tflite.int4 import to_int4
    name, model, spec, x, y, real = load(key)
    ref = keras_outputs(model, x)
    fp32 = None if y is None else float(np.mean(np.argmax(ref, 1) == y) * 100)
    rows = [dict(model=name, method="float", data="-", bits=32, rounding="-", top1=fp32, agreement=100.0,
                 size_kb=len(rq.float_tflite(model)) / 1024)][:0 if FLAGS.layerwise else 1]   # a merge has it once
    extra: Dict = {"model": name, "command": common.command_line(), "finished": False}
    bits_list = [int(b) for b in FLAGS.weight_bits]
    learned = {int(b) for b in FLAGS.learned_bits}
    rcfg = RoundingConfig(iterations=20 if FLAGS.quick else None, blocks=not FLAGS.layerwise)
    for source in FLAGS.sources:
        t0 = time.perf_counter()
        cached = os.path.join(FLAGS.out, f"{key}_synthetic.npz")
        if source == "synthetic" and os.path.isfile(cached) and not FLAGS.quick:  # a rerun reuses its images
            data = rq.SyntheticDataset.load(cached)
        elif source == "synthetic":
            cfg = rq.SynthesisConfig(samples_per_class=2, iterations=5) if FLAGS.quick else rq.SynthesisConfig(
                images=FLAGS.synth_images, iterations=FLAGS.synth_iterations, time_budget=None)
            data = rq.synthesize(model, cfg, input_spec=spec, progress=False)
            os.makedirs(FLAGS.out, exist_ok=True)
            data.save(cached)
        else:
            data = rq.SyntheticDataset.from_images(real[:64] if FLAGS.quick else real)
        extra[f"{source}_seconds"] = time.perf_counter() - t0
        cal = rq.calibrate(model, data)
        common.log(f"{name} {source}: {len(data)} images, calibrated")
        for bits in bits_list:
            roundings = ("nearest", "learned") if bits in learned else ("nearest",)
            for rounding in roundings[1:] if FLAGS.layerwise else roundings:
                t0 = time.perf_counter()
                q = rq.convert(model, data, weight_bits=bits, calibrated=cal, rounding=rounding, rounding_config=rcfg)
                rounding = "learned-layer" if FLAGS.layerwise else rounding
                secs = time.perf_counter() - t0
                m = metrics(q, x, y, ref)
                row = dict(model=name, method="retroq", data=source, bits=bits, rounding=rounding, seconds=secs,
                           size_kb=len(q) / 1024, delta_fp32=_delta(m, fp32), **m)
                if bits == 4:
                    q4 = to_int4(q)
                    row["int4_kb"] = len(q4) / 1024
                    row["int4_identical"] = bool(np.array_equal(
                        common_run(q, x[:64]), common_run(q4, x[:64])))
                rows.append(row)
                partial(rows, extra)
                common.log(f"  W{bits} {rounding}: top1 {m['top1']} agreement {m['agreement']:.2f} ({secs:.0f} s)")
        if FLAGS.peer:
            try:
                rows += peer_rows(name, model, data.images, x, y, ref, source, fp32)
            except Exception as e:  # the peer is optional; say why it did not run
                extra[f"peer_error_{source}"] = f"{type(e).__name__}: {str(e)[:300]}"
                common.log(f"  peer failed: {extra[f'peer_error_{source}']}")
        if FLAGS.arena and source == "synthetic":
            try:
                extra["tflm"] = arena(model, data)
            except Exception as e:
                extra["tflm_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    extra["finished"] = True
    return {"rows": rows, "extra": extra}


def partial(rows: List[Dict], extra: Dict) -> None:
    """Rows so far, so a run cut short still leaves its results (merged like a finished one)."""
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "low_bit_partial.json"), "w") as f:
        json.dump(common._json_safe({"rows": rows, "models": [extra]}), f, indent=1)


def common_run(q: bytes, x):
    from tflite_retroq.evaluate import run_tflite
    return run_tflite(q, x, resolver="builtin")


def plot(rows: List[Dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for ax, name in zip(axes[0], models):
        rs = [r for r in rows if r["model"] == name and r["method"] != "float"]
        metric = "top1" if any(r.get("top1") is not None for r in rs) else "agreement"
        for (method, data, rounding), marker in _series(rs):
            pts = sorted((r.get("int4_kb") or r["size_kb"], r[metric]) for r in rs
                         if (r["method"], r["data"], r["rounding"]) == (method, data, rounding) and r.get(metric) is not None)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=f"{method} {rounding} ({data})")
        fl = next((r for r in rows if r["model"] == name and r["method"] == "float"), None)
        if fl is not None and fl.get(metric) is not None:
            ax.axhline(fl[metric], color="k", lw=0.8, ls="--", label="FP32")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("file size KB (W4: INT4)")
        ax.set_ylabel(metric + " %")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(rows):
    keys = list(dict.fromkeys((r["method"], r["data"], r["rounding"]) for r in rows))
    markers = "os^vD<>px*"
    return [(k, markers[i % len(markers)]) for i, k in enumerate(keys)]


def summary(rows: List[Dict], extras: List[Dict]) -> str:
    """Per model and data: learned vs nearest at each width, against the issue's bars (W4 within 1.5 points
    of FP32, W6 within 0.3; synthetic within 1 point of real; agreement for models without labels)."""
    lines = ["Learned vs nearest, per-channel, int8 activations (top-1 minus FP32 in points; agreement % for "
             "models without labels):", ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name and r["method"] == "retroq"]
        labelled = any(r.get("top1") is not None for r in rs)

        def val(r):
            return r.get("delta_fp32") if labelled else r.get("agreement")
        for data in dict.fromkeys(r["data"] for r in rs):
            parts = []
            for bits in sorted({r["bits"] for r in rs if r["data"] == data}, reverse=True):
                cell = {r["rounding"]: r for r in rs if r["data"] == data and r["bits"] == bits}
                txt = " / ".join(f"{k} {val(v):+.2f}" if labelled else f"{k} {val(v):.2f}"
                                 for k, v in sorted(cell.items(), key=lambda kv: kv[0] != "nearest") if val(v) is not None)
                secs = cell.get("learned", {}).get("seconds")
                parts.append(f"W{bits}: {txt}" + (f" ({secs:.0f} s)" if secs is not None else ""))
            lines.append(f"- {name}, {data}: " + "; ".join(parts))
    for e in extras:
        if "tflm" in e:
            t = e["tflm"]
            lines.append(f"- {e['model']}: TFLM arena plain W4 {t['arena_plain']} B vs LUT-packed {t['arena_lut']} B; "
                         f"file {t['size_plain']} B vs {t['size_lut']} B")
    return "\n".join(lines)


def main(argv):
    del argv
    started = time.perf_counter()
    if FLAGS.quick:
        FLAGS.eval_images, FLAGS.weight_bits, FLAGS.learned_bits = 100, ["4"], ["4"]
    if FLAGS.merge:
        rows, extras = [], []
        for d in FLAGS.merge.split(","):
            path = os.path.join(d, "low_bit.json")
            if not os.path.isfile(path):
                path = os.path.join(d, "low_bit_partial.json")
            with open(path) as f:
                doc = json.load(f)
            rows += doc["rows"]
            done = path.endswith("low_bit.json")
            extras += [dict({"finished": done}, **e) for e in doc.get("models", [])]
    else:
        rows, extras = [], []
        for key in FLAGS.models:
            r = run_model(key)
            rows += r["rows"]
            extras.append(r["extra"])
    params = {"models": ",".join(FLAGS.models), "weight_bits": ",".join(FLAGS.weight_bits),
              "learned_bits": ",".join(FLAGS.learned_bits), "eval_images": FLAGS.eval_images}
    if FLAGS.merge:  # each part keeps its own command line and whether it finished
        params = {"merged": "; ".join(f"{e.get('model')}: {e.get('command', '?')}"
                                      f"{'' if e.get('finished', True) else ' (cut short)'}" for e in extras)}
    notes = ("top1 on real test images (CIFAR test_first1017, Fashion test first N); delta_fp32 = top1 - FP32 top1. "
             "seconds: conversion from the calibrated model (learned rounding included, synthesis excluded). "
             "int4_kb: the same W4 file with INT4 weight tensors (outputs checked identical on the builtin kernels). "
             "Peer: ai-edge-quantizer 0.10 static recipes calibrated on the same images (float I/O).")
    os.makedirs(FLAGS.out, exist_ok=True)
    common.write_results(FLAGS.out, "low_bit", "Low-bit weights: nearest vs learned rounding, synthetic vs real data",
                         rows, COLUMNS, params=params, notes=notes + ("\n\n" + FLAGS.note if FLAGS.note else ""), extra_md=summary(rows, extras), started=started,
                         extra={"models": extras})
    plot(rows, os.path.join(FLAGS.out, "low_bit.png"))


if __name__ == "__main__":
    app.run(main)
