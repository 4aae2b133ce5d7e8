"""What do per-tensor, low-bit, hybrid and non-uniform weights buy on DSP/NPU-style targets?

For each zoo model, calibrate once (retro data, static batch 1) and export every variant in
VARIANTS; then, per variant: Vela estimates on Ethos-U55-128 / U65-256 / U85-256 (NPU time,
operator placement, encoded weights, flash, SRAM), the TFLite Micro arena and its outputs
against LiteRT's reference kernels, LiteRT single-thread latency on the three resolvers as
ratios to per-channel W8 (interleaved in one run), and beside it accuracy / agreement / logit
SQNR against the float model (benchmarks/common.py). A second table compares the default
dynamic-batch export with the static one (operators, SHAPE/STRIDED_SLICE/PACK, Vela placement).

    .venv/bin/python -m benchmarks.targets                  # all models (~1 h on 2 shared cores)
    .venv/bin/python -m benchmarks.targets --quick --out /tmp/q   # smoke test

Adding a variant is one line in VARIANTS; a variant whose `convert` keywords this version
lacks is listed as skipped.
"""
from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Callable, Dict, List, Optional, Union

import numpy as np
from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_list("models", ["resnet20", "resnet56", "ic_resnet8", "vww_mobilenetv1_96", "fashion_dw"],
                  "Models to run.")
flags.DEFINE_bool("quick", False, "Smoke test: ResNet-8 only, Gaussian calibration data, 200 images, few runs.")
flags.DEFINE_integer("eval_images", None, "Evenly spaced CIFAR test+train images for agreement/SQNR "
                     "(default: all 6102; VWW 2000).")
flags.DEFINE_integer("latency_runs", 30, "Interleaved LiteRT runs per variant and resolver.")
flags.DEFINE_integer("tflm_images", 8, "Images run on TFLite Micro and compared with LiteRT's reference kernels.")

ETHOS = ("ethos-u55-128", "ethos-u65-256", "ethos-u85-256")
SHORT = {"ethos-u55-128": "u55", "ethos-u65-256": "u65", "ethos-u85-256": "u85"}
REFERENCE = "per-channel W8"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One exported model: `convert` keywords (a dict, or a function of the context for per-model values)."""
    name: str
    kwargs: Union[Dict, Callable[["Context"], Dict], None]  # None: the float model
    litert: bool = True            # LiteRT can run it (LUT-packed models need TFLM's DECODE)
    twin: Optional[str] = None     # a variant with the same integers: its accuracy is reported


VARIANTS: List[Variant] = [
    Variant("float", None),
    Variant("per-tensor W8", dict(scheme="per-tensor")),
    Variant(REFERENCE, dict(scheme="per-channel")),
    Variant("per-channel W6", dict(scheme="per-channel", weight_bits=6)),
    Variant("per-channel W4", dict(scheme="per-channel", weight_bits=4)),
    Variant("per-tensor W4", dict(scheme="per-tensor", weight_bits=4)),
    Variant("hybrid Th=0", dict(scheme="hybrid", threshold=0.0)),
    Variant("hybrid 25% PC", lambda c: dict(scheme="hybrid", max_per_channel=max(1, c.n_layers // 4))),
    Variant("non-uniform W4", dict(scheme="per-tensor", nonuniform=True, weight_bits=4)),
    Variant("non-uniform W4 LUT", dict(scheme="per-tensor", nonuniform=True, weight_bits=4, pack="lut"),
            litert=False, twin="non-uniform W4"),
    Variant("non-uniform W4 PC", dict(scheme="per-channel", nonuniform=True, weight_bits=4)),
    Variant("non-uniform W4 PC LUT", dict(scheme="per-channel", nonuniform=True, weight_bits=4, pack="lut"),
            litert=False, twin="non-uniform W4 PC"),
    # per-layer widths under a flash budget (methods/budget.py): W4 layers as INT4 (LiteRT; TFLM refuses INT4),
    # or every narrow layer LUT-packed for TFLite Micro
    Variant("size budget 0.65x", dict(scheme="per-channel", size_budget="0.65x")),
    Variant("size budget 0.65x LUT", dict(scheme="per-channel", size_budget="0.65x", pack="lut"), litert=False),
]


@dataclasses.dataclass
class Context:
    model: object
    data: object          # the synthetic calibration dataset
    calibrated: bytes     # static batch 1
    n_layers: int


def _missing_keywords(kw: Dict) -> List[str]:
    import tflite_retroq as rq
    params = inspect.signature(rq.convert).parameters
    return [k for k in kw if k not in params]


def build(variant: Variant, ctx: Context):
    """(bytes, None) or (None, why it was skipped)."""
    import tflite_retroq as rq
    if variant.kwargs is None:
        return rq.float_tflite(ctx.model, batch_size=1), None
    kw = variant.kwargs(ctx) if callable(variant.kwargs) else dict(variant.kwargs)
    missing = _missing_keywords(kw)
    if missing:
        return None, f"convert() has no {', '.join(missing)} in this version"
    try:
        return rq.convert(ctx.model, ctx.data, calibrated=ctx.calibrated, batch_size=1, **kw), None
    except rq.ConfigError as e:  # e.g. "not implemented yet"
        return None, str(e)


# --------------------------------------------------------------------------- models and data
MODEL_NAMES = {"resnet20": "ResNet-20", "resnet56": "ResNet-56", "ic_resnet8": "MLPerf IC ResNet-8",
               "vww_mobilenetv1_96": "MLPerf VWW MobileNetV1", "fashion_dw": "Fashion-MNIST DW-separable"}


class ModelData:
    """Evaluation images in the model's input convention (duck-typed like common.EvalData)."""

    def __init__(self, all_x, is_test, test_y, full_test_x, full_test_y, labels_meaningful=True):
        self.all_x, self.is_test, self.test_y = all_x, is_test, test_y
        self.n_test = int(is_test.sum())
        self.full_test_x, self.full_test_y = full_test_x, full_test_y
        self.labels_meaningful = labels_meaningful


