"""Hybrid quantization: how much of the per-tensor -> per-channel gap does the sensitivity plan recover?

For each model (CIFAR ResNet-20 / ResNet-56, MLPerf IC ResNet-8, MLPerf VWW MobileNetV1, the
Fashion-MNIST depthwise-separable model with BatchNorm), calibrated once on retro data (package
defaults, no input flags), at W8A8 and W4A8:

* per-tensor, per-channel, hybrid Th=0 (the paper's accuracy setting), and hybrid with a budget of
  10 % / 25 % of the weight layers (the most sensitive first); the sensitivity is measured on the same
  retro images at the same weight bits. Columns: top-1 (where labels mean something), agreement and
  output SQNR vs the float model, number of per-channel layers, sensitivity seconds and its speedup
  over the naive 2L full passes.
* Fig. 5 of the paper (synthetic-data fidelity, W8): the per-layer sensitivity curve measured with
  real images, gaussian noise, zeroq and retro data, and the Spearman correlation of each with the
  real-data curve. Fig. 4 (the per-layer curves and the Th=0 picks) as a PNG per model.

    .venv/bin/python -m benchmarks.hybrid            # full (about half an hour on 2 shared cores)
    .venv/bin/python -m benchmarks.hybrid --quick    # two models, small budgets (a smoke run)
"""
from __future__ import annotations

import time
from typing import Dict, List

import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks import zoo_models  # noqa: F401  (its flags: --zoo_dir --out --models --quick --eval_limit)

FLAGS = flags.FLAGS
flags.DEFINE_list("hybrid_bits", ["8", "4"], "Weight bit widths (activations int8).")
flags.DEFINE_list("budgets", ["0.10", "0.25"], "Hybrid budgets as fractions of the weight layers.")
flags.DEFINE_list("naive_models", ["resnet20"], "Models whose naive 2L-pass sensitivity is also measured (W8).")
flags.DEFINE_bool("fidelity", True, "Also run the Fig. 5 fidelity study (real / gaussian / zeroq / retro).")

MODELS = ["resnet20", "resnet56", "ic_resnet8", "vww", "fashion_dw_bn"]
QUICK_MODELS = ["ic_resnet8", "fashion_dw_bn"]
COLUMNS = ["model", "weights", "scheme", "per_channel_layers", "top1", "agreement", "sqnr_db",
           "sensitivity_s", "speedup"]


def _cfg(mode: str):
    import tflite_retroq as rq
    return rq.SynthesisConfig(mode=mode, images=32, iterations=5) if FLAGS.quick else rq.SynthesisConfig(mode=mode)


def _evaluate(tfl, x, test_y, is_test, ref, labels_meaningful) -> Dict:
    from tflite_retroq.evaluate import compare, run_tflite
    out = run_tflite(tfl, x, batch_size=128)
    r = compare(out, None, ref)
    acc = float(np.mean(np.argmax(out[is_test], 1) == test_y) * 100) if labels_meaningful else None
    return {"top1": acc, "agreement": r.agreement, "sqnr_db": r.sqnr_db}


