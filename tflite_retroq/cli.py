"""The `retroq` command line (an absl app). `run()` is the console-script entry point.

Flags are parsed and every option is validated (and output paths checked for
writability) before TensorFlow is imported, so mistakes fail in a fraction of a
second. Every RetroQError becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from typing import List, Optional, Sequence

from absl import app, flags

from tflite_retroq.config import InputSpec, QuantizationConfig, SynthesisConfig, SynthesisMode
from tflite_retroq.errors import ConfigError, ModelError, RetroQError, is_out_of_memory
from tflite_retroq.io_utils import native_logs_silenced

_DEFAULTS = SynthesisConfig()
_MODES = [m.value for m in SynthesisMode]

USAGE = f"""retroq: data-free full-integer int8 TFLite quantization of Keras image classifiers.

usage:
  retroq synthesize MODEL.keras -o DATA.npz [--mode retro|zeroq|gaussian] [--images N | --samples N]
                    [--batch-size N] [--iterations N] [--seed S] [input flags] [--quiet]
  retroq convert    MODEL.keras -o OUT.tflite [--data retro|zeroq|gaussian | --data-file DATA.npz]
                    [--images N | --samples N] [--batch-size N] [--iterations N] [--seed S]
                    [--scheme per-channel|per-tensor|hybrid [--threshold TH] [--max-per-channel N]
                    [--fc-per-tensor]] [--weight-bits 8|6|4] [--nonuniform] [--pack lut]
                    [--io int8|float] [--report REPORT.json] [--static-batch N] [input flags] [--quiet]
  retroq analyze    MODEL.keras -o DIR [--data-file DATA.npz | --data MODE] [--weight-bits 8|6|4]
                    [--threshold TH] [--max-per-channel N] [--fc-per-tensor] [synthesis and input flags]
  retroq inspect    MODEL.tflite [--json] [--target T[,T...]]

commands:
  synthesize   synthesize calibration images from the model itself and save them (.npz)
  convert      synthesize (or load) calibration data and write a full-integer int8 .tflite
  analyze      per-layer per-tensor vs per-channel sensitivity (KL), the hybrid plan, a plot
  inspect      per-tensor quantization table, weight layers, op counts and size of a .tflite

synthesis flags (synthesize, and convert without --data-file):
  --mode / --data  retro (BN statistics + class loss, default), zeroq (no class loss),
                   gaussian (plain noise, no optimization)
  --images N       total images, spread over the classes (default {_DEFAULTS.DEFAULT_IMAGES})
  --samples N      images per class instead (balanced classes; N x classes images)
  --batch-size N   images optimized together (default: chosen from the model's activation memory
                   and free memory; BatchNorm statistics are matched per batch)
  --iterations N   optimization steps per batch (default {_DEFAULTS.DEFAULT_ITERATIONS})
  --time-budget S  seconds synthesis may take (default {_DEFAULTS.time_budget:g}; 0 = no limit): measured
                   from the first steps, default iterations then images shrink to fit (never below
                   {_DEFAULTS.MIN_ITERATIONS} iterations x {_DEFAULTS.MIN_IMAGES} images); explicit --images/--iterations are kept
  --seed S         random seed (default {_DEFAULTS.seed})
  --quiet          no progress bar on stderr

input flags (how the model input relates to pixels; default: detected from a
Rescaling/Normalization front layer, else inferred from the first BatchNorm's running
statistics, else N(0, 1) with a warning; the space used is printed and recorded):
  --input-mean a,b,c --input-std a,b,c   model_input = (pixel - mean) / std
  --input-range LO,HI                    the model takes raw pixels in [LO, HI]

