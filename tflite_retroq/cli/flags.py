"""Every `retroq` flag, the usage text, and the checks that run before TensorFlow is imported.

Flags are parsed and every option is validated (and output paths checked for
writability) before TensorFlow is imported, so mistakes fail in a fraction of a
second. Every RetroQError becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from absl import flags

from tflite_retroq.config import HybridConfig, InputSpec, SynthesisConfig, SynthesisMode
from tflite_retroq.errors import ConfigError, RetroQError

DEFAULTS = SynthesisConfig()
MODES = [m.value for m in SynthesisMode]

# The help text, in sections: `retroq --help` prints them all, `retroq VERB --help` the usage line
# of VERB and the sections naming it. Edit a section in place; add a flag to the section of its verb.
_HEAD = "retroq: data-free full-integer int8 TFLite quantization of Keras image classifiers.\n"
_USAGE_LINES = {
    "synthesize": """  retroq synthesize MODEL.keras -o DATA.npz [--mode retro|zeroq|gaussian] [--images N | --samples N]
                    [--batch-size N] [--iterations N] [--seed S] [input flags] [--quiet]
""",
    "convert": """  retroq convert    MODEL.keras -o OUT.tflite [--data retro|zeroq|gaussian | --data-file DATA.npz]
                    [--images N | --samples N] [--batch-size N] [--iterations N] [--seed S]
                    [--scheme per-channel|per-tensor|hybrid|mixed-channel [--threshold TH] [--max-per-channel N]
                    [--fc-per-tensor]] [--weight-bits 8|6|4] [--nonuniform] [--pack lut]
                    [--rounding learned] [--weight-dtype int4]
                    [--io int8|uint8|float] [--report REPORT.json] [--static-batch N] [input flags] [--quiet]
                    [--allow-float-ops]
""",
    "analyze": """  retroq analyze    MODEL.keras -o DIR [--data-file DATA.npz | --data MODE] [--weight-bits 8|6|4]
                    [--threshold TH] [--max-per-channel N] [--fc-per-tensor] [synthesis and input flags]
""",
    "inspect": """  retroq inspect    MODEL.tflite [--json] [--target T[,T...]] [--system-config S] [--memory-mode M]
""",
}
_COMMANDS = """commands:
  synthesize   synthesize calibration images from the model itself and save them (.npz)
  convert      synthesize (or load) calibration data and write a full-integer int8 .tflite
  analyze      per-layer per-tensor vs per-channel sensitivity (KL), the hybrid plan, a plot
  inspect      per-tensor quantization table, weight layers, op counts and size of a .tflite
"""
SECTIONS = (  # (the verbs a section applies to, its text)
    (("synthesize", "convert", "analyze"), f"""synthesis flags (synthesize, and convert without --data-file):
  --mode / --data  retro (BN statistics + class loss, default), zeroq (no class loss),
                   gaussian (plain noise, no optimization)
  --images N       total images, spread over the classes (default {DEFAULTS.DEFAULT_IMAGES})
  --samples N      images per class instead (balanced classes; N x classes images)
  --batch-size N   images optimized together (default: chosen from the model's activation memory
                   against a fixed budget; BatchNorm statistics are matched per batch)
  --iterations N   optimization steps per batch (default {DEFAULTS.DEFAULT_ITERATIONS}, less on a costly
                   model: without a time budget the default work is planned from the model's forward
                   FLOPs, never below {DEFAULTS.MIN_ITERATIONS} iterations x {DEFAULTS.MIN_IMAGES} images; same model, same data)
  --time-budget S  seconds synthesis may take (default: none): measured from the first steps, default
                   iterations then images shrink to fit; the result then depends on the machine's
                   speed and load; explicit --images/--iterations are kept
  --seed S         random seed (default {DEFAULTS.seed})
  --quiet          no progress bar on stderr
"""),
    (("synthesize", "convert", "analyze"), """input flags (how the model input relates to pixels; default: detected from a
Rescaling/Normalization front layer, else inferred from the first BatchNorm's running
statistics, else guessed from the logits only when one pixel convention fits clearly (with a
warning), else refused: pass one of these; the space used is printed and recorded):
  --input-mean a,b,c --input-std a,b,c   model_input = (pixel - mean) / std
  --input-range LO,HI                    the model takes raw pixels in [LO, HI]
