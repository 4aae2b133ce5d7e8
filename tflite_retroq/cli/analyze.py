"""`retroq analyze MODEL -o DIR`: per-layer sensitivity (Algorithm 2), the hybrid plan, a plot."""
from __future__ import annotations

import os
import time
from typing import Sequence

from tflite_retroq.cli.common import check_model_file, load_checked_model, say
from tflite_retroq.cli.flags import (DEFAULTS, INPUT_FLAGS, SYNTH_FLAGS, flag, hybrid_config, input_spec, positional,
                                     present, require_output, synthesis_config)
from tflite_retroq.errors import ConfigError
from tflite_retroq.reports.sensitivity import check_analysis_outputs


def cmd_analyze(args: Sequence[str]) -> int:
    model_path = positional("analyze", args, "a Keras model file (MODEL.keras)")
    out_dir = require_output("analyze", "DIR")
    data_file = flag("data-file")
    if data_file is not None:
        for name in ("data", *SYNTH_FLAGS, *INPUT_FLAGS):
            if present(name):
                raise ConfigError(f"--{name} configures synthesis and conflicts with --data-file; drop one of them.")
    bits = flag("weight-bits")
    if bits not in (8, 6, 4):
        raise ConfigError(f"--weight-bits {bits} is not supported; choose 8, 6 or 4.")
    hcfg = hybrid_config(True)
    scfg = synthesis_config(flag("data") or DEFAULTS.mode.value) if data_file is None else None
    spec = input_spec()
    check_model_file(model_path)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"-o {out_dir!r} is a file; `retroq analyze` writes into a directory.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out_dir))):
        raise ConfigError(f"-o {out_dir!r}: its parent directory does not exist; create it first.")
    inputs = [("input model", model_path), ("input dataset (--data-file)", data_file)]
    check_analysis_outputs(out_dir, inputs)  # before any work: no output may resolve to an input
    if flag("pack") is not None and not flag("pareto"):
        raise ConfigError("--pack lut sizes the --pareto frontier as TFLite Micro files; add --pareto or drop --pack.")
    if flag("pareto"):
        from tflite_retroq.io_utils import check_not_inputs, check_writable
        from tflite_retroq.reports.pareto import pareto_paths
        for p in pareto_paths(out_dir):
            if os.path.isdir(out_dir):
                check_writable(p)
            check_not_inputs(p, inputs)

    from tflite_retroq.dataset import SyntheticDataset
    dataset = SyntheticDataset.load(data_file) if data_file is not None else None
    model = load_checked_model(model_path)
    t0 = time.perf_counter()
    if dataset is None:
        from tflite_retroq.synthesis import synthesize
        dataset = synthesize(model, scfg, input_spec=spec, progress=not flag("quiet"))
    from tflite_retroq.methods.sensitivity import analyze_sensitivity
    result = analyze_sensitivity(model, dataset, weight_bits=bits, progress=not flag("quiet"))
    plan = result.select(hcfg)
    from tflite_retroq import __version__
    from tflite_retroq.reports.sensitivity import analysis_document, write_analysis
    source = ({"source": "file", "path": data_file, "mode": dataset.mode} if data_file is not None
              else {"source": "synthesized", "mode": scfg.mode.value, "synthesis_config": scfg.to_dict()})
    doc = analysis_document(result, plan, model_path=model_path, data_source=source, version=__version__)
    pareto = _pareto(model, dataset, model_path, source, __version__) if flag("pareto") else None
    paths = write_analysis(out_dir, result, plan, doc, title=f"Per-layer sensitivity: {os.path.basename(model_path)}",
                           inputs=inputs)
    if pareto is not None:
        from tflite_retroq.reports.pareto import write_pareto
        paths += write_pareto(out_dir, pareto, f"Size frontier: {os.path.basename(model_path)}")
        best = [p for p in pareto["points"] if p["pareto"]]
        say("size frontier: " + "; ".join(f"{p['file_bytes']} bytes {100 * p['holdout_agreement']:.1f} %"
                                          for p in best))
    top = sorted(result.layers, key=lambda l: -l.difference)[:3]
    say(f"analyzed {len(result.layers)} layers on {result.num_images} {result.data_source} images (W{bits}) in "
         f"{result.seconds:.1f} s ({result.speedup:.1f}x faster than 2L full passes); "
         f"{len(plan.per_channel)} per-channel at Th={hcfg.threshold:g}; most sensitive: "
         + ", ".join(f"{l.name} ({l.difference:.3g})" for l in top) + f" (total {time.perf_counter() - t0:.1f} s)")
    say("wrote " + ", ".join(paths))
    return 0


def _pareto(model, dataset, model_path: str, source, version: str):
    """The agreement vs size frontier over a sweep of budgets (methods.budget), as a JSON document."""
    from tflite_retroq.converter import calibrate, quantize_calibrated
    from tflite_retroq.methods.budget import sweep
    from tflite_retroq.quality import holdout_images
    from tflite_retroq.reports.pareto import frontier, pareto_document
    calibrated = calibrate(model, dataset)
    quantized = quantize_calibrated(calibrated)
    storage = "lut" if flag("pack") == "lut" else "int4"
    held = holdout_images(model, dataset)
    points = frontier(model, sweep(model, dataset.images, quantized, calibrated, storage), held)
    return pareto_document(points, model_path=model_path, storage=storage, w8_bytes=len(quantized),
                           version=version, data_source=source, holdout_images=len(held))
