"""`retroq synthesize MODEL -o DATA.npz`: calibration images from the model itself."""
from __future__ import annotations

import time
from typing import Sequence

from tflite_retroq.cli.common import check_model_file, check_outputs, load_checked_model, say, say_input_space
from tflite_retroq.cli.flags import flag, input_spec, positional, require_output, synthesis_config


def cmd_synthesize(args: Sequence[str]) -> int:
    model_path = positional("synthesize", args, "a Keras model file (MODEL.keras)")
    output = require_output("synthesize", "DATA.npz")
    config = synthesis_config(flag("mode"))
    spec = input_spec()
    check_model_file(model_path)
    check_outputs(model_path, output)

    from tflite_retroq.synthesis import synthesize  # TensorFlow: only after the flags are checked
    model = load_checked_model(model_path)
    t0 = time.perf_counter()
    data = synthesize(model, config, input_spec=spec, progress=not flag("quiet"))
    seconds = time.perf_counter() - t0
    data.save(output)
    say_input_space(data)
    n = len(data)
    rate = n / seconds if seconds > 0 else float("inf")
    steady = data.metadata.get("images_per_second")
    steady_txt = f", {steady:.0f} image-iterations/s after compilation" if steady else ""
    classes = data.metadata.get("num_classes", "?")
    plan = data.metadata.get("plan", {})
    say(f"synthesized {n} images ({config.mode.value}, {classes} classes, {plan.get('batches', 1)} batches of "
         f"<= {plan.get('batch_size', n)}, {data.metadata.get('iterations_run', 0)} iterations, shape "
         f"{list(data.images.shape[1:])}) in {seconds:.1f} s, {rate:.1f} images/s{steady_txt} -> {output}")
    return 0