def run_model(key: str, rows: List[Dict], fidelity_rows: List[Dict], cost_rows: List[Dict], plots: List[str]):
    import tflite_retroq as rq
    from tflite_retroq.evaluate import keras_outputs
    from tflite_retroq.methods.plan import fidelity
    from tflite_retroq.reports.sensitivity import plot_fidelity, plot_sensitivity
    case = zoo_models.CASES[key]
    common.log(f"{case.name}: loading")
    model, x, test_y, is_test, real = case.load()
    if FLAGS.quick:
        real = real[:32]
    ref = keras_outputs(model, x)
    fp32 = float(np.mean(np.argmax(ref[is_test], 1) == test_y) * 100) if case.labels_meaningful else None
    rows.append({"model": case.name, "weights": "FP32", "scheme": "float32 Keras", "top1": fp32, "agreement": 100.0})
    data = rq.synthesize(model, _cfg("retro"), progress=False)
    common.log(f"  retro data: {len(data)} images in {data.metadata['seconds']:.1f} s")
    cal = rq.calibrate(model, data)
    retro_w8 = None
    for bits in [int(b) for b in FLAGS.hybrid_bits]:
        sens = rq.analyze_sensitivity(model, data, weight_bits=bits)
        if bits == 8:
            retro_w8 = sens
        n_layers = len(sens.layers)
        common.log(f"  W{bits} sensitivity: {n_layers} layers in {sens.seconds:.1f} s ({sens.speedup:.2f}x vs naive)")
        variants = [("per-tensor", "per-tensor", None), ("per-channel", "per-channel", None),
                    ("hybrid Th=0", "hybrid", sens.select())]
        for frac in FLAGS.budgets:
            n = max(1, int(round(float(frac) * n_layers)))
            variants.append((f"hybrid budget {float(frac):.0%} (N={n})", "hybrid", sens.select(max_per_channel=n)))
        for label, scheme, plan in variants:
            tfl = rq.convert(model, data, scheme=scheme, weight_bits=bits, calibrated=cal, plan=plan)
            k = n_layers if scheme == "per-channel" else (0 if plan is None else len(plan.per_channel))
            row = {"model": case.name, "weights": f"W{bits}A8", "scheme": label, "per_channel_layers": f"{k}/{n_layers}",
                   "n_per_channel": k, "n_layers": n_layers,
                   "per_channel_names": list(plan.per_channel) if plan is not None else None}
            if plan is not None:
                row.update(sensitivity_s=round(sens.seconds, 2), speedup=round(sens.speedup, 2))
            row.update(_evaluate(tfl, x, test_y, is_test, ref, case.labels_meaningful))
            rows.append(row)
            common.log(f"    {label}: {row['per_channel_layers']} top1 {row['top1']} agree {row['agreement']:.2f} "
                       f"sqnr {row['sqnr_db']:.2f}")
        path = f"{FLAGS.out}/hybrid_{key}_w{bits}.png"
        plot_sensitivity(sens, sens.select(), path, title=f"{case.name}: per-layer sensitivity, W{bits} "
                         f"({sens.num_images} retro images)")
        plots.append(path)
        cost_rows.append({"model": case.name, "weights": f"W{bits}A8", "layers": n_layers, "images": sens.num_images,
                          "method": "cached", "seconds": round(sens.seconds, 2),
                          "full_pass_s": round(sens.full_pass_seconds, 3), "naive_s": round(sens.naive_seconds, 2),
                          "naive": "estimated (2L x one float pass)", "speedup": round(sens.speedup, 2)})
        if bits == 8 and key in FLAGS.naive_models:
            naive = rq.analyze_sensitivity(model, data, weight_bits=8, method="naive")
            cost_rows.append({"model": case.name, "weights": "W8A8", "layers": n_layers, "images": naive.num_images,
                              "method": "naive (measured)", "seconds": round(naive.seconds, 2),
                              "full_pass_s": round(naive.full_pass_seconds, 3),
                              "naive_s": round(naive.naive_seconds, 2), "naive": "measured",
                              "speedup": round(naive.seconds / sens.seconds, 2)})
            common.log(f"  naive measured: {naive.seconds:.1f} s vs cached {sens.seconds:.1f} s")
    if not FLAGS.fidelity or retro_w8 is None:
        return
    results = {"real": rq.analyze_sensitivity(model, real, weight_bits=8)}
    for mode in ("gaussian", "zeroq"):
        ds = rq.synthesize(model, _cfg(mode), progress=False)
        results[mode] = rq.analyze_sensitivity(model, ds, weight_bits=8)
    results["retro"] = retro_w8
    rho = fidelity(results, "real")
    real_plan = set(results["real"].select().per_channel)
    for src, res in results.items():
        picks = set(res.select().per_channel)
        union = picks | real_plan
        fidelity_rows.append({"model": case.name, "source": src, "images": res.num_images,
                              "rho_kl_per_tensor": rho[src]["kl_per_tensor"],
                              "rho_kl_per_channel": rho[src]["kl_per_channel"],
                              "rho_difference": rho[src]["difference"],
                              "th0_picks": len(picks), "th0_jaccard_vs_real": len(picks & real_plan) / len(union)
                              if union else 1.0})
        common.log(f"  fidelity {src}: rho {rho[src]}")
    path = f"{FLAGS.out}/hybrid_{key}_fidelity.png"
    plot_fidelity(results, rho, path, title=f"{case.name}: per-layer KL per-tensor by data source (W8)")
    plots.append(path)