convert flags:
  -o, --output PATH     the .tflite to write (atomically)
  --data-file PATH      calibrate with a dataset from `retroq synthesize` instead
  --scheme S            per-channel (default), per-tensor, or hybrid: per-tensor except the layers
                        whose sensitivity says per-channel pays (KL_PT - KL_PC > TH on the
                        calibration images)
  --threshold TH        hybrid: the rule's threshold (default 0: accuracy first; larger: fewer
                        per-channel layers)
  --max-per-channel N   hybrid: at most N per-channel layers, the most sensitive first
  --fc-per-tensor       hybrid: keep FULLY_CONNECTED layers per-tensor (Hexagon, Vela need it)
  --weight-bits B       8 (default), 6 or 4: weights limited to +-(2^(B-1)-1), int8 tensors
  --nonuniform          2^B non-uniform levels per weight tensor (per channel with
                        --scheme per-channel) from IQR clusters, snapped onto the int8 grid
  --pack lut            store weight tensors as B-bit indices + value tables (TFLite Micro
                        LUT compression): the file shrinks but runs on TFLite Micro ONLY,
                        not on LiteRT
  --io T                int8 (default) or float model inputs/outputs
  --report PATH         also write a JSON report (config, input space, synthesis, layers, hybrid plan)
  --static-batch N      fix the batch dimension at N (1 for microcontrollers and NPUs): no
                        SHAPE/STRIDED_SLICE/PACK ops around Flatten/Reshape

analyze flags:
  -o DIR                writes DIR/sensitivity.json, .md and .png (DIR is created if missing)
  --data-file PATH      measure on a dataset from `retroq synthesize` (default: synthesize retro data)
  --weight-bits B       the weight grid to measure at (8, 6 or 4)
  --threshold, --max-per-channel, --fc-per-tensor: the plan shown (default Th=0)

inspect flags:
  --json                print the inspection as JSON instead of a table
  --target T[,T...]     also estimate the model on targets: ethos-u55-128, ethos-u65-256,
                        ethos-u85-256 (Arm Vela: NPU time, operator placement, SRAM, flash,
                        encoded weights) or tflm (TFLite Micro runtime: tensor arena);
                        needs `pip install tflite_retroq[targets]`

