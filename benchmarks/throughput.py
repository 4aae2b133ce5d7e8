"""How close is synthesis to the physical bound of its hardware?

Ratio of synthesis steady-state image-iterations/s (SyntheticDataset.metadata
['images_per_second'], first compiled step excluded) to the rate of a bare
`tf.function(jit_compile=True)` forward + backward step w.r.t. the input on the same
model and batch. Measured interleaved (A B A B ...) in one process, so load from other
jobs on the shared machine hits both alike. Target: ratio >= 0.8.

    .venv/bin/python -m benchmarks.throughput --zoo_dir ../shared/zoo --depths 20,56
"""
from __future__ import annotations

import statistics
import time

from absl import app, flags

from benchmarks import common
from benchmarks.common import bare_rate

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_list("depths", ["20", "56"], "ResNet depths.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_integer("steps", 8, "Timed steps per measurement (after one warm-up/compile step).")
flags.DEFINE_integer("repeats", 2, "A/B pairs per model.")
flags.DEFINE_integer("samples_per_class", None, "Batch = 10 x this (default: the SynthesisConfig default).")
flags.DEFINE_bool("profile", False, "Also time C: the bare step plus the BN-statistics loss (no Adam, no class "
                  "loss), to split the synthesis overhead into BN-statistics terms vs the rest.")


def bn_loss_rate(tf, model, batch: int, steps: int, fn_cache: dict) -> float:
    """Like bare_rate, plus the BN-statistics loss of synthesis computed from BN-input taps."""
    import numpy as np
    from tflite_retroq.model.batchnorm import bn_layers, bn_targets, bn_taps
    key = ("bn", id(model))
    if key not in fn_cache:
        z = tf.Variable(np.random.default_rng(0).uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32))
        stats = {id(l): tuple(tf.constant(a) for a in bn_targets(l)) for l in bn_layers(model)}
        ctx = bn_taps(model)
        taps = ctx.__enter__()

        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(z)
                taps.clear()
                out = model(z, training=False)
                terms = []
                for layer, t in taps:
                    mu_r, sd_r = stats[id(layer)]
                    mu = tf.reduce_mean(t, axis=[0, 1, 2])
                    sd = tf.sqrt(tf.reduce_mean(tf.square(t - mu), axis=[0, 1, 2]) + 1e-8)
                    terms.append(tf.reduce_mean(tf.square(mu - mu_r)) + tf.reduce_mean(tf.square(sd - sd_r)))
                loss = tf.reduce_sum(tf.square(out)) + tf.add_n(terms)
            g = tape.gradient(loss, z)
            z.assign_sub(1e-6 * g)
            return loss

        float(step())
        ctx.__exit__(None, None, None)  # traced and compiled: the taps are no longer needed
        fn_cache[key] = step
    step = fn_cache[key]
    t0 = time.perf_counter()
    for _ in range(steps):
        float(step())
    return batch * steps / (time.perf_counter() - t0)


def main(argv):
    del argv
    import tensorflow as tf
    import tflite_retroq as rq
    from benchmarks.zoo.cifar_resnet import build_resnet
    started = time.perf_counter()
    spc = FLAGS.samples_per_class or 8  # the batch of the historical per-class default (80 images)
    batch = 10 * spc
    rows, cache = [], {}
    for depth in [int(d) for d in FLAGS.depths]:
        model = build_resnet(depth, FLAGS.zoo_dir)
        synth, bare, bnl = [], [], []
        for rep in range(FLAGS.repeats):
            ds = rq.synthesize(model, rq.SynthesisConfig(samples_per_class=spc, iterations=FLAGS.steps + 1, time_budget=None),
                               progress=False)
            synth.append(ds.metadata["images_per_second"])
            bare.append(bare_rate(tf, model, batch, FLAGS.steps, cache))
            if FLAGS.profile:
                bnl.append(bn_loss_rate(tf, model, batch, FLAGS.steps, cache))
                common.log(f"ResNet-{depth} rep {rep}: bare + BN-statistics loss {bnl[-1]:.1f} img-it/s "
                           f"ratio to bare {bnl[-1] / bare[-1]:.3f}")
            common.log(f"ResNet-{depth} rep {rep}: synthesis {synth[-1]:.1f}  bare {bare[-1]:.1f} img-it/s "
                       f"ratio {synth[-1] / bare[-1]:.3f}")
        ratios = [s / b for s, b in zip(synth, bare)]
        rows.append({"model": f"ResNet-{depth}", "batch": batch, "steps": FLAGS.steps, "repeats": FLAGS.repeats,
                     "synthesis_img_it_s": statistics.median(synth), "bare_fwd_bwd_img_it_s": statistics.median(bare),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "ratios": ratios})
        if bnl:
            rows[-1]["bare_plus_bn_loss_img_it_s"] = statistics.median(bnl)
            rows[-1]["bn_loss_ratio_median"] = statistics.median([c / b for c, b in zip(bnl, bare)])
    notes = ("synthesis: rq.synthesize(retro) steady-state image-iterations/s; bare: compiled forward+backward "
             "w.r.t. the input with a trivial loss and an in-place update, same model and batch. A and B "
             "alternate in one process; the ratio is the figure to read, absolute rates depend on machine load.")
    common.write_results(FLAGS.out, "throughput", "Synthesis throughput vs forward+backward bound", rows,
                         ["model", "batch", "steps", "repeats", "synthesis_img_it_s", "bare_fwd_bwd_img_it_s",
                          "ratio_median", "ratio_min", "ratio_max", "bn_loss_ratio_median"], params={"target_ratio": 0.8}, notes=notes,
                         started=started)


if __name__ == "__main__":
    app.run(main)
