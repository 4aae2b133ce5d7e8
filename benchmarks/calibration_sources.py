"""Which calibration data: real images, Gaussian noise, ZeroQ or retro-synthesis?

For CIFAR-10 ResNet-20/56, each with BatchNorm and BN-folded (the paper's "no
BatchNorm" case: ZeroQ/retro then synthesize from the prior (+class) loss alone),
calibrate once per source and quantize per-channel at W8A8, W6A8 and W4A8. Reports
accuracy on test_first1017 and top-1 agreement / logit SQNR vs the model's own FP32
outputs on all 6102 zoo images, plus synthesis seconds.

    .venv/bin/python -m benchmarks.calibration_sources --zoo_dir ../shared/zoo --depths 20,56
    .venv/bin/python -m benchmarks.calibration_sources --quick --out /tmp/q   # smoke test
"""
from __future__ import annotations

import time

from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_list("depths", ["20", "56"], "ResNet depths.")
flags.DEFINE_bool("quick", False, "Smoke test: ResNet-20 only, tiny synthesis budgets, a few hundred eval images.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_integer("real_images", 256, "Real calibration images (the first N of train_subset5085).")
flags.DEFINE_list("sources", ["real", "gaussian", "zeroq", "retro"], "Calibration sources.")
flags.DEFINE_list("weight_bits", ["8", "6", "4"], "Weight bit widths (activations are always int8).")
flags.DEFINE_bool("reuse_model_independent", True,
                  "real and gaussian calibration data do not depend on the model and the converter folds BN "
                  "itself, so for the BN-folded models copy those rows from the BN model (marked with a note; "
                  "--noreuse_model_independent evaluates them).")
flags.DEFINE_list("bits_depths", None, "Depths that get every --weight_bits; the others skip 6-bit weights "
                  "(to save time). Default: all depths.")

QUICK = {"depths": [20], "eval_images": 300, "real_images": 64, "samples_per_class": 2, "iterations": 5}


def _synth_config(mode: str):
    import tflite_retroq as rq
    if FLAGS.quick:
        return rq.SynthesisConfig(mode=mode, samples_per_class=QUICK["samples_per_class"],
                                  iterations=QUICK["iterations"])
    return rq.SynthesisConfig(mode=mode)  # the package defaults


def main(argv):
    del argv
    import tflite_retroq as rq
    from benchmarks.zoo.cifar_resnet import build_resnet
    started = time.perf_counter()
    depths = QUICK["depths"] if FLAGS.quick else [int(d) for d in FLAGS.depths]
    bits = [int(b) for b in FLAGS.weight_bits]
    n_real = QUICK["real_images"] if FLAGS.quick else FLAGS.real_images
    data = common.EvalData(FLAGS.zoo_dir, limit=QUICK["eval_images"] if FLAGS.quick else None)
    rows, copied = [], {}
    for depth in depths:
        for folded in (False, True):
            model = build_resnet(depth, FLAGS.zoo_dir, folded=folded)
            name = f"ResNet-{depth}" + (" (BN folded)" if folded else "")
            ref = common.fp32_reference(model, data)
            base = {"model": name, "depth": depth, "bn_folded": folded}
            rows.append(dict(base, source="fp32", weights="FP32", accuracy=ref["accuracy"], agreement=100.0,
                             sqnr_db=float("inf"), kl=0.0, synthesis_s=None, calibration_s=None,
                             accuracy_full_test=ref["accuracy_full_test"]))
            common.log(f"{name} FP32 accuracy {ref['accuracy']:.2f}")
            for source in FLAGS.sources:
                key = (depth, source)
                if (folded and source in ("real", "gaussian") and FLAGS.reuse_model_independent
                        and key in copied):
                    for r in copied[key]:
                        rows.append(dict(r, **base, note="copied from the BN model (same data, converter folds BN)"))
                    continue
                synth_s = None
                if source == "real":
                    calib = data.real_calibration(n_real)
                else:
                    ds = rq.synthesize(model, _synth_config(source), progress=False)
                    calib, synth_s = ds, ds.metadata["seconds"]
                    common.log(f"{name} {source}: {len(ds.images)} images in {synth_s:.1f} s "
                               f"({ds.metadata['images_per_second'] or 0:.0f} img-it/s)")
                use_bits = bits if (FLAGS.bits_depths is None or str(depth) in FLAGS.bits_depths) \
                    else [b for b in bits if b != 6]
                variants, cal_s = common.quantize_variants(model, calib, use_bits)
                src_rows = []
                for b, tfl in variants:
                    m = common.evaluate_tflite(tfl, data, ref)
                    r = dict(base, source=source, weights=f"W{b}A8", **m, synthesis_s=synth_s, calibration_s=cal_s)
                    src_rows.append(r)
                    common.log(f"{name} {source} W{b}A8: acc {m['accuracy']:.2f} agree {m['agreement']:.2f} "
                               f"sqnr {m['sqnr_db']:.2f}")
                rows.extend(src_rows)
                if not folded:
                    copied[key] = src_rows
            # partial results after every model, so a long run can be inspected / survives a kill
            _write(rows, started, data, n_real)
    _write(rows, started, data, n_real)


def _write(rows, started, data, n_real):
    import tflite_retroq as rq
    cfg = rq.SynthesisConfig() if not FLAGS.quick else _synth_config("retro")
    params = {"quick": FLAGS.quick, "real_images": n_real, "eval_images_all": len(data.all_x),
              "accuracy_images": data.n_test, "scheme": "per-channel",
              "synthesis_config": {k: v for k, v in cfg.to_dict().items() if k != "mode"}}
    notes = ("accuracy: top-1 % on test_first1017 (1 image = 0.098 points, s.e. ~0.85 points); agreement: top-1 % "
             "agreement with the same model's FP32 Keras outputs, and sqnr_db: logit SQNR, both on all test+train "
             "images; synthesis_s: wall seconds of synthesize(); calibration_s: one calibration shared by the "
             "three weight widths. BN-folded rows: zeroq/retro synthesized from the folded model (no BN "
             "statistics: prior + class loss only).")
    extra = _summary(rows)
    common.write_results(FLAGS.out, "calibration_sources", "Calibration data sources (CIFAR-10 ResNets, int8 per-channel)",
                         rows, ["model", "source", "weights", "accuracy", "agreement", "sqnr_db", "kl",
                                "synthesis_s", "calibration_s"],
                         params=params, notes=notes, extra_md=extra, started=started)


def _summary(rows) -> str:
    """Target checks: retro vs real at W8A8, retro vs gaussian on BN-folded at W4A8."""
    idx = {(r["model"], r["source"], r["weights"]): r for r in rows}
    lines = ["## Target checks", "", "| model | check | retro | baseline | delta |", "|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for (w, base, metric) in (("W8A8", "real", "accuracy"), ("W8A8", "real", "agreement"),
                                  ("W4A8", "gaussian", "agreement"), ("W4A8", "gaussian", "sqnr_db")):
            a, b = idx.get((model, "retro", w)), idx.get((model, base, w))
            if a and b:
                lines.append(f"| {model} | {w} {metric} retro vs {base} | {a[metric]:.2f} | {b[metric]:.2f} | "
                             f"{a[metric] - b[metric]:+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