Errors print one line `retroq: error: ...` on stderr and exit with code 2.
"""

_COMMANDS = ("synthesize", "convert", "analyze", "inspect")

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Output path (.npz for synthesize, .tflite for convert).", short_name="o")
flags.DEFINE_enum("mode", _DEFAULTS.mode.value, _MODES, "synthesize: synthesis mode.")
flags.DEFINE_enum("data", None, _MODES, "convert: synthesize calibration data in this mode (default retro).")
flags.DEFINE_string("data-file", None, "convert/analyze: calibration dataset (.npz) from `retroq synthesize`.")
flags.DEFINE_integer("images", None, f"Total synthetic images (default {_DEFAULTS.DEFAULT_IMAGES}).")
flags.DEFINE_integer("samples", None, "Images per class instead of a total (balanced classes).")
flags.DEFINE_integer("batch-size", None, "Images optimized together (default: from memory).")
flags.DEFINE_integer("iterations", None, f"Synthesis iterations (default {_DEFAULTS.DEFAULT_ITERATIONS}).")
flags.DEFINE_float("time-budget", None, f"Synthesis seconds (default {_DEFAULTS.time_budget:g}; 0 = no limit).")
flags.DEFINE_integer("seed", None, f"Random seed (default {_DEFAULTS.seed}).")
flags.DEFINE_enum("scheme", "per-channel", ["per-channel", "per-tensor", "hybrid"],
                  "convert: weight quantization scheme.")
flags.DEFINE_float("threshold", None, "hybrid: per-channel iff KL_PT - KL_PC > TH (default 0).")
flags.DEFINE_integer("max-per-channel", None, "hybrid: at most N per-channel layers, most sensitive first.")
flags.DEFINE_boolean("fc-per-tensor", False, "hybrid: keep FULLY_CONNECTED layers per-tensor.")
flags.DEFINE_integer("weight-bits", 8, "convert: weight bits, 8, 6 or 4.")
flags.DEFINE_boolean("nonuniform", False, "convert: non-uniform (IQR cluster) weight levels.")
flags.DEFINE_enum("pack", None, ["lut"], "convert: pack weight tables for TFLite Micro (not runnable on LiteRT).")
flags.DEFINE_enum("io", "int8", ["int8", "float"], "convert: model input/output type.")
flags.DEFINE_string("report", None, "convert: write a JSON report to this path.")
flags.DEFINE_list("input-mean", None, "Per-channel mean: model_input = (pixel - mean) / std.")
flags.DEFINE_list("input-std", None, "Per-channel std: model_input = (pixel - mean) / std.")
flags.DEFINE_list("input-range", None, "LO,HI: the model takes raw pixels in this range.")
flags.DEFINE_boolean("quiet", False, "No progress bar on stderr.")
flags.DEFINE_boolean("json", False, "inspect: print JSON instead of a table.")
# --- targets: static-shape export and target estimates
flags.DEFINE_integer("static-batch", None, "convert: fix the batch dimension (1 for MCUs/NPUs).")
flags.DEFINE_list("target", None, "inspect: ethos-u55-128, ethos-u65-256, ethos-u85-256 and/or tflm.")

# Absurd integers are refused while the flags are parsed (one line, exit 2), before they can
# overflow a C long or ask for terabytes. The limits are far above any sensible run.
_INT_LIMITS = {"samples": (1, 1_000_000, "images per class"), "images": (1, 10_000_000, "synthetic images"),
               "batch-size": (1, 1_000_000, "images per batch"), "iterations": (0, 1_000_000, "optimization steps"),
               "seed": (0, 2**32 - 1, "the random seed")}


def _register_int_limits() -> None:
    for name, (lo, hi, what) in _INT_LIMITS.items():
        flags.register_validator(
            name, lambda v, lo=lo, hi=hi: v is None or lo <= v <= hi,
            message=f"--{name} must be between {lo} and {hi} ({what}); pass a value in that range.")


_register_int_limits()

_SYNTH = ("images", "samples", "batch-size", "iterations", "time-budget", "seed")
_INPUT = ("input-mean", "input-std", "input-range")
_ALLOWED = {
    "synthesize": {"output", "mode", "quiet", *_SYNTH, *_INPUT},
    "convert": {"output", "data", "data-file", "scheme", "threshold", "max-per-channel", "fc-per-tensor",
                "weight-bits", "nonuniform", "pack", "io", "report", "quiet", "static-batch", *_SYNTH, *_INPUT},
    "analyze": {"output", "data", "data-file", "weight-bits", "threshold", "max-per-channel", "fc-per-tensor",
                "quiet", *_SYNTH, *_INPUT},
    "inspect": {"json", "target"},
}
_OWN = sorted(set().union(*_ALLOWED.values()))


class _UsageError(RetroQError):
    """Wrong command line shape (command, positional arguments, missing -o)."""


def _present(name: str) -> bool:
    return bool(FLAGS[name].present)


def _flag(name: str):
    return FLAGS[name].value


# ----------------------------------------------------------------------------- validation helpers

def _positional(command: str, args: Sequence[str], what: str) -> str:
    if not args:
        raise _UsageError(f"`retroq {command}` needs {what} as its argument; see `retroq --help`.")
    if len(args) > 1:
        raise _UsageError(f"`retroq {command}` takes one {what}, got {len(args)} arguments: {' '.join(args)}.")
    return args[0]


def _check_flags_apply(command: str) -> None:
    for name in _OWN:
        if _present(name) and name not in _ALLOWED[command]:
            raise ConfigError(f"--{name} does not apply to `retroq {command}`; see `retroq --help`.")


def _require_output(command: str, example: str) -> str:
    out = _flag("output")
    if not out:
        raise _UsageError(f"`retroq {command}` needs -o {example}.")
    return out


def _input_spec() -> Optional[InputSpec]:
    if not any(_present(n) for n in _INPUT):
        return None
    return InputSpec(mean=_flag("input-mean"), std=_flag("input-std"), value_range=_flag("input-range"))


def _synthesis_config(mode: str) -> SynthesisConfig:
    kw = {"mode": mode}
    for flag, field in (("images", "images"), ("samples", "samples_per_class"), ("batch-size", "batch_size"),
                        ("iterations", "iterations"), ("seed", "seed")):
        if _flag(flag) is not None:
            kw[field] = _flag(flag)
    if _flag("time-budget") is not None:
        kw["time_budget"] = _flag("time-budget") or None
    if kw.get("seed", 0) < 0:
        raise ConfigError(f"--seed {kw['seed']} must be >= 0.")
    try:
        return SynthesisConfig(**kw)
    except ConfigError as e:
        raise ConfigError(_as_flags(str(e))) from None


def _as_flags(msg: str) -> str:
    """A SynthesisConfig message in the CLI's words: the flag, not the dataclass field."""
    for field, flag in (("samples_per_class", "--samples"), ("images", "--images"), ("batch_size", "--batch-size"),
                        ("iterations", "--iterations"), ("seed", "--seed"), ("time_budget", "--time-budget")):
        msg = msg.replace(f"{field}=", f"{flag} ")
    return msg.replace("images (a total budget)", "--images").replace(
        "samples_per_class (balanced per class)", "--samples")