def _gap_summary(rows: List[Dict]) -> str:
    """Share of the per-tensor -> per-channel gap each hybrid form recovers, per model and bits."""
    lines = ["## Gap recovered", "",
             "(metric(hybrid) - metric(per-tensor)) / (metric(per-channel) - metric(per-tensor)); 1 = all of it. "
             "Shown only where the gap is at least 0.3 points of agreement (smaller gaps are noise).", "",
             "| model | weights | PT -> PC agreement | hybrid | per-channel layers | agreement recovered | "
             "SQNR recovered | top-1 (PT / PC / hybrid) |", "|---|---|---|---|---|---|---|---|"]
    groups: Dict = {}
    for r in rows:
        if r["weights"] != "FP32":
            groups.setdefault((r["model"], r["weights"]), {})[r["scheme"]] = r
    for (model, weights), g in groups.items():
        pt, pc = g.get("per-tensor"), g.get("per-channel")
        if pt is None or pc is None:
            continue
        gap = pc["agreement"] - pt["agreement"]
        for label, h in g.items():
            if not label.startswith("hybrid"):
                continue
            if abs(gap) >= 0.3:
                rec = f"{(h['agreement'] - pt['agreement']) / gap:.2f}"
                sgap = pc["sqnr_db"] - pt["sqnr_db"]
                srec = f"{(h['sqnr_db'] - pt['sqnr_db']) / sgap:.2f}" if abs(sgap) > 0.1 else "-"
            else:
                rec = srec = "(gap < 0.3)"
            top = " / ".join("-" if v is None else f"{v:.2f}" for v in (pt["top1"], pc["top1"], h["top1"]))
            lines.append(f"| {model} | {weights} | {pt['agreement']:.2f} -> {pc['agreement']:.2f} | {label} | "
                         f"{h['per_channel_layers']} | {rec} | {srec} | {top} |")
    return "\n".join(lines)


def _write(rows, fidelity_rows, cost_rows, plots, started):
    notes = (
        "Calibration: one retro dataset per model at the package defaults (no input flags), one calibration shared "
        "by every row of that model. Sensitivity (Algorithm 2) on the same retro images at the row's weight bits; "
        "hybrid Th=0 makes a layer per-channel iff KL_PT - KL_PC > 0; the budget rows keep the N most sensitive "
        "of those. top1 on the CIFAR-10 test images (1017; Fashion-MNIST: 10k), agreement and SQNR vs the float "
        "Keras model on every evaluation image (CIFAR models: 6102 test+train; VWW: resized CIFAR images, no "
        "labels). sensitivity_s / speedup: the analysis's wall time and its ratio to 2L float passes (estimated "
        "from one measured pass; measured side by side for ResNet-20, see the cost table). The machine was shared "
        "by other jobs: timings are rough, ratios come from one run.")
    extra = [_gap_summary(rows)]
    if cost_rows:
        extra += ["## Sensitivity cost", "", common.markdown_table(
            cost_rows, ["model", "weights", "layers", "images", "method", "seconds", "full_pass_s", "naive_s", "naive",
                        "speedup"])]
    if fidelity_rows:
        extra += ["## Synthetic-data fidelity (Fig. 5)", "",
                  "Spearman correlation of each source's per-layer sensitivity (W8) with the curve measured on real "
                  "images (256 training images; VWW: resized CIFAR images), and agreement of the Th=0 picks "
                  "with real data's (Jaccard).", "",
                  common.markdown_table(fidelity_rows, ["model", "source", "images", "rho_kl_per_tensor",
                                                        "rho_kl_per_channel", "rho_difference", "th0_picks",
                                                        "th0_jaccard_vs_real"])]
    extra += ["## Plots", ""] + [f"![{p.split('/')[-1]}]({p.split('/')[-1]})" for p in plots]
    common.write_results(FLAGS.out, "hybrid_quick" if FLAGS.quick else "hybrid",
                         "Hybrid quantization: per-tensor, per-channel and sensitivity-chosen mixes", rows, COLUMNS,
                         params={"quick": FLAGS.quick, "bits": FLAGS.hybrid_bits, "budgets": FLAGS.budgets,
                                 "eval_limit": FLAGS.eval_limit},
                         notes=notes, extra_md="\n\n".join(extra), started=started,
                         extra={"fidelity": fidelity_rows, "sensitivity_cost": cost_rows, "plots": plots})


def main(argv):
    del argv
    started = time.perf_counter()
    keys = FLAGS.models or (QUICK_MODELS if FLAGS.quick else MODELS)
    unknown = [k for k in keys if k not in zoo_models.CASES]
    if unknown:
        raise app.UsageError(f"unknown models {unknown}; choose from {sorted(zoo_models.CASES)}")
    rows: List[Dict] = []
    fidelity_rows: List[Dict] = []
    cost_rows: List[Dict] = []
    plots: List[str] = []
    import os
    os.makedirs(FLAGS.out, exist_ok=True)
    for key in keys:
        run_model(key, rows, fidelity_rows, cost_rows, plots)
        _write(rows, fidelity_rows, cost_rows, plots, started)  # partial results after every model


if __name__ == "__main__":
    app.run(main)
