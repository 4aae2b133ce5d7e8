"""What does a larger synthesis budget buy? Retro on ResNet-20 at several iteration
counts (default samples/class) and sample counts (default iterations): W8A8 and W4A8
per-channel accuracy, agreement and logit SQNR vs FP32 on all 6102 images, with
synthesis seconds.

    .venv/bin/python -m benchmarks.cost_quality --zoo_dir ../shared/zoo
"""
from __future__ import annotations

import time

from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_integer("depth", 20, "ResNet depth.")
flags.DEFINE_list("iterations", ["50", "100", "200", "500"], "Iteration counts (at default samples/class).")
flags.DEFINE_list("samples_per_class", ["6", "26", "102"], "Samples per class (at default iterations).")
flags.DEFINE_list("weight_bits", ["8", "4"], "Weight bit widths.")
flags.DEFINE_float("max_image_iterations", None,
                   "Skip budgets above this many image-iterations (images x iterations) and list them as skipped.")
flags.DEFINE_string("merge_with", None, "Earlier cost_quality JSON whose rows are kept (budgets run here replace "
                    "equal ones), to extend a run with more budgets.")
flags.DEFINE_integer("eval_images", None, "Evenly spaced subset of the 6102 images (default: all).")


def main(argv):
    del argv
    import tflite_retroq as rq
    from benchmarks.zoo.cifar_resnet import build_resnet
    started = time.perf_counter()
    default = rq.SynthesisConfig()
    model = build_resnet(FLAGS.depth, FLAGS.zoo_dir)
    data = common.EvalData(FLAGS.zoo_dir, limit=FLAGS.eval_images)
    ref = common.fp32_reference(model, data)
    budgets = [(8, int(i)) for i in FLAGS.iterations]  # the historical 8 per class
    budgets += [(int(s), default.DEFAULT_ITERATIONS) for s in FLAGS.samples_per_class]
    budgets = sorted(dict.fromkeys(budgets), key=lambda b: b[0] * b[1])
    rows, skipped, earlier = [], [], []
    if FLAGS.merge_with:
        import json
        doc = json.loads(open(FLAGS.merge_with).read())
        earlier = [r for r in doc["rows"] if (r["samples_per_class"], r["iterations"]) not in budgets]
        skipped = [s for s in doc.get("skipped", []) if tuple(int(v) for v in s.split("x")) not in budgets]
        earlier_cmd = doc["command"]
    for spc, its in budgets:
        if FLAGS.max_image_iterations and 10 * spc * its > FLAGS.max_image_iterations:
            skipped.append(f"{spc}x{its}")
            continue
        ds = rq.synthesize(model, rq.SynthesisConfig(samples_per_class=spc, iterations=its, time_budget=None), progress=False)
        variants, cal_s = common.quantize_variants(model, ds, [int(b) for b in FLAGS.weight_bits])
        for b, tfl in variants:
            m = common.evaluate_tflite(tfl, data, ref)
            rows.append({"samples_per_class": spc, "images": 10 * spc, "iterations": its, "weights": f"W{b}A8",
                         **m, "synthesis_s": ds.metadata["seconds"],
                         "img_iter_per_s": ds.metadata["images_per_second"]})
            common.log(str(rows[-1]))
        _write(earlier + rows, skipped, started, ref, data)
    _write(earlier + rows, skipped, started, ref, data, earlier_cmd if FLAGS.merge_with else None)


def _write(rows, skipped, started, ref, data, earlier_cmd=None):
    import tflite_retroq as rq
    notes = (f"FP32 accuracy {ref['accuracy']:.2f} % on {data.n_test} test images; agreement / SQNR on "
             f"{len(data.all_x)} images. synthesis_s includes the first (compiling) step; machine load varies "
             f"between rows, so compare img_iter_per_s too.")
    if skipped:
        notes += f" Skipped for time (samples/class x iterations): {', '.join(skipped)}."
    if earlier_cmd:
        notes += f" Rows of the smaller budgets come from an earlier run: `{earlier_cmd}`."
    rows = sorted(rows, key=lambda r: (r["images"] * r["iterations"], r["weights"]))
    common.write_results(FLAGS.out, "cost_quality", f"Synthesis budget vs quality (ResNet-{FLAGS.depth}, retro)",
                         rows, ["samples_per_class", "images", "iterations", "weights", "accuracy", "agreement",
                                "sqnr_db", "kl", "synthesis_s", "img_iter_per_s"],
                         params={"default_config": rq.SynthesisConfig().to_dict()}, notes=notes, started=started,
                         extra={"skipped": skipped})


if __name__ == "__main__":
    app.run(main)