def _vww_input(x: np.ndarray) -> np.ndarray:
    """CIFAR pixels -> VWW input, as benchmarks.zoo.mlperf.eval_images does it."""
    import tensorflow as tf
    out = tf.image.resize(x, (96, 96), method="bilinear").numpy() / 255.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def load(name: str, limit: Optional[int]):
    """(keras model, ModelData, pixel range or None) or ImportError/FileNotFoundError when it is not available."""
    from benchmarks.zoo import mlperf
    from benchmarks.zoo.cifar_resnet import build_resnet
    if name == "fashion_dw":
        from benchmarks.zoo import fashion  # the hybrid benchmark's depthwise-separable model (trained, cached)
        model = fashion.trained_model("dw_bn")
        x, y = fashion.eval_images("dw_bn", "test")
        if limit and limit < len(x):
            idx = np.linspace(0, len(x) - 1, num=limit).astype(int)
            x, y = x[idx], y[idx]
        return model, ModelData(x, np.ones(len(x), bool), y, x, y), fashion.INPUT_RANGE["dw_bn"]
    cifar = common.EvalData(FLAGS.zoo_dir, limit=limit if name != "vww_mobilenetv1_96" else (limit or 2000))
    if name.startswith("resnet"):
        model = build_resnet(int(name[6:]), FLAGS.zoo_dir)
    else:
        model = mlperf.load_model(name, FLAGS.zoo_dir)
    # The MLPerf models have no preprocessing layer: their pixel range as the zoo README states it.
    value_range = mlperf.INPUT_RANGE.get(name)
    if name != "vww_mobilenetv1_96":
        return (model, ModelData(cifar.all_x, cifar.is_test, cifar.test_y, cifar.full_test_x, cifar.full_test_y),
                value_range)
    # VWW has no person images here: resized CIFAR images measure fidelity to float, not accuracy.
    return model, ModelData(_vww_input(cifar.all_x), cifar.is_test, cifar.test_y, _vww_input(cifar.full_test_x[:200]),
                            cifar.full_test_y[:200], labels_meaningful=False), value_range


# --------------------------------------------------------------------------- measurements
def vela_columns(tfl: bytes) -> Dict:
    from tflite_retroq.targets.vela import vela_estimate
    from tflite_retroq.errors import TargetError
    cols, full = {}, {}
    for acc in ETHOS:
        s = SHORT[acc]
        try:
            e = vela_estimate(tfl, acc)
        except TargetError as err:  # e.g. Vela cannot compile TFLM's DECODE (LUT-packed) models
            cols[f"{s}_us"], full[acc] = None, {"error": str(err)}
            cols.setdefault("vela_error", str(err)[:160])
            continue
        full[acc] = e.to_dict()
        cols[f"{s}_us"] = e.inference_time_s * 1e6 if e.npu_ops else None
        cols[f"{s}_npu_pct"] = 100.0 * e.npu_fraction
        if acc == "ethos-u55-128":
            cols.update(u55_encoded_kib=e.encoded_weight_bytes / 1024, u55_flash_kib=e.flash_bytes / 1024,
                        u55_sram_kib=e.sram_bytes / 1024, u55_cpu_ops=",".join(e.cpu_op_types) or None)
    placed = [cols[f"{SHORT[a]}_npu_pct"] for a in ETHOS if f"{SHORT[a]}_npu_pct" in cols]
    cols["npu_pct"] = min(placed) if placed else None
    return {"columns": cols, "vela": full}