def _check_model_file(path: str) -> str:
    """Cheap checks before TensorFlow is imported (missing, FIFO, unreadable); load_model does the full ones."""
    from tflite_retroq.io_utils import check_readable
    return check_readable(path, "Model file", ModelError, "pass the path of a saved Keras model (.keras)")


def _check_outputs(model_path: str, *paths: Optional[str], data_file: Optional[str] = None) -> None:
    """Every output is writable as a regular file, is none of the inputs, and no two outputs coincide."""
    from tflite_retroq.io_utils import check_not_inputs, check_writable, same_file
    inputs = [("input model", model_path), ("input dataset (--data-file)", data_file)]
    given = [p for p in paths if p]
    for p in given:
        check_writable(p)
        check_not_inputs(p, inputs)
    for i, p in enumerate(given):
        if any(same_file(p, q) for q in given[:i]):
            raise ConfigError("-o and --report name the same file; choose two different paths.")


def _load_model(path: str):
    """Load (a mixed-precision model as its float32 twin) and validate before anything is printed or run."""
    from tflite_retroq.keras_tools import as_model, validate_classifier
    model = as_model(path)
    validate_classifier(model)
    return model


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _say_input_space(data) -> None:
    """The one assumption a data-free tool cannot check against data: said on its own line (after
    success, so a failed run's stdout stays empty), and recorded in the dataset and the report."""
    _say(f"input space: {data.metadata.get('input_space', {}).get('source', 'unknown')}")


# ----------------------------------------------------------------------------- commands

def cmd_synthesize(args: Sequence[str]) -> int:
    model_path = _positional("synthesize", args, "a Keras model file (MODEL.keras)")
    output = _require_output("synthesize", "DATA.npz")
    config = _synthesis_config(_flag("mode"))
    spec = _input_spec()
    _check_model_file(model_path)
    _check_outputs(model_path, output)

    from tflite_retroq.synthesis import synthesize
    model = _load_model(model_path)
    t0 = time.perf_counter()
    data = synthesize(model, config, input_spec=spec, progress=not _flag("quiet"))
    seconds = time.perf_counter() - t0
    data.save(output)
    _say_input_space(data)
    n = len(data)
    rate = n / seconds if seconds > 0 else float("inf")
    steady = data.metadata.get("images_per_second")
    steady_txt = f", {steady:.0f} image-iterations/s after compilation" if steady else ""
    classes = data.metadata.get("num_classes", "?")
    plan = data.metadata.get("plan", {})
    _say(f"synthesized {n} images ({config.mode.value}, {classes} classes, {plan.get('batches', 1)} batches of "
         f"<= {plan.get('batch_size', n)}, {data.metadata.get('iterations_run', 0)} iterations, shape "
         f"{list(data.images.shape[1:])}) in {seconds:.1f} s, {rate:.1f} images/s{steady_txt} -> {output}")
    return 0


