"""`retroq convert MODEL -o OUT.tflite`: synthesize (or load) data, calibrate, quantize, write atomically."""
from __future__ import annotations

import time
from typing import Sequence

from tflite_retroq.cli.common import (check_as_flags, check_model_file, check_outputs, load_checked_model, say,
                                      say_input_space)
from tflite_retroq.cli.flags import (DEFAULTS, INPUT_FLAGS, SYNTH_FLAGS, flag, hybrid_config, input_spec, positional,
                                     present, require_output, static_batch_flag, synthesis_config)
from tflite_retroq.config import QuantizationConfig
from tflite_retroq.errors import ConfigError


def cmd_convert(args: Sequence[str]) -> int:
    model_path = positional("convert", args, "a Keras model file (MODEL.keras)")
    hcfg = hybrid_config(flag("scheme") in ("hybrid", "mixed-channel"))
    data_file = flag("data-file")
    if data_file is not None:
        if present("data"):
            raise ConfigError("--data and --data-file conflict: synthesize data (--data MODE) or load it "
                              "(--data-file PATH), not both.")
        for name in (*SYNTH_FLAGS, *INPUT_FLAGS):
            if present(name):
                raise ConfigError(f"--{name} configures synthesis and conflicts with --data-file (the dataset "
                                  "is already synthesized); drop one of them.")
    output = require_output("convert", "OUT.tflite")
    bits = flag("weight-bits")
    if bits not in (8, 6, 4):
        raise ConfigError(f"--weight-bits {bits} is not supported; choose 8, 6 or 4.")
    qcfg = QuantizationConfig(scheme=flag("scheme"), weight_bits=bits, io=flag("io"))
    from tflite_retroq.methods.rounding import check_rounding
    from tflite_retroq.tflite.int4 import check_weight_dtype
    check_as_flags(check_rounding, flag("rounding"), flag("nonuniform"))  # clashes refused before TensorFlow loads
    check_as_flags(check_weight_dtype, flag("weight-dtype"), bits, flag("nonuniform"), flag("pack"))
    static_batch = static_batch_flag()
    scfg = synthesis_config(flag("data") or DEFAULTS.mode.value) if data_file is None else None
    spec = input_spec()
    report_path = flag("report")
    check_model_file(model_path)
    check_outputs(model_path, output, report_path, data_file=data_file)

    from tflite_retroq.dataset import SyntheticDataset
    dataset = SyntheticDataset.load(data_file) if data_file is not None else None  # fail before TF loads

    from tflite_retroq.converter import convert
    model = load_checked_model(model_path)
    seconds = {}
    t0 = time.perf_counter()
    if dataset is None:
        from tflite_retroq.synthesis import synthesize
        dataset = synthesize(model, scfg, input_spec=spec, progress=not flag("quiet"))
        seconds["synthesis"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    from tflite_retroq.converter import calibrate
    calibrated, logit_range = calibrate(model, dataset, return_info=True, batch_size=static_batch)
    plan, sens = None, None
    if hcfg is not None:
        from tflite_retroq.methods.hybrid import plan_for
        t2 = time.perf_counter()
        plan, sens = plan_for(model, dataset, hcfg, qcfg.weight_bits, progress=not flag("quiet"))
        seconds["sensitivity"] = time.perf_counter() - t2
    tflite = convert(model, dataset, scheme=qcfg.scheme, weight_bits=qcfg.weight_bits, io=qcfg.io,
                     calibrated=calibrated, batch_size=static_batch, nonuniform=flag("nonuniform"),
                     plan=plan, rounding=flag("rounding"), weight_dtype=flag("weight-dtype"),
                     allow_float_ops=flag("allow-float-ops"), progress=not flag("quiet"))
    plain, arena_note = tflite, None
    if flag("pack") == "lut":  # packed here, so the plain twin's TFLM arena can be set beside the packed one
        from tflite_retroq.tflite.pack import pack_lut
        plain, tflite = tflite, pack_lut(tflite)
        arena_note = lut_arena_note(plain, tflite, static_batch)
    seconds["conversion"] = time.perf_counter() - t1 - seconds.get("sensitivity", 0.0)
    t3 = time.perf_counter()
    from tflite_retroq.quality import estimate_after_conversion
    # On the plain twin of a LUT-packed file: LiteRT cannot decode LUTs, and TFLM decodes them to the same values.
    quality, quality_note = estimate_after_conversion(plain, model, dataset, calibrated)
    seconds["quality estimate"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0

    from tflite_retroq.io_utils import atomic_path, write_bytes
    if report_path:
        from tflite_retroq import __version__
        from tflite_retroq.io_utils import to_json
        from tflite_retroq.reports.report import convert_report
        from tflite_retroq.tflite.inspect import inspect_model
        meta = dict(dataset.metadata)
        synthesis = dict(meta, num_images=len(dataset),
                         final_loss={k: v[-1] for k, v in dataset.loss_history.items() if v},
                         logit_range=logit_range.to_dict() if logit_range is not None else None)
        source = ({"source": "file", "path": data_file, "mode": dataset.mode} if data_file is not None
                  else {"source": "synthesized", "mode": scfg.mode.value, "synthesis_config": scfg.to_dict()})
        text = to_json(dict(convert_report(
            model_path=model_path, output_path=output, data_source=source,
            quantization=dict(qcfg.to_dict() if static_batch is None else dict(qcfg.to_dict(), static_batch=static_batch),
                              **({"nonuniform": True} if flag("nonuniform") else {}),
                              **({"pack": flag("pack")} if flag("pack") else {}),
                              rounding=flag("rounding"), weight_dtype=flag("weight-dtype"),
                              **({"allow_float_ops": True} if flag("allow-float-ops") else {})),
            synthesis=synthesis, input_space=meta.get("input_space"), output_size=len(tflite), seconds=seconds,
            inspection=inspect_model(tflite), version=__version__), **hybrid_report(plan, sens),
            quality=quality.to_dict() if quality is not None else {"note": quality_note}))
        # Both files are fully written to temporaries before either is renamed into place.
        with atomic_path(output) as tmp_out, atomic_path(report_path) as tmp_rep:
            with open(tmp_out, "wb") as f:
                f.write(tflite)
            with open(tmp_rep, "w", encoding="utf-8") as f:
                f.write(text)
    else:
        write_bytes(output, tflite)
    if data_file is None or "input_space" in dataset.metadata:
        say_input_space(dataset)
    if logit_range is not None and logit_range.widened != logit_range.calibrated:
        lo, hi = logit_range.calibrated
        say(f"logits range widened from [{lo:.3g}, {hi:.3g}] to [{logit_range.widened[0]:.3g}, "
             f"{logit_range.widened[1]:.3g}], what the classifier can reach (synthetic images are less confident "
             "than real ones)")
    if quality is not None:
        say(quality.line())
        advice = quality.warning({"scheme": qcfg.scheme.value if plan is None else "hybrid",
                                  "weight_bits": qcfg.weight_bits, "rounding": flag("rounding"),
                                  "data_file": data_file is not None})
        if advice:
            import warnings
            warnings.warn(advice)  # one `retroq: warning:` line on stderr, after success
    elif quality_note:
        say(quality_note)
    if flag("allow-float-ops"):
        from tflite_retroq.tflite.inspect import FLOAT_OPS_NOTE, float_ops
        kept = float_ops(tflite)
        say(f"float ops kept: {', '.join(kept)}; {FLOAT_OPS_NOTE}" if kept else "float ops kept: none (fully integer)")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != "total")
    kind = (f"{'non-uniform ' if flag('nonuniform') else ''}W{qcfg.weight_bits}"
            f"{', learned rounding' if flag('rounding') == 'learned' else ''}"
            f"{', INT4 weights: LiteRT, not TFLite Micro' if flag('weight-dtype') == 'int4' else ''}")
    scheme = qcfg.scheme.value if plan is None else f"hybrid: {len(plan.per_channel)}/{plan.num_layers} per-channel"
    say(f"wrote {output}: {len(tflite)} bytes ({scheme}, {kind}, {qcfg.io.value} I/O, "
         f"{len(dataset)} calibration images {dataset.mode}) in {seconds['total']:.1f} s ({timing})"
         + (f"; report {report_path}" if report_path else "")
         + ("; LUT-packed weight tables: runs on TFLite Micro only, not on LiteRT" if flag("pack") else ""))
    if arena_note:
        say(arena_note)
    return 0


def lut_arena_note(plain: bytes, packed: bytes, static_batch) -> str:
    """The TFLM tensor arena of the plain and the packed file beside their sizes: LUT packing decodes
    weights into the arena, so RAM can grow by more than flash shrinks; warn when it does."""
    saved = len(plain) - len(packed)
    if static_batch != 1:
        return (f"LUT packing saved {saved} bytes of flash; the TFLite Micro arena was not measured (it needs a "
                "batch-1 model: add --static-batch 1)")
    from tflite_retroq.errors import RetroQError
    from tflite_retroq.targets.tflm import tflm_run
    try:
        a0, a1 = tflm_run(plain).arena_bytes, tflm_run(packed).arena_bytes
    except RetroQError as e:
        return f"LUT packing saved {saved} bytes of flash; TFLite Micro arena not measured ({e})"
    text = f"TFLite Micro: file {len(plain)} -> {len(packed)} bytes, tensor arena {a0} -> {a1} bytes"
    if a1 - a0 > saved:
        text += (f"; warning: the arena grows by {a1 - a0} bytes, more than the {saved} bytes of flash saved "
                 "(weights are decoded into RAM)")
    return text


def hybrid_report(plan, sens) -> dict:
    return {} if plan is None else {"hybrid": {"plan": plan.to_dict(), "sensitivity": sens.to_dict()}}
