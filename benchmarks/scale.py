"""ImageNet-size synthesis: does `retroq convert` with defaults fit in time and memory?

Three questions, each measured in this one run (the machine is shared: read ratios):

1. `retroq convert MODEL.keras` with every default, as a user runs it, in a subprocess:
   wall time and peak RSS (the OS's own accounting through GNU time), with the
   plan the tool chose (images, batch size, iterations, the measured rate).
   Models: keras.applications MobileNetV2 1.0 at 224x224 with 1000 classes (random weights:
   cost does not depend on them) and the CIFAR ResNet-20 of the zoo.
2. Synthesis steady-state image-iterations/s vs a bare compiled forward+backward step on the
   same model and batch, alternated A B A B in one process (benchmarks.throughput.bare_rate).
3. Memory as a promise: peak RSS of `retroq synthesize` on a small MobileNetV2 (0.35, 96x96)
   at 10 vs 1000 classes and 64 vs 512 images with the same batch size: it must not grow with
   the class count or the image budget beyond one batch.

    .venv/bin/python -m benchmarks.scale            # full (about 20-30 min on 2 idle cores)
    .venv/bin/python -m benchmarks.scale --quick    # small models only (CI smoke)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_bool("quick", False, "Small models only, few steps (a smoke run, not results).")
flags.DEFINE_integer("steps", 4, "Timed steps per rate measurement.")
flags.DEFINE_integer("repeats", 2, "A/B pairs per model for the rate ratio.")


def _retroq(args, timeout=3600):
    """Run the console script in its own process: (wall s, that process's peak RSS bytes (GNU time %M), result)."""
    exe = Path(sys.executable).with_name("retroq")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tflite_retroq.cli"]
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name] + cmd + [str(a) for a in args],
                              capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        text = Path(rss.name).read_text().split()
    peak = int(text[-1]) * 1024 if text and text[-1].isdigit() else 0
    return wall, peak, proc


def _mobilenet(alpha, size, classes):
    import keras
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(weights=None, alpha=alpha, input_shape=(size, size, 3), classes=classes,
                                          classifier_activation=None)


def _convert_row(name, model, tmp: Path):
    path = tmp / f"{name}.keras"
    model.save(path)
    report = tmp / f"{name}_report.json"
    common.log(f"{name}: retroq convert with defaults")
    wall, peak, proc = _retroq(["convert", path, "-o", tmp / f"{name}.tflite", "--report", report, "--quiet"])
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: retroq convert failed: {proc.stderr.strip()[-500:]}")
    rep = json.loads(report.read_text())
    syn = rep.get("synthesis", {})
    plan = syn.get("plan", {})
    return {"model": name, "wall_s": round(wall, 1), "peak_rss_gb": round(peak / 2**30, 2),
            "images": plan.get("images"), "batch_size": plan.get("batch_size"), "iterations": plan.get("iterations"),
            "measured_rate": round(plan.get("measured_rate") or 0, 2) or None,
            "synthesis_s": round(rep.get("seconds", {}).get("synthesis", 0), 1),
            "conversion_s": round(rep.get("seconds", {}).get("conversion", 0), 1),
            "tflite_bytes": rep.get("output_size_bytes"), "stdout": proc.stdout.strip().splitlines()[-1][:300]}