HEXAGON = "qualcomm-sm8650"


def hexagon_columns(tfl: bytes) -> Dict:
    """Qualcomm HTP (SM8650) placement through LiteRT's AOT plugin: NPU share, partitions, what stays on the
    CPU and why, and the compiled size (no timing: offline there is no device)."""
    from tflite_retroq.errors import TargetError
    from tflite_retroq.targets.qualcomm import hexagon_estimate
    try:
        e = hexagon_estimate(tfl, HEXAGON)
    except TargetError as err:
        return {"columns": {"hex_npu_pct": None, "hex_error": str(err)[:160]}, "hexagon": {"error": str(err)}}
    cols = {"hex_npu_pct": 100.0 * e.npu_fraction, "hex_partitions": e.partitions,
            "hex_cpu_ops": ",".join(e.cpu_op_types) or None, "hex_compiled_kib": e.compiled_bytes / 1024,
            "hex_context_kib": e.context_bytes / 1024}
    return {"columns": cols, "hexagon": e.to_dict()}


def tflm_columns(tfl: bytes, images: np.ndarray, litert: Optional[bytes]) -> Dict:
    """Arena and outputs on TFLM, against LiteRT's reference kernels on `litert` (the model or its twin):
    the largest difference in output quantization steps (0: bit-identical) and top-1 agreement."""
    import tflite_retroq as rq
    from tflite_retroq.targets.tflm import tflm_run
    from tflite_retroq.errors import TargetError
    try:
        r = tflm_run(tfl, images)
    except TargetError as err:
        return {"tflm_arena_kib": None, "tflm_equal": None, "tflm_error": str(err)}
    out = {"tflm_arena_kib": r.arena_bytes / 1024, "tflm_steps": None, "tflm_agree": None}
    if litert is not None:
        from tflite_retroq.tflite import model as tfm
        want = rq.run_tflite(litert, images, resolver="reference")
        m = tfm.read(tfl)
        scale = tfm.scales(m.subgraphs[0].tensors[m.subgraphs[0].outputs[0]])
        step = float(scale[0]) if scale.size else 1.0  # float outputs: plain difference
        out["tflm_steps"] = float(np.max(np.abs(r.outputs - want)) / step)
        out["tflm_agree"] = float(np.mean(np.argmax(r.outputs, 1) == np.argmax(want, 1)) * 100.0)
    return out


def static_vs_dynamic(model, data, static_pc: bytes) -> Dict:
    import tflite_retroq as rq
    from tflite_retroq.static_shape import SHAPE_OPS
    from tflite_retroq.targets.vela import vela_estimate
    from tflite_retroq.tflite.inspect import inspect_model
    dynamic = rq.convert(model, data)
    out = {}
    for tag, tfl in (("dynamic", dynamic), ("static", static_pc)):
        info = inspect_model(tfl)
        e = vela_estimate(tfl, "ethos-u55-128")
        h = hexagon_columns(tfl)["hexagon"]
        out[tag] = {"ops": info["num_ops"], "shape_ops": sum(info["op_counts"].get(k, 0) for k in SHAPE_OPS),
                    "vela_npu_ops": e.npu_ops, "vela_cpu_ops": e.cpu_ops, "u55_us": e.inference_time_s * 1e6,
                    "hex_partitions": h.get("partitions"), "hex_npu_ops": h.get("npu_ops"),
                    "hex_cpu_ops": h.get("cpu_ops"), "hex_rejected": h.get("rejected"), "hex_error": h.get("error")}
    return out