"""),
    (("convert",), """convert flags:
  -o, --output PATH     the .tflite to write (atomically)
  --data-file PATH      calibrate with a dataset from `retroq synthesize` instead
  --scheme S            per-channel (default), per-tensor, or hybrid (alias mixed-channel): per-tensor
                        except the layers whose sensitivity says per-channel pays (KL_PT - KL_PC > TH
                        on the calibration images). The paper's "hybrid" is NOT TFLite's "hybrid"
                        (dynamic-range: int8 weights, float activations): every scheme here is
                        full-integer
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
  --rounding R          nearest (default) or learned: each weight's rounding and each bias
                        learned layer by layer to reproduce the float outputs on the
                        calibration images (4-bit weights keep float accuracy; minutes)
  --weight-dtype T      int8 (default) or int4: store 4-bit weights two per byte (needs
                        --weight-bits 4; runs on LiteRT, about half the file)
  --io T                int8 (default), uint8 (TFLite's inference_input_type=uint8: the int8 model's
                        values + 128, same scales) or float model inputs/outputs
  --report PATH         also write a JSON report (config, input space, synthesis, layers, hybrid plan)
  --static-batch N      fix the batch dimension at N (what MLPerf's models do). Not needed for NPUs:
                        the default dynamic-batch export already has constant Flatten shapes
                        (no SHAPE/STRIDED_SLICE/PACK: one Hexagon partition, all-NPU on Ethos-U)
  --allow-float-ops     keep ops TFLite cannot quantize in float (listed on one line and in the
                        report) instead of refusing the model; int8-only NPUs cannot run them
"""),
    (("analyze",), """analyze flags:
  -o DIR                writes DIR/sensitivity.json, .md and .png (DIR is created if missing)
  --data-file PATH      measure on a dataset from `retroq synthesize` (default: synthesize retro data)
  --weight-bits B       the weight grid to measure at (8, 6 or 4)
  --threshold, --max-per-channel, --fc-per-tensor: the plan shown (default Th=0)
"""),
    (("inspect",), """inspect flags:
  --json                print the inspection as JSON instead of a table
  --target T[,T...]     also estimate the model on targets: ethos-u55-128, ethos-u65-256,
                        ethos-u85-256 (Arm Vela: NPU time, operator placement, SRAM, flash,
                        encoded weights), tflm (TFLite Micro runtime: tensor arena) — these need
                        `pip install -e '.[targets]'` — or qualcomm-sm8650 (and the other
                        SoCs LiteRT's Qualcomm plugin lists: qualcomm-sm8550, -sm8750, ...: Hexagon
                        NPU operators vs CPU, partitions, the compiler's reason for each CPU op,
                        compiled size; needs `pip install -e '.[qualcomm]'`). Each target
                        reports on its own: one that fails shows its error and the others still
                        report; the command then exits with code 1
  --system-config S     Vela system config (a section of Arm/vela.ini) for the Ethos-U targets
  --memory-mode M       Vela memory mode (Arm/vela.ini) for the Ethos-U targets
"""),
)
_ERRORS = "Errors print one line `retroq: error: ...` on stderr and exit with code 2."
_FOOT = _ERRORS + """ `inspect --target`
prints every target's result and exits with code 1 when some target failed (one error line each).
"""
USAGE = "\n".join([_HEAD, "usage:\n" + "".join(_USAGE_LINES.values()), _COMMANDS,
                   *(text for _, text in SECTIONS), _FOOT])


def verb_help(verb: str) -> str:
    """`retroq VERB --help`: VERB's usage line and the flag sections that apply to it."""
    if verb not in _USAGE_LINES:
        return USAGE
    return "\n".join([_HEAD, "usage:\n" + _USAGE_LINES[verb], *(t for vs, t in SECTIONS if verb in vs),
                      "See `retroq --help` for every command.\n" + (_FOOT if verb == "inspect" else _ERRORS + "\n")])


COMMANDS = ("synthesize", "convert", "analyze", "inspect")

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Output path (.npz for synthesize, .tflite for convert).", short_name="o")
flags.DEFINE_enum("mode", DEFAULTS.mode.value, MODES, "synthesize: synthesis mode.")
flags.DEFINE_enum("data", None, MODES, "convert: synthesize calibration data in this mode (default retro).")
flags.DEFINE_string("data-file", None, "convert/analyze: calibration dataset (.npz) from `retroq synthesize`.")
flags.DEFINE_integer("images", None, f"Total synthetic images (default {DEFAULTS.DEFAULT_IMAGES}).")
flags.DEFINE_integer("samples", None, "Images per class instead of a total (balanced classes).")
flags.DEFINE_integer("batch-size", None, "Images optimized together (default: from memory).")
flags.DEFINE_integer("iterations", None, f"Synthesis iterations (default {DEFAULTS.DEFAULT_ITERATIONS}).")
flags.DEFINE_float("time-budget", None, "Synthesis seconds (default: none, work planned from the model; 0 = none).")
flags.DEFINE_integer("seed", None, f"Random seed (default {DEFAULTS.seed}).")
flags.DEFINE_enum("scheme", "per-channel", ["per-channel", "per-tensor", "hybrid", "mixed-channel"],
                  "convert: weight quantization scheme.")
flags.DEFINE_float("threshold", None, "hybrid: per-channel iff KL_PT - KL_PC > TH (default 0).")
flags.DEFINE_integer("max-per-channel", None, "hybrid: at most N per-channel layers, most sensitive first.")
flags.DEFINE_boolean("fc-per-tensor", False, "hybrid: keep FULLY_CONNECTED layers per-tensor.")
flags.DEFINE_integer("weight-bits", 8, "convert: weight bits, 8, 6 or 4.")
flags.DEFINE_boolean("nonuniform", False, "convert: non-uniform (IQR cluster) weight levels.")
flags.DEFINE_enum("pack", None, ["lut"], "convert: pack weight tables for TFLite Micro (not runnable on LiteRT).")
flags.DEFINE_enum("rounding", "nearest", ["nearest", "learned"],
                  "convert: weight rounding, nearest or learned on the calibration images.")
flags.DEFINE_enum("weight-dtype", "int8", ["int8", "int4"], "convert: weight storage (int4 needs --weight-bits 4).")
flags.DEFINE_enum("io", "int8", ["int8", "float", "uint8"], "convert: model input/output type.")
flags.DEFINE_string("report", None, "convert: write a JSON report to this path.")
flags.DEFINE_boolean("allow-float-ops", False, "convert: keep ops without int8 kernels in float.")
flags.DEFINE_list("input-mean", None, "Per-channel mean: model_input = (pixel - mean) / std.")
flags.DEFINE_list("input-std", None, "Per-channel std: model_input = (pixel - mean) / std.")
flags.DEFINE_list("input-range", None, "LO,HI: the model takes raw pixels in this range.")
flags.DEFINE_boolean("quiet", False, "No progress bar on stderr.")
flags.DEFINE_boolean("json", False, "inspect: print JSON instead of a table.")
# --- targets: static-shape export and target estimates
flags.DEFINE_integer("static-batch", None, "convert: fix the batch dimension (1 for MCUs/NPUs).")
flags.DEFINE_list("target", None, "inspect: ethos-u55-128, ethos-u65-256, ethos-u85-256, tflm, qualcomm-<soc>.")
flags.DEFINE_string("system-config", None, "inspect: Vela system config (Arm/vela.ini) for Ethos-U targets.")
flags.DEFINE_string("memory-mode", None, "inspect: Vela memory mode (Arm/vela.ini) for Ethos-U targets.")

# Absurd integers are refused while the flags are parsed (one line, exit 2), before they can
# overflow a C long or ask for terabytes. The limits are far above any sensible run.
_INT_LIMITS = {"samples": (1, 1_000_000, "images per class"), "images": (1, 10_000_000, "synthetic images"),
               "batch-size": (1, 1_000_000, "images per batch"), "iterations": (0, 1_000_000, "optimization steps"),
               "seed": (0, 2**32 - 1, "the random seed"),
               "static-batch": (1, 65536, "images per inference; 1 for microcontrollers and NPUs")}


def _register_int_limits() -> None:
    for name, (lo, hi, what) in _INT_LIMITS.items():
        flags.register_validator(
            name, lambda v, lo=lo, hi=hi: v is None or lo <= v <= hi,
            message=f"--{name} must be between {lo} and {hi} ({what}); pass a value in that range.")


_register_int_limits()

SYNTH_FLAGS = ("images", "samples", "batch-size", "iterations", "time-budget", "seed")
INPUT_FLAGS = ("input-mean", "input-std", "input-range")
ALLOWED = {
    "synthesize": {"output", "mode", "quiet", *SYNTH_FLAGS, *INPUT_FLAGS},
    "convert": {"output", "data", "data-file", "scheme", "threshold", "max-per-channel", "fc-per-tensor",
                "weight-bits", "nonuniform", "pack", "io", "report", "quiet", "static-batch", "allow-float-ops",
                "rounding", "weight-dtype", *SYNTH_FLAGS, *INPUT_FLAGS},
    "analyze": {"output", "data", "data-file", "weight-bits", "threshold", "max-per-channel", "fc-per-tensor",
                "quiet", *SYNTH_FLAGS, *INPUT_FLAGS},
    "inspect": {"json", "target", "system-config", "memory-mode"},
}
OWN = sorted(set().union(*ALLOWED.values()))


class UsageError(RetroQError):
    """Wrong command line shape (command, positional arguments, missing -o)."""


def present(name: str) -> bool:
    return bool(FLAGS[name].present)


def flag(name: str):
    return FLAGS[name].value


# ----------------------------------------------------------------------------- validation helpers

def positional(command: str, args: Sequence[str], what: str) -> str:
    if not args:
        raise UsageError(f"`retroq {command}` needs {what} as its argument; see `retroq --help`.")
    if len(args) > 1:
        raise UsageError(f"`retroq {command}` takes one {what}, got {len(args)} arguments: {' '.join(args)}.")
    return args[0]


def check_flags_apply(command: str) -> None:
    for name in OWN:
        if present(name) and name not in ALLOWED[command]:
            raise ConfigError(f"--{name} does not apply to `retroq {command}`; see `retroq --help`.")


def require_output(command: str, example: str) -> str:
    out = flag("output")
    if not out:
        raise UsageError(f"`retroq {command}` needs -o {example}.")
    return out


def input_spec() -> Optional[InputSpec]:
    if not any(present(n) for n in INPUT_FLAGS):
        return None
    return InputSpec(mean=flag("input-mean"), std=flag("input-std"), value_range=flag("input-range"))


def synthesis_config(mode: str) -> SynthesisConfig:
    kw = {"mode": mode}
    for name, field in (("images", "images"), ("samples", "samples_per_class"), ("batch-size", "batch_size"),
                        ("iterations", "iterations"), ("seed", "seed")):
        if flag(name) is not None:
            kw[field] = flag(name)
    if flag("time-budget") is not None:
        kw["time_budget"] = flag("time-budget") or None
    if kw.get("seed", 0) < 0:
        raise ConfigError(f"--seed {kw['seed']} must be >= 0.")
    try:
        return SynthesisConfig(**kw)
    except ConfigError as e:
        raise ConfigError(as_flags(str(e))) from None


def as_flags(msg: str) -> str:
    """A SynthesisConfig message in the CLI's words: the flag, not the dataclass field."""
    for field, name in (("samples_per_class", "--samples"), ("images", "--images"), ("batch_size", "--batch-size"),
                        ("iterations", "--iterations"), ("seed", "--seed"), ("time_budget", "--time-budget")):
        msg = msg.replace(f"{field}=", f"{name} ")
    if msg.startswith("--time-budget"):
        msg = msg.replace(" or None.", "; pass 0 for no limit.")
    return msg.replace("images (a total budget)", "--images").replace(
        "samples_per_class (balanced per class)", "--samples")


def hybrid_config(enabled: bool):
    """HybridConfig from --threshold / --max-per-channel / --fc-per-tensor (refused without hybrid)."""
    given = [n for n in ("threshold", "max-per-channel", "fc-per-tensor") if present(n)]
    if not enabled:
        if given:
            raise ConfigError(f"--{given[0]} only applies to --scheme hybrid (alias mixed-channel).")
        return None
    try:
        return HybridConfig(threshold=0.0 if flag("threshold") is None else flag("threshold"),
                            max_per_channel=flag("max-per-channel"),
                            fully_connected_per_tensor=bool(flag("fc-per-tensor")))
    except ConfigError as e:
        msg = str(e).replace("max_per_channel=", "--max-per-channel ").replace("threshold=", "--threshold ")
        raise ConfigError(msg) from None


def static_batch_flag() -> Optional[int]:
    n = flag("static-batch")
    if n is not None and n < 1:
        raise ConfigError(f"--static-batch {n} must be a positive integer (1 for microcontrollers and NPUs).")
    return n


def target_names() -> List[str]:
    from tflite_retroq.targets.estimate import TARGETS  # imports the tools' modules: only when asked
    names = [t.strip() for t in (flag("target") or []) if t.strip()]
    if present("target") and not names:
        raise ConfigError(f"--target needs a value; choose from {', '.join(TARGETS)}.")
    for t in names:
        if t not in TARGETS:
            raise ConfigError(f"--target {t!r} is not known; choose from {', '.join(TARGETS)}.")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- the command line, before absl

HELP_FLAGS = ("h", "help", "helpshort", "helpfull", "?")


def _flag_name(arg: str) -> str:
    return arg.lstrip("-").split("=", 1)[0]


def help_requested(argv: Sequence[str]) -> Optional[str]:
    """The help text to print if the command line asks for help (`--help`, `-h`, `help [VERB]`), else None."""
    args = list(argv[1:])
    if args[:1] == ["help"]:
        return verb_help(args[1]) if len(args) > 1 else USAGE
    for a in args:
        if a == "--":
            break
        if a.startswith("-") and _flag_name(a) in HELP_FLAGS:
            verb = args[0] if args and args[0] in COMMANDS else None
            return verb_help(verb) if verb else USAGE
    return None


def check_own_flags(argv: Sequence[str]) -> None:
    """Refuse every flag that is not retroq's own before absl sees the command line.

    absl defines its own flags (--flagfile, --run_with_pdb, --profile_file, logging flags...) in
    the same registry; they are not part of this tool: --flagfile would read any file (or block
    on a FIFO) and --profile_file would overwrite one. Only the flags in OWN (and -o) get through.
    """
    args = list(argv[1:])
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            break
        if not a.startswith("-") or a == "-":
            continue
        name = _flag_name(a)
        own = name if name in OWN else "output" if name == "o" else None
        if own is None and name.startswith("no") and name[2:] in OWN and FLAGS[name[2:]].boolean:
            continue
        if own is None:
            raise UsageError(f"{a.split('=', 1)[0]} is not a retroq flag; see `retroq --help` for the flags of "
                             "each command.")
        if "=" not in a and not FLAGS[own].boolean:
            i += 1  # its value, which may itself start with '-'


def vela_options(targets: Sequence[str]) -> dict:
    """--system-config / --memory-mode for Vela; refused unless an Ethos-U target is named."""
    given = {k.replace("-", "_"): flag(k) for k in ("system-config", "memory-mode") if present(k)}
    for k, v in given.items():
        if not v or not v.strip():
            raise ConfigError(f"--{k.replace('_', '-')} needs a value (a section of Vela's Arm/vela.ini).")
    if given and not any(t.startswith("ethos-u") for t in targets):
        raise ConfigError(f"--{next(iter(given)).replace('_', '-')} configures Vela and needs an Ethos-U target "
                          "(--target ethos-u55-128, ethos-u65-256 or ethos-u85-256).")
    return given
