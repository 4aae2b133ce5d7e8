"""Does generating images in small mini-batches cost quality against the per-class form (all in one batch)?

Same image count, same iterations, same seed; A: every image in one batch (the per-class form, BatchNorm
statistics over all classes at once), B: mini-batches of `--batch` images (statistics matched per batch,
each batch spread over the classes). W8A8 per-channel, agreement and output SQNR vs the float model on the
CIFAR zoo images (6102, or --eval_limit), no input flags.

    .venv/bin/python -m benchmarks.batching
"""
from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_list("models", ["resnet20", "resnet56", "ic_resnet8", "vww"], "Models.")
flags.DEFINE_integer("samples_per_class", 16, "Per-class form: images per class (x10 classes, x2 for VWW).")
flags.DEFINE_integer("batch", 32, "Mini-batch size of the batched form.")
flags.DEFINE_integer("iterations", 60, "Iterations for both forms.")
flags.DEFINE_integer("eval_limit", 3000, "Evenly spaced subset of the evaluation images.")


def _load(name: str):
    from benchmarks.zoo import mlperf
    from benchmarks.zoo.cifar_resnet import build_resnet
    data = common.EvalData(FLAGS.zoo_dir, limit=FLAGS.eval_limit)
    if name.startswith("resnet"):
        return build_resnet(int(name[6:]), FLAGS.zoo_dir), data.all_x
    model = mlperf.load_model({"ic_resnet8": "ic_resnet8", "vww": "vww_mobilenetv1_96"}[name], FLAGS.zoo_dir)
    if name == "ic_resnet8":
        return model, data.all_x
    import tensorflow as tf
    return model, np.clip(tf.image.resize(data.all_x, (96, 96)).numpy() / 255.0, 0, 1).astype(np.float32)


def main(argv):
    del argv
    import tflite_retroq as rq
    from tflite_retroq.evaluate import compare, keras_outputs, run_tflite
    started = time.perf_counter()
    rows = []
    for name in FLAGS.models:
        model, x = _load(name)
        ref = keras_outputs(model, x)
        classes = int(model.outputs[0].shape[-1])
        spc = FLAGS.samples_per_class * (10 // classes if classes < 10 else 1)
        n = spc * classes
        forms = [("per-class, one batch", rq.SynthesisConfig(samples_per_class=spc, batch_size=n,
                                                             iterations=FLAGS.iterations, time_budget=None)),
                 (f"batches of {FLAGS.batch}", rq.SynthesisConfig(images=n, batch_size=FLAGS.batch,
                                                                  iterations=FLAGS.iterations, time_budget=None))]
        for form, cfg in forms:
            t0 = time.perf_counter()
            data = rq.synthesize(model, cfg, progress=False)
            secs = time.perf_counter() - t0
            out = run_tflite(rq.convert(model, data), x, batch_size=128)
            r = compare(out, None, ref)
            rows.append({"model": name, "form": form, "images": len(data), "batch": data.metadata["plan"]["batch_size"],
                         "iterations": FLAGS.iterations, "agreement": r.agreement, "sqnr_db": r.sqnr_db,
                         "synthesis_s": round(secs, 1)})
            common.log(str(rows[-1]))
    notes = ("Same images, iterations and seed in both forms; agreement / SQNR of the W8A8 per-channel model vs "
             f"float on {FLAGS.eval_limit} CIFAR zoo images (VWW: resized to 96x96, fidelity only). The machine was "
             "shared: synthesis_s is rough.")
    common.write_results(FLAGS.out, "batching", "Mini-batches vs the per-class form (same image count)", rows,
                         ["model", "form", "images", "batch", "iterations", "agreement", "sqnr_db", "synthesis_s"],
                         params={"samples_per_class": FLAGS.samples_per_class, "batch": FLAGS.batch,
                                 "iterations": FLAGS.iterations, "eval_limit": FLAGS.eval_limit},
                         notes=notes, started=started)


if __name__ == "__main__":
    app.run(main)