def run_model(key: str, quick: bool) -> Dict:
    import tflite_retroq as rq
    from tflite_retroq.targets.litert import RESOLVERS, litert_latencies
    from tflite_retroq.tflite import model as tfm
    name = MODEL_NAMES[key]
    limit = 200 if quick else FLAGS.eval_images
    model, data, value_range = load(key, limit)
    ref = common.fp32_reference(model, data)
    common.log(f"{name}: FP32 reference on {len(data.all_x)} images")
    t0 = time.perf_counter()
    cfg = rq.SynthesisConfig(mode="gaussian" if quick else "retro", seed=0)
    spec = rq.InputSpec(value_range=value_range) if value_range is not None else None
    ds = rq.synthesize(model, cfg, input_spec=spec, progress=False)
    synth_s = time.perf_counter() - t0
    cal = rq.calibrate(model, ds, batch_size=1)
    n_layers = sum(1 for _ in tfm.weight_ops(tfm.read(cal)))
    ctx = Context(model, ds, cal, n_layers)
    common.log(f"{name}: {len(ds)} {ds.mode} images in {synth_s:.0f} s, {n_layers} weight layers")
    built, skipped = {}, {}
    for v in VARIANTS:
        tfl, why = build(v, ctx)
        if tfl is None:
            skipped[v.name] = why
            common.log(f"{name}: skip {v.name}: {why}")
        else:
            built[v.name] = tfl
    tflm_x = data.all_x[np.linspace(0, len(data.all_x) - 1, FLAGS.tflm_images).astype(int)]
    rows, vela, hexagon = [], {}, {}
    for v in VARIANTS:
        if v.name not in built:
            continue
        tfl = built[v.name]
        row = {"model": name, "variant": v.name, "size_kib": len(tfl) / 1024}
        src = tfl if v.litert else built.get(v.twin)
        if src is not None and v.name == "float":
            row.update(accuracy=ref["accuracy"], agreement=100.0, sqnr_db=float("inf"))
            m = common.evaluate_tflite(tfl, data, ref)  # the float .tflite itself, as a check
            row["float_tflite_agreement"] = m["agreement"]
        elif src is not None:
            m = common.evaluate_tflite(src, data, ref)
            row.update(accuracy=m["accuracy"], agreement=m["agreement"], sqnr_db=m["sqnr_db"])
            if not v.litert:
                row["accuracy_note"] = f"integers of {v.twin} (TFLM outputs compared below)"
        if not data.labels_meaningful:
            row["accuracy"] = None
        vc = vela_columns(tfl)
        row.update(vc["columns"])
        vela[v.name] = vc["vela"]
        hc = hexagon_columns(tfl)
        row.update(hc["columns"])
        hexagon[v.name] = hc["hexagon"]
        row.update(tflm_columns(tfl, tflm_x, src))
        rows.append(row)
        common.log(f"{name} {v.name}: agree {row.get('agreement') or 0:.2f} u55 {row.get('u55_us') or 0:.0f} us "
                   f"npu {row['npu_pct'] or 0:.0f}% hexagon {row.get('hex_partitions')} partitions arena {row.get('tflm_arena_kib') or 0:.1f} KiB")
    runnable = {v.name: built[v.name] for v in VARIANTS if v.name in built and v.litert}
    lat = litert_latencies(runnable, RESOLVERS, runs=3 if quick else FLAGS.latency_runs, warmup=1 if quick else 3)
    base = lat.get(REFERENCE)
    for row in rows:
        t = lat.get(row["variant"])
        for r in RESOLVERS:
            row[f"lat_{r}_us"] = t[r] * 1e6 if t else None
            row[f"lat_{r}_x"] = t[r] / base[r] if t and base else None
    sd = static_vs_dynamic(model, ds, built[REFERENCE])
    return {"rows": rows, "vela": {name: vela}, "hexagon": {name: hexagon}, "skipped": {name: skipped}, "static": {name: sd},
            "synthesis": {name: {"images": len(ds), "mode": ds.mode, "seconds": synth_s,
                                 "iterations": ds.metadata.get("iterations_run")}}}


# --------------------------------------------------------------------------- output
COLUMNS = ["model", "variant", "accuracy", "agreement", "sqnr_db", "size_kib", "u55_us", "u65_us", "u85_us",
           "npu_pct", "u55_encoded_kib", "u55_flash_kib", "u55_sram_kib", "hex_npu_pct", "hex_partitions",
           "hex_cpu_ops", "hex_compiled_kib", "tflm_arena_kib", "tflm_steps",
           "lat_auto_x", "lat_builtin_x", "lat_reference_x"]


