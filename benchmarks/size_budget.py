"""Per-layer widths under a flash budget: does the planned mixed W8/W4 file keep float accuracy at 0.65x of W8?

Per model (zoo; ResNet-8 first): one retro synthesis (256 images, 30 steps, as benchmarks/low_bit.py; reused
from --out when present), calibrated once, per-channel W8. Per-layer costs (KL of each layer alone at
W8/W6/W4) measured once on the synthetic images and once on 256 real training images. Rows at --budget
(0.65x the W8 file): the mixed file planned on synthetic costs (INT4 for its W4 layers), the same budget
planned on real costs, uniform W4 (nearest, INT4), W8, FP32; top-1 on the real test images (agreement only
for VWW), agreement with FP32, agreement on held-out synthetic images. The frontier: a sweep of budgets
from the all-W4 to the W8 file, planned on synthetic and on real costs, each file's real top-1 (or
agreement) and held-out synthetic agreement: results/size_budget.{json,md,png}.
Uniform W4 with learned rounding is not rerun here (about 10 minutes a model): its row is taken from
results/low_bit.json (same synthesis settings), marked as such.

    .venv/bin/python -m benchmarks.size_budget --models ic_resnet8 --out /tmp/sb      # one model
    .venv/bin/python -m benchmarks.size_budget --quick --out /tmp/sbq                 # smoke test
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List

import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks import low_bit  # its flags (zoo_dir, models, eval_images, synth_*, quick, out) and load()

FLAGS = flags.FLAGS
flags.DEFINE_float("budget", 0.65, "Size budget as a fraction of the W8 file.")
flags.DEFINE_integer("points", 8, "Budgets in the frontier sweep (all-W4 to W8).")
flags.DEFINE_integer("holdout", 128, "Held-out synthetic images (another seed) for the synthetic agreement.")

COLUMNS = ["model", "variant", "planned_on", "file_kb", "x_w8", "widths", "top1", "delta_fp32", "agreement",
           "holdout_agreement"]


def _widths(plan) -> str:
    counts: Dict[int, int] = {}
    for _, b in plan.widths:
        counts[b] = counts.get(b, 0) + 1
    return ", ".join(f"{n}xW{b}" for b, n in sorted(counts.items(), reverse=True))


def _eval(tfl: bytes, x, y, ref, held, held_ref) -> Dict:
    from tflite_retroq.evaluate import compare, run_tflite
    r = compare(run_tflite(tfl, x, batch_size=128), y, ref)
    h = run_tflite(tfl, held)
    return {"top1": None if y is None else r.accuracy, "agreement": r.agreement,
            "holdout_agreement": float(np.mean(h.argmax(1) == held_ref.argmax(1)) * 100)}


def _learned_w4(name: str):
    path = os.path.join(common.DEFAULT_OUT, "low_bit.json")
    if not os.path.isfile(path):
        return None
    rows = json.load(open(path))["rows"]
    return next((r for r in rows if r["model"] == name and r.get("method") == "retroq" and r["data"] == "synthetic"
                 and r["bits"] == 4 and r["rounding"] == "learned"), None)


def run_model(key: str) -> Dict:
    import tflite_retroq as rq
    from tflite_retroq.evaluate import keras_outputs
    from tflite_retroq.methods import budget as bd
    from tflite_retroq.quality import holdout_images
    from tflite_retroq.tflite.int4 import to_int4
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    name, model, spec, x, y, real = low_bit.load(key)
    ref = keras_outputs(model, x)
    fp32 = None if y is None else float(np.mean(np.argmax(ref, 1) == y) * 100)
    cached = os.path.join(FLAGS.out, f"{key}_synthetic.npz")
    t0 = time.perf_counter()
    if os.path.isfile(cached) and not FLAGS.quick:
        data = rq.SyntheticDataset.load(cached)
    else:
        cfg = rq.SynthesisConfig(samples_per_class=2, iterations=5) if FLAGS.quick else rq.SynthesisConfig(
            images=FLAGS.synth_images, iterations=FLAGS.synth_iterations, time_budget=None)
        data = rq.synthesize(model, cfg, input_spec=spec, progress=False)
        os.makedirs(FLAGS.out, exist_ok=True)
        data.save(cached)
    synth_s = time.perf_counter() - t0
    held = holdout_images(model, data, count=16 if FLAGS.quick else FLAGS.holdout)
    held_ref = keras_outputs(model, held)
    cal = rq.calibrate(model, data)
    w8 = rq.quantize_calibrated(cal)
    common.log(f"{name}: {len(data)} synthetic images ({synth_s:.0f} s), W8 {len(w8)} bytes")
    t0 = time.perf_counter()
    costs = {"synthetic": bd.layer_costs(model, data.images, cal, w8)}
    cost_s = time.perf_counter() - t0
    costs["real"] = bd.layer_costs(model, real[:64] if FLAGS.quick else real, cal, w8)
    common.log(f"  per-layer costs in {cost_s:.0f} s (synthetic)")
    rows: List[Dict] = [dict(model=name, variant="FP32", planned_on="-", file_kb=len(rq.float_tflite(model)) / 1024,
                             top1=fp32, agreement=100.0, holdout_agreement=100.0)]

    def row(variant, planned_on, tfl, twin, widths):
        m = _eval(twin, x, y, ref, held, held_ref)
        d = None if m["top1"] is None or fp32 is None else m["top1"] - fp32
        return dict(model=name, variant=variant, planned_on=planned_on, file_kb=len(tfl) / 1024,
                    x_w8=len(tfl) / len(w8), widths=widths, delta_fp32=d, **m)

    rows.append(row("W8", "-", w8, w8, "all W8"))
    w4 = limit_weight_bits(w8, cal, 4)
    rows.append(row("uniform W4 nearest (INT4)", "-", to_int4(w4), w4, "all W4"))
    learned = _learned_w4(name)
    if learned is not None:
        rows.append(dict(model=name, variant="uniform W4 learned (from low_bit.json)", planned_on="-",
                         file_kb=learned.get("int4_kb"), x_w8=(learned.get("int4_kb") or 0) * 1024 / len(w8), top1=learned["top1"], delta_fp32=learned["delta_fp32"],
                         agreement=learned["agreement"], widths="all W4"))
    plans = {}
    for source in ("synthetic", "real"):
        try:
            f, twin, plan = bd.plan_budget(model, data.images, w8, cal, f"{FLAGS.budget}x", costs=costs[source])
        except rq.ConfigError as e:  # a small model whose non-weight bytes keep even all-W4 above the budget
            rows.append(dict(model=name, variant=f"mixed at {FLAGS.budget}x: refused", planned_on=source,
                             widths=str(e)[:160]))
            common.log(f"  {e}")
            continue
        plans[source] = plan.to_dict()
        rows.append(row(f"mixed at {FLAGS.budget}x", source, f, twin, _widths(plan)))
        common.log(f"  mixed ({source} costs): {len(f)} bytes, {_widths(plan)}, top1 {rows[-1]['top1']}")
    frontier = {}
    for source in ("synthetic", "real"):
        pts = []
        for plan, f, twin in bd.sweep(model, data.images, w8, cal, points=FLAGS.points, costs=costs[source]):
            m = _eval(twin, x, y, ref, held, held_ref)
            pts.append(dict(file_bytes=len(f), widths=_widths(plan), **m))
        frontier[source] = pts
    return {"rows": rows, "extra": {"model": name, "w8_bytes": len(w8), "plans": plans, "frontier": frontier,
                                    "costs": {s: {str(k): v for k, v in c.items()} for s, c in costs.items()},
                                    "cost_seconds_synthetic": cost_s, "fp32_top1": fp32}}


def plot(models: List[Dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        key = "top1" if m["fp32_top1"] is not None else "agreement"
        for source, style in (("synthetic", "o-"), ("real", "s--")):
            pts = sorted(m["frontier"][source], key=lambda p: p["file_bytes"])
            ax.plot([p["file_bytes"] / 1024 for p in pts], [p[key] for p in pts], style,
                    label=f"planned on {source} costs: real {key}")
        pts = sorted(m["frontier"]["synthetic"], key=lambda p: p["file_bytes"])
        ax.plot([p["file_bytes"] / 1024 for p in pts], [p["holdout_agreement"] for p in pts], "^:",
                label="planned on synthetic: held-out synthetic agreement")
        if m["fp32_top1"] is not None:
            ax.axhline(m["fp32_top1"], color="gray", lw=0.8, label="FP32 top-1")
        ax.axvline(FLAGS.budget * m["w8_bytes"] / 1024, color="red", lw=0.8, ls=":", label=f"{FLAGS.budget}x W8")
        ax.set_title(m["model"], fontsize=10)
        ax.set_xlabel("file size (KiB)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: List[Dict], models: List[Dict], started: float) -> None:
    """All results so far (written after every model, so a run cut short keeps what it finished)."""
    os.makedirs(FLAGS.out, exist_ok=True)
    plot(models, os.path.join(FLAGS.out, "size_budget.png"))
    fr = []
    for m in models:
        fr.append(f"### Frontier: {m['model']} (W8 file {m['w8_bytes']} bytes)\n")
        fr.append("| planned on | file bytes | widths | top-1 | agreement | held-out synthetic agreement |")
        fr.append("|---|---:|---|---:|---:|---:|")
        for source in ("synthetic", "real"):
            for p in sorted(m["frontier"][source], key=lambda p: p["file_bytes"]):
                fr.append(f"| {source} | {p['file_bytes']} | {p['widths']} | {common._fmt(p['top1'])} | "
                          f"{common._fmt(p['agreement'])} | {common._fmt(p['holdout_agreement'])} |")
        fr.append("")
    common.write_results(FLAGS.out, "size_budget", f"Per-layer widths under a {FLAGS.budget}x flash budget", rows,
                         COLUMNS, params={"models": ",".join(FLAGS.models), "done": ",".join(m["model"] for m in models),
                                          "budget": FLAGS.budget, "points": FLAGS.points,
                                          "synth_images": FLAGS.synth_images, "synth_iterations": FLAGS.synth_iterations,
                                          "eval_images": FLAGS.eval_images, "holdout": FLAGS.holdout,
                                          "quick": FLAGS.quick},
                         notes=__doc__.split("\n\n")[1], extra_md="\n".join(fr), started=started,
                         extra={"models": models})


def main(argv):
    del argv
    started = time.perf_counter()
    rows, models = [], []
    for key in FLAGS.models:
        r = run_model(key)
        rows += r["rows"]
        models.append(r["extra"])
        write(rows, models, started)


if __name__ == "__main__":
    FLAGS.set_default("models", ["ic_resnet8"])
    app.run(main)
