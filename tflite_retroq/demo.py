"""`make demo`: the whole data-free flow on an embedded default, no download.

A small CNN is trained on scikit-learn's bundled handwritten digits (8x8, 1797
images), then quantized to int8 with calibration images synthesized from the model
alone (gaussian / zeroq / retro), and compared on held-out real digits.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("out", "demo_out", "Directory for the .tflite files and the report.")
flags.DEFINE_integer("epochs", 20, "Training epochs for the demo CNN.")
flags.DEFINE_integer("seed", 0, "Seed for training and synthesis.")
flags.DEFINE_boolean("quick", False, "A fast smoke run (CI): few epochs, 2 images per class, 10 iterations. "
                     "The numbers are not meaningful; the flow and the files are the same.")

QUICK = {"epochs": 3, "samples_per_class": 2, "iterations": 10}
FLAGS = flags.FLAGS


def load_digits_split(seed: int = 0):
    """sklearn digits as float32 [N, 8, 8, 1] in [0, 16]; 75 % train, 25 % held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from tflite_retroq.errors import ConfigError
        raise ConfigError("the digits demo needs scikit-learn: pip install -e \".[demo]\" (or pip install "
                          "scikit-learn).") from None
    d = load_digits()
    x = d.images.astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.75 * len(x))
    return (x[idx[:cut]], y[idx[:cut]]), (x[idx[cut:]], y[idx[cut:]])


def build_digits_cnn():
    import keras
    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Rescaling(1.0 / 16.0)(inp)  # pixels are 0..16: detected as the valid range
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="digits_cnn")


def train_digits_cnn(epochs: int = 40, seed: int = 0):
    import keras
    keras.utils.set_random_seed(seed)
    (xtr, ytr), (xte, yte) = load_digits_split(seed)
    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(xtr, ytr, batch_size=64, epochs=epochs, verbose=0)
    return model, (xte, yte)


def main(argv):
    del argv
    import tflite_retroq as rq
    from tflite_retroq.evaluate import keras_outputs
    from tflite_retroq.io_utils import write_bytes
    from tflite_retroq.io_utils import write_json
    from tflite_retroq.reports.plots import plot_images, plot_losses
    os.makedirs(FLAGS.out, exist_ok=True)
    t0 = time.perf_counter()
    epochs = QUICK["epochs"] if FLAGS.quick else FLAGS.epochs
    synth = {k: QUICK[k] for k in ("samples_per_class", "iterations")} if FLAGS.quick else {}
    model, (xte, yte) = train_digits_cnn(epochs, FLAGS.seed)
    t_train = time.perf_counter() - t0
    ref = keras_outputs(model, xte)
    acc = float(np.mean(ref.argmax(1) == yte) * 100)
    rows = [{"calibration": "none (float32 Keras)", "w8_accuracy": acc, "w8_agreement": 100.0, "w8_sqnr_db": None,
             "w4_accuracy": acc, "w4_sqnr_db": None, "synthesis_s": None, "image_iterations_per_s": None}]
    for mode in ("gaussian", "zeroq", "retro"):
        data = rq.synthesize(model, rq.SynthesisConfig(mode=mode, seed=FLAGS.seed, **synth), progress=sys.stderr.isatty())
        plot_images(data, os.path.join(FLAGS.out, f"synthetic_{mode}.png"))
        if data.loss_history.get("total"):
            plot_losses(data, os.path.join(FLAGS.out, f"losses_{mode}.png"))
        calibrated = rq.calibrate(model, data)  # calibrate once, quantize W8 and W4 from it
        row = {"calibration": f"{mode} ({len(data)} images)", "synthesis_s": data.metadata["seconds"],
               # images x optimization steps per second after compilation (not finished images per second)
               "image_iterations_per_s": data.metadata["images_per_second"], "images": len(data),
               "iterations": data.metadata.get("iterations_run")}
        for bits in (8, 4):
            tfl = rq.convert(model, data, weight_bits=bits, calibrated=calibrated)
            write_bytes(os.path.join(FLAGS.out, f"digits_int8_w{bits}_{mode}.tflite"), tfl)
            r = rq.evaluate(tfl, xte, yte, reference=ref)
            row.update({f"w{bits}_accuracy": r.accuracy, f"w{bits}_agreement": r.agreement,
                        f"w{bits}_sqnr_db": r.sqnr_db})
        rows.append(row)
    total = time.perf_counter() - t0
    report = {"model": "digits_cnn (sklearn digits, 8x8x1)", "held_out_images": int(len(xte)),
              "train_seconds": t_train, "total_seconds": total, "rows": rows,
              "quick": bool(FLAGS.quick), "epochs": epochs,
              "command": "python -m tflite_retroq.demo --quick" if FLAGS.quick else "make demo"}
    write_json(os.path.join(FLAGS.out, "report.json"), report)
    print(f"\nDemo: data-free int8 of a digits CNN, {len(xte)} held-out real digits (trained in {t_train:.1f}s)")
    print(f"{'calibration':<26} {'W8A8 %':>7} {'W8 SQNR':>8} {'W4A8 %':>7} {'W4 SQNR':>8} {'synth s':>8} {'img-it/s':>9}")
    for r in rows:
        f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
        print(f"{r['calibration']:<26} {f(r['w8_accuracy']):>7} {f(r['w8_sqnr_db'], 1):>8} {f(r['w4_accuracy']):>7} "
              f"{f(r['w4_sqnr_db'], 1):>8} {f(r['synthesis_s'], 1):>8} {f(r['image_iterations_per_s'], 0):>9}")
    print(f"\nWrote {FLAGS.out}/digits_int8_w{{8,4}}_{{gaussian,zeroq,retro}}.tflite, {FLAGS.out}/report.json and PNG plots "
          f"in {total:.0f}s.")


def run():
    from tflite_retroq.io_utils import native_logs_silenced
    with native_logs_silenced():
        app.run(main)


if __name__ == "__main__":
    run()
