"""Small grid over SynthesisConfig defaults (learning_rate x class_weight) on ResNet-20.

Score: W4A8 per-channel top-1 agreement and logit SQNR vs FP32 on an evenly spaced
subset of the 6102 zoo images (test + train). Question: which Adam step size and class
weight give the best calibration data at a budget that keeps `retroq convert` quick?

    .venv/bin/python -m benchmarks.synthesis_defaults --zoo_dir ../shared/zoo
"""
from __future__ import annotations

import time

from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_integer("depth", 20, "ResNet depth.")
flags.DEFINE_integer("samples_per_class", 16, "Samples per class for every grid point.")
flags.DEFINE_integer("iterations", 100, "Synthesis iterations for every grid point.")
flags.DEFINE_list("learning_rates", ["0.05", "0.1", "0.25"], "Adam learning rates.")
flags.DEFINE_list("class_weights", ["1", "10", "100"], "Class-loss weights.")
flags.DEFINE_bool("cross", False, "One-factor-at-a-time cross through lr=0.1, cw=1 instead of the full grid.")
flags.DEFINE_integer("eval_images", 2000, "Evenly spaced subset of the 6102 images for the score.")
flags.DEFINE_integer("weight_bits", 4, "Weight bits of the scored model (W?A8).")


def main(argv):
    del argv
    import tflite_retroq as rq
    from benchmarks.zoo.cifar_resnet import build_resnet
    started = time.perf_counter()
    model = build_resnet(FLAGS.depth, FLAGS.zoo_dir)
    data = common.EvalData(FLAGS.zoo_dir, limit=FLAGS.eval_images)
    ref = common.fp32_reference(model, data)
    lrs = [float(v) for v in FLAGS.learning_rates]
    cws = [float(v) for v in FLAGS.class_weights]
    if FLAGS.cross:
        points = [("retro", lr, 1.0) for lr in lrs] + [("retro", 0.1, cw) for cw in cws if cw != 1.0]
    else:
        points = [("retro", lr, cw) for lr in lrs for cw in cws]
    points.append(("zeroq", 0.1, 0.0))
    rows = []
    for mode, lr, cw in points:
        cfg = rq.SynthesisConfig(mode=mode, samples_per_class=FLAGS.samples_per_class,
                                 iterations=FLAGS.iterations, learning_rate=lr, class_weight=cw or 1.0)
        ds = rq.synthesize(model, cfg, progress=False)
        tfl = common.quantize_variants(model, ds, bits=(FLAGS.weight_bits,))[0][0][1]
        m = common.evaluate_tflite(tfl, data, ref)
        h = ds.loss_history
        row = {"mode": mode, "learning_rate": lr, "class_weight": cw if mode == "retro" else None,
               "agreement": m["agreement"], "sqnr_db": m["sqnr_db"], "kl": m["kl"],
               "final_bn_loss": h["bn"][-1], "final_class_loss": h["class"][-1],
               "bn_loss_at_50pct": h["bn"][len(h["bn"]) // 2],
               "synthesis_s": ds.metadata["seconds"], "img_iter_per_s": ds.metadata["images_per_second"]}
        rows.append(row)
        common.log(str(row))
    cols = ["mode", "learning_rate", "class_weight", "agreement", "sqnr_db", "kl", "bn_loss_at_50pct",
            "final_bn_loss", "final_class_loss", "synthesis_s", "img_iter_per_s"]
    params = {"depth": FLAGS.depth, "samples_per_class": FLAGS.samples_per_class, "iterations": FLAGS.iterations,
              "eval_images": len(data.all_x), "score": f"W{FLAGS.weight_bits}A8 per-channel agreement / logit SQNR",
              "fp32_accuracy_test_subset": ref["accuracy"]}
    common.write_results(FLAGS.out, "synthesis_defaults", "Synthesis defaults grid (ResNet-20)", rows, cols,
                         params=params, started=started)


if __name__ == "__main__":
    app.run(main)
