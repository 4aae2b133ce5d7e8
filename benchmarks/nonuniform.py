"""Where does non-uniform (IQR-cluster) weight quantization help, and what does LUT packing save?

For CIFAR-10 ResNet-20, ResNet-56 and the MLPerf Tiny IC ResNet-8: one retro synthesis (package
defaults) and ONE calibration per model; from it, at k = 8, 6, 4 weight bits with 8-bit activations:
uniform per-tensor / per-channel (the converter + weight_bits pass), non-uniform per-tensor (the
paper) / per-channel (our extension), and a k-means baseline with the same 2^k levels per tensor
(scikit-learn KMeans; tfmot's clustering is not used: it is not installed here, it needs tf_keras
(Keras 2) models while ours are Keras 3, and it is a fine-tuning API, not a data-free one).

Per variant: top-1 on test_first1017, agreement / logit SQNR vs FP32 on all zoo images, weight SQNR
(of the int8 weights vs the BN-folded float weights), file size plain and LUT-packed (TFLM; packed
output checked bit-identical to the plain model on the TFLM runtime on a few images). For the
non-uniform and k-means variants also the *simulated* model: float activations carrying the unsnapped
levels (what k = 8 non-uniform really is; an int8 grid cannot hold 256 arbitrary levels).
Weight histograms with the levels (the paper's Fig. 3) and per-layer weight SQNR as PNG.

    .venv/bin/python -m benchmarks.nonuniform                       # full run
    .venv/bin/python -m benchmarks.nonuniform --quick --out /tmp/q  # smoke test
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import numpy as np
from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_list("models", ["resnet20", "resnet56", "ic_resnet8"], "Models: resnet20, resnet56, ic_resnet8.")
flags.DEFINE_list("weight_bits", ["8", "6", "4"], "Weight bit widths (activations are always int8).")
flags.DEFINE_integer("eval_images", 0, "Evenly spaced subset of the 6102 zoo images (0 = all).")
flags.DEFINE_integer("tflm_images", 3, "Images run on TFLM to check packed == plain.")
flags.DEFINE_bool("quick", False, "Smoke test: ResNet-20 only, tiny synthesis, 300 images, k = 4.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")

QUICK = {"models": ["resnet20"], "eval_images": 300, "weight_bits": [4], "samples_per_class": 2, "iterations": 5}
VARIANTS = [("uniform", "per-tensor"), ("uniform", "per-channel"), ("non-uniform", "per-tensor"),
            ("non-uniform", "per-channel"), ("k-means", "per-tensor")]


# --------------------------------------------------------------------------- quantizers

def kmeans_quantize(w: np.ndarray, bits: int, axis: Optional[int] = None):
    """The baseline: 1-D k-means (scikit-learn) with 2^bits centres per tensor, as a NonUniformResult."""
    from sklearn.cluster import KMeans
    from tflite_retroq.quant import nonuniform as nu
    if axis is not None:
        raise ValueError("the k-means baseline is per-tensor")
    x = np.asarray(w, np.float64).reshape(-1, 1)
    k = int(min(2 ** bits, np.unique(x).size))
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x)
    order = np.argsort(km.cluster_centers_[:, 0])
    levels = km.cluster_centers_[order, 0]
    codes = np.argsort(order)[km.labels_].reshape(np.shape(w))
    return nu.NonUniformResult(bits, None, (nu.SliceResult(levels, codes, (), float("nan"), float("nan")),),
                               tuple(np.shape(w)))


def _float_weights(cal: bytes) -> Dict[str, np.ndarray]:
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(cal)
    return {w.output_name: tfm.tensor_array(m, m.subgraphs[w.subgraph], w.weight) for w in tfm.weight_ops(m)}


def _int8_weights(tfl: bytes) -> List[np.ndarray]:
    """Dequantized weights of an int8 model, in op order."""
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(tfl)
    out = []
    for wop in tfm.weight_ops(m):
        t = m.subgraphs[wop.subgraph].tensors[wop.weight]
        q = tfm.tensor_array(m, m.subgraphs[wop.subgraph], wop.weight).astype(np.float64)
        s = tfm.scales(t).astype(np.float64)
        if s.size > 1:
            shape = [1] * q.ndim
            shape[tfm.quantized_dimension(t)] = -1
            s = s.reshape(shape)
        out.append(q * s)
    return out


def _sqnr(ws: List[np.ndarray], wqs: List[np.ndarray]) -> float:
    sig = sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in ws)
    noise = sum(float(np.sum((np.asarray(w, np.float64) - wq) ** 2)) for w, wq in zip(ws, wqs))
    return float("inf") if noise == 0 else 10 * np.log10(sig / noise)


def _layer_sqnr(ws, wqs) -> List[float]:
    return [_sqnr([w], [wq]) for w, wq in zip(ws, wqs)]


# --------------------------------------------------------------------------- one model

def _load(name: str):
    import tflite_retroq as rq
    if name.startswith("resnet"):
        from benchmarks.zoo.cifar_resnet import build_resnet
        return f"ResNet-{name[6:]}", build_resnet(int(name[6:]), FLAGS.zoo_dir), None
    from benchmarks.zoo import mlperf
    return "MLPerf IC ResNet-8", mlperf.load_model(name, FLAGS.zoo_dir), rq.InputSpec(
        value_range=mlperf.INPUT_RANGE[name])


def _synthesize(model, spec):
    import tflite_retroq as rq
    if FLAGS.quick:
        cfg = rq.SynthesisConfig(samples_per_class=QUICK["samples_per_class"], iterations=QUICK["iterations"])
        return rq.synthesize(model, cfg, input_spec=spec, progress=False)
    return rq.synthesize(model, input_spec=spec, progress=False)  # the package's retro defaults


def _packed(tfl: bytes, x: np.ndarray):
    """(packed size or None, packed output == plain output on TFLM)."""
    from tflite_retroq.errors import TFLiteModelError
    from tflite_retroq.tflite import pack
    try:
        packed = pack.pack_lut(tfl)
    except TFLiteModelError:
        return None, None, 0
    n_packed = len(pack.lut_plan(tfl))
    same = bool(np.array_equal(pack.run_tflm(packed, x), pack.run_tflm(tfl, x))) if len(x) else None
    return len(packed), same, n_packed


def run_model(key: str, data: "common.EvalData", bits_list: List[int], rows: List[Dict], plots: List[str]):
    import tflite_retroq as rq
    from tflite_retroq.tflite import weight_tables as wt
    name, model, spec = _load(key)
    ref = common.fp32_reference(model, data)
    common.log(f"{name}: FP32 top-1 {ref['accuracy']:.2f}")
    rows.append({"model": name, "method": "fp32", "scheme": "-", "weights": "FP32", "accuracy": ref["accuracy"],
                 "agreement": 100.0, "sqnr_db": float("inf")})
    t0 = time.perf_counter()
    ds = _synthesize(model, spec)
    cal = rq.calibrate(model, ds)
    common.log(f"{name}: {len(ds)} retro images + calibration in {time.perf_counter() - t0:.1f} s")
    base = {s: rq.quantize_calibrated(cal, s) for s in ("per-tensor", "per-channel")}
    fw = _float_weights(cal)
    fw_list = list(fw.values())
    x_tflm = data.all_x[:FLAGS.tflm_images]
    per_layer = {}
    for k in bits_list:
        for method, scheme in VARIANTS:
            t1 = time.perf_counter()
            sim = None
            if method == "uniform":
                tfl = rq.convert(model, None, scheme=scheme, weight_bits=k, calibrated=cal)
            else:
                quantizer = kmeans_quantize if method == "k-means" else None
                kw = {"quantizer": quantizer} if quantizer else {}
                tfl, entries = wt.write_tables(base[scheme], cal, k, **kw)
                sim_bytes = wt.simulated_model(base[scheme], cal, k, **kw)
                sim = common.evaluate_tflite(sim_bytes, data, ref)
                sim["w_sqnr"] = _sqnr(fw_list, [e.result.dequantize() for e in entries])
            wq = _int8_weights(tfl)
            m = common.evaluate_tflite(tfl, data, ref)
            size_packed, same, n_packed = _packed(tfl, x_tflm)
            row = {"model": name, "method": method, "scheme": scheme, "weights": f"W{k}A8", **m,
                   "w_sqnr_db": _sqnr(fw_list, wq), "size_bytes": len(tfl), "lut_bytes": size_packed,
                   "lut_tensors": n_packed, "tflm_packed_identical": same}
            if sim is not None:
                row.update(sim_accuracy=sim["accuracy"], sim_agreement=sim["agreement"], sim_sqnr_db=sim["sqnr_db"],
                           sim_w_sqnr_db=sim["w_sqnr"])
            rows.append(row)
            per_layer[(method, scheme, k)] = _layer_sqnr(fw_list, wq)
            common.log(f"{name} {method:11s} {scheme:11s} W{k}A8: acc {m['accuracy']:.2f} agree "
                       f"{m['agreement']:.2f} sqnr {m['sqnr_db']:.2f} wsqnr {row['w_sqnr_db']:.1f} size "
                       f"{len(tfl)} lut {size_packed} same {same}"
                       + (f" | sim acc {sim['accuracy']:.2f} agree {sim['agreement']:.2f}" if sim else "")
                       + f" ({time.perf_counter() - t1:.0f} s)")
    plots += _plots(key, name, fw, per_layer, bits_list)


def _plots(key, name, fw, per_layer, bits_list) -> List[str]:
    from tflite_retroq.quant import nonuniform as nu
    from tflite_retroq.reports.plots import _plt, plot_weight_levels
    from tflite_retroq.quant.uniform import symmetric_quantize
    from tflite_retroq.io_utils import write_with
    out = []
    k = min(bits_list)
    names = list(fw)
    pick = [names[0], names[len(names) // 2], names[-1]]
    panels = []
    for n in pick:
        w = fw[n]
        r = nu.quantize(w, k)
        q, s = symmetric_quantize(w, k, None)
        qmax = 2 ** (k - 1) - 1
        lv = {f"non-uniform W{k}": r.levels[0], f"uniform W{k}": np.arange(-qmax, qmax + 1) * s[0],
              f"k-means W{k}": kmeans_quantize(w, k).levels[0]}
        sl = r.slices[0]
        iqr = sl.q3 - sl.q1
        panels.append((f"{name} layer {names.index(n)} ({w.size} weights): {n[:60]}", w, lv,
                       (sl.q1 - 1.5 * iqr, sl.q3 + 1.5 * iqr)))
    path = f"{FLAGS.out}/nonuniform_hist_{key}.png"
    out.append(plot_weight_levels(panels, path, title=f"{name}: weights, levels at W{k} per tensor "
                                                      "(black: IQR fences)"))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for (method, scheme, b), vals in per_layer.items():
        if b != k:
            continue
        ax.plot(vals, marker=".", linewidth=1, label=f"{method} {scheme}")
    ax.set_xlabel("layer (op order)")
    ax.set_ylabel("weight SQNR (dB), int8 file")
    ax.set_title(f"{name}: per-layer weight SQNR at W{k}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = f"{FLAGS.out}/nonuniform_layers_{key}.png"
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    out.append(path)
    return out


# --------------------------------------------------------------------------- main

def main(argv):
    del argv
    started = time.perf_counter()
    models = QUICK["models"] if FLAGS.quick else FLAGS.models
    bits = QUICK["weight_bits"] if FLAGS.quick else [int(b) for b in FLAGS.weight_bits]
    limit = QUICK["eval_images"] if FLAGS.quick else (FLAGS.eval_images or None)
    data = common.EvalData(FLAGS.zoo_dir, limit=limit)
    rows, plots = [], []
    for key in models:
        run_model(key, data, bits, rows, plots)
        _write(rows, plots, started, data, bits)
    _write(rows, plots, started, data, bits)


COLUMNS = ["model", "method", "scheme", "weights", "accuracy", "agreement", "sqnr_db", "w_sqnr_db",
           "sim_accuracy", "sim_agreement", "sim_sqnr_db", "sim_w_sqnr_db", "size_bytes", "lut_bytes",
           "tflm_packed_identical"]


def _write(rows, plots, started, data, bits):
    params = {"quick": FLAGS.quick, "eval_images_all": len(data.all_x), "accuracy_images": data.n_test,
              "weight_bits": bits, "activations": "int8", "calibration": "retro, package defaults, one per model",
              "tflm_images": FLAGS.tflm_images, "kmeans": "sklearn KMeans, n_init=1, per tensor"}
    notes = ("accuracy: top-1 % on test_first1017 (1 image = 0.098 points); agreement / sqnr_db: top-1 agreement "
             "and logit SQNR vs the model's FP32 outputs on all zoo images; w_sqnr_db: SQNR of the int8 file's "
             "weights vs the BN-folded float weights (all layers pooled). sim_*: the calibrated float model "
             "carrying the unsnapped levels (float activations), i.e. the method itself before the int8 grid. "
             "size_bytes: the .tflite; lut_bytes: after `pack='lut'` (TFLite Micro only; LiteRT cannot run it); "
             "tflm_packed_identical: packed == plain outputs on the TFLM runtime. Every variant of a model "
             "comes from ONE calibration. Shared 2-core machine: no timings are reported.")
    common.write_results(FLAGS.out, "nonuniform", "Non-uniform vs uniform vs k-means weights, LUT packing",
                         rows, COLUMNS, params=params, notes=notes, extra_md=_summary(rows) + "\n\n" +
                         "\n".join(f"![{p.rsplit('/', 1)[-1]}]({p.rsplit('/', 1)[-1]})" for p in plots),
                         started=started)


def _summary(rows) -> str:
    """Non-uniform minus uniform, same scheme and bits; LUT saving."""
    idx = {(r["model"], r["method"], r["scheme"], r["weights"]): r for r in rows}
    lines = ["## Non-uniform minus uniform (same scheme, same bits)", "",
             "| model | scheme | weights | d top-1 | d agreement | d logit SQNR | d weight SQNR | "
             "k-means d agreement (PT) | LUT size / plain (non-uniform) |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, method, scheme, w), r in idx.items():
        if method != "non-uniform":
            continue
        u = idx.get((model, "uniform", scheme, w))
        km = idx.get((model, "k-means", "per-tensor", w))
        if not u:
            continue
        ratio = f"{r['lut_bytes'] / r['size_bytes']:.2f}" if r.get("lut_bytes") else "not packable"
        kmd = f"{km['agreement'] - u['agreement']:+.2f}" if km and scheme == "per-tensor" else "-"
        lines.append(f"| {model} | {scheme} | {w} | {r['accuracy'] - u['accuracy']:+.2f} | "
                     f"{r['agreement'] - u['agreement']:+.2f} | {r['sqnr_db'] - u['sqnr_db']:+.2f} | "
                     f"{r['w_sqnr_db'] - u['w_sqnr_db']:+.2f} | {kmd} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