def cmd_convert(args: Sequence[str]) -> int:
    model_path = _positional("convert", args, "a Keras model file (MODEL.keras)")
    hcfg = _hybrid_config(_flag("scheme") == "hybrid")
    data_file = _flag("data-file")
    if data_file is not None:
        if _present("data"):
            raise ConfigError("--data and --data-file conflict: synthesize data (--data MODE) or load it "
                              "(--data-file PATH), not both.")
        for name in (*_SYNTH, *_INPUT):
            if _present(name):
                raise ConfigError(f"--{name} configures synthesis and conflicts with --data-file (the dataset "
                                  "is already synthesized); drop one of them.")
    output = _require_output("convert", "OUT.tflite")
    bits = _flag("weight-bits")
    if bits not in (8, 6, 4):
        raise ConfigError(f"--weight-bits {bits} is not supported; choose 8, 6 or 4.")
    qcfg = QuantizationConfig(scheme=_flag("scheme"), weight_bits=bits, io=_flag("io"))
    static_batch = _static_batch()
    scfg = _synthesis_config(_flag("data") or _DEFAULTS.mode.value) if data_file is None else None
    spec = _input_spec()
    report_path = _flag("report")
    _check_model_file(model_path)
    _check_outputs(model_path, output, report_path, data_file=data_file)

    from tflite_retroq.dataset import SyntheticDataset
    dataset = SyntheticDataset.load(data_file) if data_file is not None else None  # fail before TF loads

    from tflite_retroq.converter import convert
    model = _load_model(model_path)
    seconds = {}
    t0 = time.perf_counter()
    if dataset is None:
        from tflite_retroq.synthesis import synthesize
        dataset = synthesize(model, scfg, input_spec=spec, progress=not _flag("quiet"))
        seconds["synthesis"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    from tflite_retroq.converter import calibrate
    calibrated, logit_range = calibrate(model, dataset, return_info=True, batch_size=static_batch)
    plan, sens = None, None
    if hcfg is not None:
        from tflite_retroq.hybrid import plan_for
        t2 = time.perf_counter()
        plan, sens = plan_for(model, dataset, hcfg, qcfg.weight_bits, progress=not _flag("quiet"))
        seconds["sensitivity"] = time.perf_counter() - t2
    tflite = convert(model, dataset, scheme=qcfg.scheme, weight_bits=qcfg.weight_bits, io=qcfg.io,
                     calibrated=calibrated, batch_size=static_batch, nonuniform=_flag("nonuniform"),
                     pack=_flag("pack"), plan=plan)
    seconds["conversion"] = time.perf_counter() - t1 - seconds.get("sensitivity", 0.0)
    seconds["total"] = time.perf_counter() - t0

    from tflite_retroq.io_utils import atomic_path, write_bytes
    if report_path:
        from tflite_retroq import __version__
        from tflite_retroq.report import convert_report, to_json
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
                              **({"nonuniform": True} if _flag("nonuniform") else {}),
                              **({"pack": _flag("pack")} if _flag("pack") else {})),
            synthesis=synthesis, input_space=meta.get("input_space"), output_size=len(tflite), seconds=seconds,
            inspection=inspect_model(tflite), version=__version__), **_hybrid_report(plan, sens)))
        # Both files are fully written to temporaries before either is renamed into place.
        with atomic_path(output) as tmp_out, atomic_path(report_path) as tmp_rep:
            with open(tmp_out, "wb") as f:
                f.write(tflite)
            with open(tmp_rep, "w", encoding="utf-8") as f:
                f.write(text)
    else:
        write_bytes(output, tflite)
    if data_file is None or "input_space" in dataset.metadata:
        _say_input_space(dataset)
    if logit_range is not None and logit_range.widened != logit_range.calibrated:
        lo, hi = logit_range.calibrated
        _say(f"logits range widened from [{lo:.3g}, {hi:.3g}] to [{logit_range.widened[0]:.3g}, "
             f"{logit_range.widened[1]:.3g}], what the classifier can reach (synthetic images are less confident "
             "than real ones)")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != "total")
    kind = f"{'non-uniform ' if _flag('nonuniform') else ''}W{qcfg.weight_bits}"
    scheme = qcfg.scheme.value if plan is None else f"hybrid: {len(plan.per_channel)}/{plan.num_layers} per-channel"
    _say(f"wrote {output}: {len(tflite)} bytes ({scheme}, {kind}, {qcfg.io.value} I/O, "
         f"{len(dataset)} calibration images {dataset.mode}) in {seconds['total']:.1f} s ({timing})"
         + (f"; report {report_path}" if report_path else "")
         + ("; LUT-packed weight tables: runs on TFLite Micro only, not on LiteRT" if _flag("pack") else ""))
    return 0


# ----------------------------------------------------------------------------- hybrid / analyze

