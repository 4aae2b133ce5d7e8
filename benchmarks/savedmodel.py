"""SavedModel input vs the Keras model: same model (MLPerf Tiny ResNet-8), same synthesis settings, two routes.

Rows: the `.keras` route (retro with BatchNorm statistics); the SavedModel route (`model.export(dir)`;
no Keras layers, so retro runs without the BN term, on the class loss and the input prior); and the
SavedModel converted with the `.keras` route's data (the conversion alone). Both synthesize with the
model's documented input range, which a SavedModel cannot reveal. Accuracy on test_first1017.

    .venv/bin/python -m benchmarks.savedmodel
"""
from __future__ import annotations

import tempfile
import time

from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_integer("samples_per_class", 10, "Synthetic images per class.")
flags.DEFINE_integer("iterations", 100, "Synthesis iterations.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")


def main(argv):
    del argv
    import tflite_retroq as rq
    from benchmarks.zoo import mlperf
    started = time.perf_counter()
    name = "ic_resnet8"
    model = mlperf.load_model(name, FLAGS.zoo_dir)
    x, y = mlperf.eval_images(name, FLAGS.zoo_dir)
    spec = rq.InputSpec(value_range=mlperf.INPUT_RANGE[name])
    cfg = rq.SynthesisConfig(samples_per_class=FLAGS.samples_per_class, iterations=FLAGS.iterations,
                             time_budget=None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exported = f"{tmp}/exported"
        model.export(exported, verbose=False)
        data = {}
        for route, src in (("keras", model), ("savedmodel", exported)):
            t0 = time.perf_counter()
            data[route] = rq.synthesize(src, cfg, input_spec=spec, progress=False)
            synth_s = time.perf_counter() - t0
            r = rq.evaluate(rq.convert(src, data[route]), x, y, reference=model)
            rows.append({"route": route, "data": f"retro from the {route} route", "accuracy": r.accuracy,
                         "agreement": r.agreement, "sqnr_db": r.sqnr_db, "synthesis_s": synth_s})
            common.log(f"{route}: acc {r.accuracy:.2f} agree {r.agreement:.2f} sqnr {r.sqnr_db:.2f}")
        r = rq.evaluate(rq.convert(exported, data["keras"]), x, y, reference=model)
        rows.append({"route": "savedmodel", "data": "retro from the keras route", "accuracy": r.accuracy,
                     "agreement": r.agreement, "sqnr_db": r.sqnr_db, "synthesis_s": None})
        common.log(f"savedmodel with keras data: acc {r.accuracy:.2f} agree {r.agreement:.2f}")
    common.write_results(FLAGS.out, "savedmodel", "SavedModel input vs .keras (MLPerf Tiny ResNet-8, int8 per-channel)",
                         rows, ["route", "data", "accuracy", "agreement", "sqnr_db", "synthesis_s"],
                         params={"model": name, "eval_images": len(x), "input_range": mlperf.INPUT_RANGE[name],
                                 "synthesis_config": {k: v for k, v in cfg.to_dict().items() if k != "mode"}},
                         notes="accuracy: top-1 % on test_first1017; agreement and sqnr_db against the float Keras "
                               "model; synthesis_s: wall seconds on 2 shared, loaded cores.", started=started)


if __name__ == "__main__":
    app.run(main)
