"""Transformer blocks, data-free: real-image vs retro calibration on two Fashion-MNIST attention models.

A tiny ViT (LayerNormalization, MultiHeadAttention, GELU; no BatchNorm) and a conv+attention
hybrid (BatchNorm conv stem, one attention block), both trained here (benchmarks/zoo/
fashion_attention.py). Each is converted to full-integer int8, per-channel, calibrated on
(a) real training images, (b) retro-synthesized images, (c) Gaussian noise (the floor), and
run on LiteRT: accuracy on the test images, top-1 agreement and logit SQNR against the float
model on the same images, and the float ops left in the file (none expected: LayerNormalization
is rewritten, tflite_retroq/model/rewrite.py).

    .venv/bin/python -m benchmarks.transformers
    .venv/bin/python -m benchmarks.transformers --quick --out /tmp/q   # smoke test
"""
from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["vit", "conv_attn"], "Models (benchmarks/zoo/fashion_attention.py).")
flags.DEFINE_integer("eval_images", 2000, "Test images (evenly spaced over the 10000).")
flags.DEFINE_integer("real_images", 256, "Real calibration images (the first N training images).")
flags.DEFINE_integer("epochs", 3, "Training epochs (cached per value).")
flags.DEFINE_integer("train_images", 12000, "Training images (the first N; cached per value).")
flags.DEFINE_integer("samples_per_class", 10, "Synthetic images per class (retro).")
flags.DEFINE_integer("iterations", 100, "Synthesis iterations (the package default).")
flags.DEFINE_bool("quick", False, "Smoke test: 1 epoch, 300 eval images, tiny synthesis.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")


def _synth_config(mode: str):
    import tflite_retroq as rq
    if FLAGS.quick:
        return rq.SynthesisConfig(mode=mode, samples_per_class=2, iterations=10, time_budget=None)
    # Fixed budgets, no time budget: the same command gives the same images on any machine.
    return rq.SynthesisConfig(mode=mode, samples_per_class=FLAGS.samples_per_class, iterations=FLAGS.iterations,
                              time_budget=None)


def main(argv):
    del argv
    import tflite_retroq as rq
    from benchmarks.zoo.fashion import load_fashion_mnist
    from benchmarks.zoo.fashion_attention import trained_model
    from tflite_retroq.evaluate import keras_outputs
    from tflite_retroq.tflite.inspect import float_ops
    started = time.perf_counter()
    n_eval = 300 if FLAGS.quick else FLAGS.eval_images
    epochs = 1 if FLAGS.quick else FLAGS.epochs
    xt, yt = load_fashion_mnist("test")
    idx = np.linspace(0, len(xt) - 1, num=n_eval).astype(int)
    x, y = xt[idx], yt[idx]
    calib_real = load_fashion_mnist("train")[0][:FLAGS.real_images]
    rows = []
    for kind in FLAGS.models:
        t0 = time.perf_counter()
        model = trained_model(kind, epochs=epochs, train_images=5000 if FLAGS.quick else FLAGS.train_images)
        common.log(f"{kind}: model ready in {time.perf_counter() - t0:.0f} s")
        ref = keras_outputs(model, x)
        acc = 100.0 * float(np.mean(ref.argmax(1) == y))
        rows.append({"model": kind, "source": "fp32", "accuracy": acc, "agreement": 100.0, "sqnr_db": None,
                     "float_ops": 0, "synthesis_s": None})
        common.log(f"{kind}: FP32 accuracy {acc:.2f}")
        for source in ("real", "retro", "gaussian"):
            synth_s = None
            if source == "real":
                calib = calib_real
            else:
                calib = rq.synthesize(model, _synth_config(source), progress=False)
                synth_s = calib.metadata["seconds"]
            tfl = rq.convert(model, calib)
            r = rq.evaluate(tfl, x, y, reference=model)
            row = {"model": kind, "source": source, "accuracy": r.accuracy, "agreement": r.agreement,
                   "sqnr_db": r.sqnr_db, "float_ops": len(float_ops(tfl)), "synthesis_s": synth_s}
            rows.append(row)
            common.log(f"{kind} {source}: acc {r.accuracy:.2f} agree {r.agreement:.2f} sqnr {r.sqnr_db:.2f} "
                       f"float ops {row['float_ops']}")
        _write(rows, started, n_eval, epochs)
    _write(rows, started, n_eval, epochs)


def _write(rows, started, n_eval, epochs):
    cfg = _synth_config("retro")
    params = {"quick": FLAGS.quick, "eval_images": n_eval, "real_images": FLAGS.real_images, "epochs": epochs,
              "train_images": 5000 if FLAGS.quick else FLAGS.train_images,
              "scheme": "per-channel W8A8",
              "synthesis_config": {k: v for k, v in cfg.to_dict().items() if k != "mode"}}
    notes = ("accuracy: top-1 % on evenly spaced Fashion-MNIST test images; agreement (top-1 %) and sqnr_db "
             "(logit SQNR) against the same model's float Keras outputs on those images; float_ops: ops left "
             "in float in the .tflite (0 = full integer); synthesis_s: wall seconds of synthesize() on 2 "
             "shared, loaded cores. vit has no BatchNorm: retro is class loss + input prior only.")
    common.write_results(FLAGS.out, "transformers", "Transformer blocks: real vs retro calibration (Fashion-MNIST)",
                         rows, ["model", "source", "accuracy", "agreement", "sqnr_db", "float_ops", "synthesis_s"],
                         params=params, notes=notes, started=started)


if __name__ == "__main__":
    app.run(main)