def _hybrid_config(enabled: bool):
    """HybridConfig from --threshold / --max-per-channel / --fc-per-tensor (refused without hybrid)."""
    from tflite_retroq.config import HybridConfig
    given = [n for n in ("threshold", "max-per-channel", "fc-per-tensor") if _present(n)]
    if not enabled:
        if given:
            raise ConfigError(f"--{given[0]} only applies to --scheme hybrid.")
        return None
    try:
        return HybridConfig(threshold=0.0 if _flag("threshold") is None else _flag("threshold"),
                            max_per_channel=_flag("max-per-channel"),
                            fully_connected_per_tensor=bool(_flag("fc-per-tensor")))
    except ConfigError as e:
        msg = str(e).replace("max_per_channel=", "--max-per-channel ").replace("threshold=", "--threshold ")
        raise ConfigError(msg) from None


def _hybrid_report(plan, sens) -> dict:
    return {} if plan is None else {"hybrid": {"plan": plan.to_dict(), "sensitivity": sens.to_dict()}}


def cmd_analyze(args: Sequence[str]) -> int:
    model_path = _positional("analyze", args, "a Keras model file (MODEL.keras)")
    out_dir = _require_output("analyze", "DIR")
    data_file = _flag("data-file")
    if data_file is not None:
        for name in ("data", *_SYNTH, *_INPUT):
            if _present(name):
                raise ConfigError(f"--{name} configures synthesis and conflicts with --data-file; drop one of them.")
    bits = _flag("weight-bits")
    if bits not in (8, 6, 4):
        raise ConfigError(f"--weight-bits {bits} is not supported; choose 8, 6 or 4.")
    hcfg = _hybrid_config(True)
    scfg = _synthesis_config(_flag("data") or _DEFAULTS.mode.value) if data_file is None else None
    spec = _input_spec()
    _check_model_file(model_path)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"-o {out_dir!r} is a file; `retroq analyze` writes into a directory.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out_dir))):
        raise ConfigError(f"-o {out_dir!r}: its parent directory does not exist; create it first.")

    from tflite_retroq.dataset import SyntheticDataset
    dataset = SyntheticDataset.load(data_file) if data_file is not None else None
    model = _load_model(model_path)
    t0 = time.perf_counter()
    if dataset is None:
        from tflite_retroq.synthesis import synthesize
        dataset = synthesize(model, scfg, input_spec=spec, progress=not _flag("quiet"))
    from tflite_retroq.sensitivity import analyze_sensitivity
    result = analyze_sensitivity(model, dataset, weight_bits=bits, progress=not _flag("quiet"))
    plan = result.select(hcfg)
    from tflite_retroq import __version__
    from tflite_retroq.sensitivity_report import analysis_document, write_analysis
    source = ({"source": "file", "path": data_file, "mode": dataset.mode} if data_file is not None
              else {"source": "synthesized", "mode": scfg.mode.value, "synthesis_config": scfg.to_dict()})
    doc = analysis_document(result, plan, model_path=model_path, data_source=source, version=__version__)
    paths = write_analysis(out_dir, result, plan, doc, title=f"Per-layer sensitivity: {os.path.basename(model_path)}")
    top = sorted(result.layers, key=lambda l: -l.difference)[:3]
    _say(f"analyzed {len(result.layers)} layers on {result.num_images} {result.data_source} images (W{bits}) in "
         f"{result.seconds:.1f} s ({result.speedup:.1f}x faster than 2L full passes); "
         f"{len(plan.per_channel)} per-channel at Th={hcfg.threshold:g}; most sensitive: "
         + ", ".join(f"{l.name} ({l.difference:.3g})" for l in top) + f" (total {time.perf_counter() - t0:.1f} s)")
    _say("wrote " + ", ".join(paths))
    return 0


def cmd_inspect(args: Sequence[str]) -> int:
    path = _positional("inspect", args, "a .tflite file")
    targets = _targets()
    from tflite_retroq.tflite.model import read_bytes
    data = read_bytes(path)
    from tflite_retroq.tflite.inspect import inspect_model
    info = inspect_model(data)
    estimates = _estimates(data, targets)  # every estimate done before anything is printed
    if _flag("json"):
        from tflite_retroq.report import to_json
        extra = {"targets": estimates} if targets else {}
        sys.stdout.write(to_json(dict(info, path=path, **extra)))
    else:
        from tflite_retroq.report import format_inspect
        _say(f"{path}")
        _say(format_inspect(info))
        if targets:
            from tflite_retroq.report import format_targets
            _say("")
            _say(format_targets(estimates))
    return 0