def _rate_rows(name, model, batch: int):
    import tensorflow as tf
    import tflite_retroq as rq
    from benchmarks.common import bare_rate
    cache: dict = {}
    synth, bare = [], []
    for _ in range(FLAGS.repeats):
        ds = rq.synthesize(model, rq.SynthesisConfig(images=batch, batch_size=batch, iterations=FLAGS.steps + 1,
                                                     time_budget=None), progress=False)
        synth.append(ds.metadata["images_per_second"])
        bare.append(bare_rate(tf, model, batch, FLAGS.steps, cache))
    ratios = sorted(s / b for s, b in zip(synth, bare))
    return {"model": name, "batch": batch, "synthesis_img_it_s": round(sorted(synth)[len(synth) // 2], 2),
            "bare_fwd_bwd_img_it_s": round(sorted(bare)[len(bare) // 2], 2),
            "ratio_median": round(ratios[len(ratios) // 2], 3), "ratio_min": round(ratios[0], 3),
            "ratio_max": round(ratios[-1], 3)}


def main(argv):
    del argv
    started = time.perf_counter()
    from benchmarks.zoo.cifar_resnet import build_resnet
    tmp = Path(tempfile.mkdtemp(prefix="retroq-scale-"))
    models = [("ResNet-20", build_resnet(20, FLAGS.zoo_dir))]
    if not FLAGS.quick:
        models.insert(0, ("MobileNetV2-1.0-224-1000c", _mobilenet(1.0, 224, 1000)))
    else:
        models.append(("MobileNetV2-0.35-96-10c", _mobilenet(0.35, 96, 10)))
    convert_rows = [_convert_row(n, m, tmp) for n, m in models]
    rate_rows = []
    for (n, m), row in zip(models, convert_rows):
        common.log(f"{n}: synthesis vs bare forward+backward at batch {row['batch_size']}")
        rate_rows.append(_rate_rows(n, m, row["batch_size"]))
    mem_rows = _memory_rows(tmp)
    notes = ("Each `retroq convert` ran as its own process with every default (no flags but -o/--report/--quiet); "
             "peak RSS is that process's maximum resident set (GNU time %M). MobileNetV2 has random weights "
             "(keras.applications, weights=None): cost does not depend on them. Rates: synthesis steady-state "
             "image-iterations/s (first, compiling step excluded) vs a bare compiled forward+backward w.r.t. the "
             "input on the same batch, alternated in one process. Memory rows: `retroq synthesize` with a fixed "
             "--batch-size 16 and 2 iterations; the peak must not follow the class count or the image count.")
    common.write_results(FLAGS.out, "scale" if not FLAGS.quick else "scale_quick",
                         "ImageNet-size synthesis: time, memory, throughput", convert_rows,
                         ["model", "wall_s", "peak_rss_gb", "images", "batch_size", "iterations", "measured_rate",
                          "synthesis_s", "conversion_s", "tflite_bytes"],
                         params={"quick": FLAGS.quick, "steps": FLAGS.steps, "repeats": FLAGS.repeats},
                         notes=notes, started=started,
                         extra_md="## Synthesis vs bare forward+backward\n\n" + common.markdown_table(
                             rate_rows, ["model", "batch", "synthesis_img_it_s", "bare_fwd_bwd_img_it_s",
                                         "ratio_median", "ratio_min", "ratio_max"])
                         + "\n\n## Peak memory vs classes and images (batch 16)\n\n"
                         + common.markdown_table(mem_rows, ["classes", "images", "batch_size", "wall_s",
                                                            "peak_rss_gb"]),
                         extra={"rates": rate_rows, "memory": mem_rows})


def _memory_rows(tmp: Path):
    rows = []
    for classes, images in ((10, 64), (1000, 64), (1000, 512)):
        name = f"mnv2_035_96_{classes}c"
        path = tmp / f"{name}.keras"
        if not path.exists():
            _mobilenet(0.35, 96, classes).save(path)
        wall, peak, proc = _retroq(["synthesize", path, "-o", tmp / f"{name}_{images}.npz", "--images", images,
                                    "--batch-size", 16, "--iterations", 2, "--quiet"], timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: retroq synthesize failed: {proc.stderr.strip()[-500:]}")
        rows.append({"classes": classes, "images": images, "batch_size": 16, "wall_s": round(wall, 1),
                     "peak_rss_gb": round(peak / 2**30, 2)})
        common.log(f"memory: {rows[-1]}")
    return rows


if __name__ == "__main__":
    app.run(main)