def plot(rows: List[Dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from tflite_retroq.io_utils import write_with
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    markers = dict(zip(variants, "o^sDvP*XhH<>dp8"))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, xkey, xlabel in ((axes[0], "u55_us", "Ethos-U55-128 estimated inference time (us, Vela)"),
                             (axes[1], "u55_flash_kib", "Ethos-U55-128 flash use (KiB, Vela)")):
        for r in rows:
            y = r.get("accuracy") if r.get("accuracy") is not None else r.get("agreement")
            x = r.get(xkey)
            if x is None or y is None or r["variant"] == "float":
                continue
            ax.scatter(x, y, marker=markers[r["variant"]], color=colors[r["model"]], s=40)
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy % (VWW: agreement with FP32)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[m], marker="o", linestyle="", label=m) for m in models]
    handles += [plt.Line2D([], [], color="gray", marker=markers[v], linestyle="", label=v)
                for v in variants if v != "float"]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle("Accuracy vs Ethos-U55 time and flash (int8 variants, static batch 1)")
    fig.tight_layout(rect=(0, 0.17, 1, 0.95))
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def relative_table(rows: List[Dict]) -> str:
    """Each variant against per-channel W8 of the same model: where it helps and where it does not."""
    def pct(a, b):
        return "–" if a is None or b is None or b == 0 else f"{100.0 * (a / b - 1.0):+.1f} %"

    def pts(a, b):
        return "–" if a is None or b is None else f"{a - b:+.2f}"

    ref = {r["model"]: r for r in rows if r["variant"] == REFERENCE}
    lines = ["## Against per-channel W8 of the same model", "",
             "Change of each figure relative to per-channel W8 (negative time / bytes = better). Accuracy and "
             "agreement in points.", "",
             "| model | variant | U55 time | U65 time | U85 time | U55 encoded weights | U55 flash | TFLM arena "
             "| LiteRT auto | LiteRT builtin | LiteRT reference | accuracy | agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = ref.get(r["model"])
        if b is None or r is b or r["variant"] == "float":
            continue
        lat = [("–" if r.get(f"lat_{k}_x") is None else f"{r[f'lat_{k}_x']:.2f}x")
               for k in ("auto", "builtin", "reference")]
        lines.append(f"| {r['model']} | {r['variant']} | {pct(r.get('u55_us'), b.get('u55_us'))} | "
                     f"{pct(r.get('u65_us'), b.get('u65_us'))} | {pct(r.get('u85_us'), b.get('u85_us'))} | "
                     f"{pct(r.get('u55_encoded_kib'), b.get('u55_encoded_kib'))} | "
                     f"{pct(r.get('u55_flash_kib'), b.get('u55_flash_kib'))} | "
                     f"{pct(r.get('tflm_arena_kib'), b.get('tflm_arena_kib'))} | {' | '.join(lat)} | "
                     f"{pts(r.get('accuracy'), b.get('accuracy'))} | {pts(r.get('agreement'), b.get('agreement'))} |")
    return "\n".join(lines)


def static_table(static: Dict) -> str:
    def hexagon(d):
        if d.get("hex_error"):
            return "error"
        return f"{d['hex_npu_ops']}/{d['hex_cpu_ops']}, {d['hex_partitions']}"

    lines = ["## Static-shape export (per-channel W8): default dynamic batch vs `batch_size=1`", "",
             "| model | ops dynamic | shape ops dynamic | ops static | shape ops static | Vela NPU/CPU ops dynamic "
             "| Vela NPU/CPU ops static | U55 us dynamic | U55 us static | Hexagon NPU/CPU ops, partitions dynamic "
             "| Hexagon NPU/CPU ops, partitions static |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    reasons = []
    for model, d in static.items():
        a, b = d["dynamic"], d["static"]
        lines.append(f"| {model} | {a['ops']} | {a['shape_ops']} | {b['ops']} | {b['shape_ops']} | "
                     f"{a['vela_npu_ops']}/{a['vela_cpu_ops']} | {b['vela_npu_ops']}/{b['vela_cpu_ops']} | "
                     f"{a['u55_us']:.0f} | {b['u55_us']:.0f} | {hexagon(a)} | {hexagon(b)} |")
        for tag, x in (("dynamic", a), ("static", b)):
            reasons += [f"- {model} {tag}: op #{r['index']} {r['op']}: {r['reason']}" for r in x.get("hex_rejected") or []]
    if reasons:
        lines += ["", "Operators the Qualcomm compiler left on the CPU, with its reasons:", ""] + reasons
    return "\n".join(lines)


def write(result: Dict, started: float) -> None:
    from tflite_retroq.targets.vela import ETHOS_U
    skipped = {m: s for m, s in result["skipped"].items() if s}
    skip_md = ""
    if skipped:
        skip_md = "## Skipped variants\n\n" + "\n".join(f"- {m}: {v}: {why}" for m, s in skipped.items()
                                                        for v, why in s.items())
    rejected = [r for r in result["rows"] if r.get("vela_error")]
    if rejected:
        skip_md += ("\n\n" if skip_md else "") + "## Models Vela could not compile\n\n" + "\n".join(
            f"- {r['model']} {r['variant']}: {r['vela_error']}" for r in rejected)
    notes = ("All models exported with a static batch of 1 (`convert(..., batch_size=1)`), calibrated once per "
             "model on retro data (`rq.synthesize(model, SynthesisConfig(mode='retro'))` with the package defaults "
             "of this version; counts in the JSON). accuracy: top-1 % on the CIFAR-10 test images among the "
             "evaluated ones (Fashion-MNIST: its test images; VWW: none, no person images here); agreement / sqnr_db: vs the model's own FP32 "
             "Keras outputs. Vela columns: estimated inference time on the NPU (us; float models run nowhere on "
             "the NPU, so none), npu_pct: lowest share of operators Vela placed on the NPU over the three "
             "configurations; u55_encoded/flash/sram: Vela's encoded weight bytes, flash and SRAM use on "
             "Ethos-U55-128 (KiB). Systems: " + ", ".join(f"{a} = {s}/{m}" for a, (s, m) in ETHOS_U.items()) +
             ". hex_*: Qualcomm Hexagon HTP on SM8650 through LiteRT's AOT compiler plugin (placement, not time: no device "
             "offline): hex_npu_pct: share of operators on the NPU, hex_partitions: NPU partitions (1 = the whole "
             "model in one dispatch), hex_cpu_ops: operators left on the CPU, hex_compiled_kib: the compiled .tflite "
             "with its HTP context binaries. tflm_arena_kib: TFLite Micro tensor arena; tflm_steps: largest difference between TFLM's "
             "outputs and LiteRT's reference kernels on the same images, in output quantization steps (0 = "
             "bit-identical; float: absolute; LUT-packed: against its unpacked twin). lat_*_x: LiteRT single-"
             "thread median latency relative to per-channel W8 on the same resolver, all variants interleaved in "
             "one run; the machine (2 cores) was shared with other jobs, so only these ratios are meaningful.")
    common.write_results(FLAGS.out, "targets", "DSP/NPU-style targets: Vela (Ethos-U), TFLite Micro, LiteRT",
                         result["rows"], COLUMNS, started=started, notes=notes,
                         extra_md=relative_table(result["rows"]) + "\n\n" + static_table(result["static"])
                         + ("\n\n" + skip_md if skip_md else ""),
                         params={"quick": FLAGS.quick, "models": FLAGS.models, "latency_runs": FLAGS.latency_runs,
                                 "tflm_images": FLAGS.tflm_images, "eval_images": FLAGS.eval_images,
                                 "versions": _versions()},
                         extra={k: result[k] for k in ("vela", "hexagon", "skipped", "static", "synthesis")})
    plot(result["rows"], f"{FLAGS.out}/targets.png")


def _versions() -> Dict:
    import importlib.metadata as md
    return {p: md.version(p) for p in ("ethos-u-vela", "tflite-micro", "ai-edge-litert", "onnxruntime-qnn")}


def main(argv):
    del argv
    started = time.perf_counter()
    keys = ["ic_resnet8"] if FLAGS.quick else FLAGS.models
    result = {"rows": [], "vela": {}, "hexagon": {}, "skipped": {}, "static": {}, "synthesis": {}}
    for key in keys:
        if key not in MODEL_NAMES:
            raise app.UsageError(f"unknown model {key!r}; choose from {', '.join(MODEL_NAMES)}")
        try:
            part = run_model(key, FLAGS.quick)
        except (ImportError, FileNotFoundError) as e:  # the Fashion-MNIST model lives on another branch
            common.log(f"{MODEL_NAMES[key]}: not available ({e}); skipped")
            result["skipped"][MODEL_NAMES[key]] = {"(model)": f"not available: {e}"}
            continue
        result["rows"] += part["rows"]
        for k in ("vela", "hexagon", "skipped", "static", "synthesis"):
            result[k].update(part[k])
        write(result, started)  # partial results after every model
    write(result, started)


if __name__ == "__main__":
    app.run(main)