# ----------------------------------------------------------------------------- targets (static batch, estimates)

def _static_batch() -> Optional[int]:
    n = _flag("static-batch")
    if n is not None and n < 1:
        raise ConfigError(f"--static-batch {n} must be a positive integer (1 for microcontrollers and NPUs).")
    return n


def _targets() -> List[str]:
    from tflite_retroq.targets import TARGETS
    names = [t.strip() for t in (_flag("target") or []) if t.strip()]
    if _present("target") and not names:
        raise ConfigError(f"--target needs a value; choose from {', '.join(TARGETS)}.")
    for t in names:
        if t not in TARGETS:
            raise ConfigError(f"--target {t!r} is not known; choose from {', '.join(TARGETS)}.")
    return list(dict.fromkeys(names))


def _estimates(data: bytes, targets: Sequence[str]) -> dict:
    from tflite_retroq.targets import estimate
    return {t: estimate(data, t) for t in targets}


_HANDLERS = {"synthesize": cmd_synthesize, "convert": cmd_convert, "analyze": cmd_analyze, "inspect": cmd_inspect}


# ----------------------------------------------------------------------------- entry point

def _error(message: str, code: int = 2, prefix: str = "error") -> int:
    line = " ".join(str(message).split())  # exactly one line
    sys.stderr.write(f"retroq: {prefix}: {line}\n")
    sys.stderr.flush()
    return code


def _parse_flags(argv: List[str]) -> List[str]:
    for i, a in enumerate(argv[1:]):
        if a == "--":
            break
        if a in ("-h", "--help", "-?", "--helpshort") or (i == 0 and a == "help"):
            sys.stdout.write(USAGE)
            sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(_error(e))


def _show_warnings(caught) -> None:
    """Python warnings raised during a successful command, one line each, without repeats."""
    seen = set()
    for w in caught:
        line = " ".join(str(w.message).split())
        if line and line not in seen:
            seen.add(line)
            sys.stderr.write(f"retroq: warning: {line}\n")
    sys.stderr.flush()


def _out_of_memory_message(command: str) -> str:
    """What to lower, naming only flags this build of the CLI has."""
    knobs = [f"--{n}" for n in ("batch-size", "samples", "images") if n in FLAGS and n in _ALLOWED.get(command, ())]
    fix = f"lower {' or '.join(knobs)}" if knobs else "use a smaller model or input"
    return f"out of memory while running `retroq {command}`; {fix} (fewer images held at once) and try again."


def main(argv: List[str]) -> int:
    args = list(argv[1:])
    try:
        if not args:
            raise _UsageError(f"missing command; choose one of {', '.join(_COMMANDS)} (see `retroq --help`).")
        command, rest = args[0], args[1:]
        if command not in _HANDLERS:
            raise _UsageError(f"unknown command {command!r}; choose one of {', '.join(_COMMANDS)}.")
        _check_flags_apply(command)
        with warnings.catch_warnings(record=True) as caught:  # the filters in force still apply
            code = _HANDLERS[command](rest)
        _show_warnings(caught)  # on success only: after an error, its one line says it all
        return code
    except ConfigError as e:  # also those raised once the model is known (e.g. --samples x classes)
        return _error(_as_flags(str(e)))
    except RetroQError as e:
        return _error(e)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        if os.environ.get("RETROQ_TRACEBACK"):
            raise
        if is_out_of_memory(e):
            return _error(_out_of_memory_message(args[0] if args else "retroq"))
        return _error(f"{type(e).__name__}: {e} (unexpected; set RETROQ_TRACEBACK=1 for the traceback)",
                      1, "internal error")


def run(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    main_module = sys.modules.get("__main__")
    if main_module is not None and not getattr(main_module, "__doc__", None):
        main_module.__doc__ = USAGE  # absl's --helpfull prints it
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    with native_logs_silenced():
        app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
