"""Do the synthesis defaults hold on every model we have, not only the one they were chosen on?

Every model x calibration source, W8A8 per-channel, no input flags given to the tool (the input
space is whatever it detects or infers, printed in the table):

* models: CIFAR ResNet-20 / ResNet-56 (Rescaling + Normalization front), MLPerf Tiny IC ResNet-8
  (raw 0..255 pixels, softmax, no preprocessing layer), MLPerf Tiny VWW MobileNetV1 (pixels/255, a
  Keras 2 .h5), and two Fashion-MNIST models this benchmark trains (depthwise + BatchNorm on [0, 1]
  with logits; a plain CNN without BatchNorm on raw 0..255 with softmax).
* sources: real images (256; for VWW natural CIFAR images resized, it has no person images here),
  gaussian, zeroq and retro at the package defaults, and retro as it was before this change
  (8 per class, 100 iterations, one batch, calibrated logits range: `retro (before)`), plus
  `retro, no logit widening` to show what the logits-range pass adds. For the MLPerf models, MLPerf's
  own real-data int8 file is a row too.

Agreement with the float Keras model and output SQNR on all evaluation images (CIFAR: 6102 test + train
images; Fashion-MNIST: the 10k test images); top-1 where labels mean something.

    .venv/bin/python -m benchmarks.zoo_models            # full
    .venv/bin/python -m benchmarks.zoo_models --quick    # two models, small budgets (CI smoke)
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import numpy as np
from absl import app, flags

from benchmarks import common, range_fidelity

FLAGS = flags.FLAGS
flags.DEFINE_string("zoo_dir", common.DEFAULT_ZOO, "Shared model zoo directory.")
flags.DEFINE_string("out", common.DEFAULT_OUT, "Results directory.")
flags.DEFINE_list("models", None, "Subset of models (default: all).")
flags.DEFINE_bool("quick", False, "Two small models, small budgets, few images (a smoke run, not results).")
flags.DEFINE_integer("eval_limit", None, "Evenly spaced subset of the evaluation images.")
flags.DEFINE_string("name", None, "Result file name (default zoo_models, or zoo_models_quick).")
flags.DEFINE_list("sources", None, "Subset of calibration sources by name (default: all; see SOURCES).")
flags.DEFINE_list("combine", None, "Write --name from these result names' rows instead of running.")
flags.DEFINE_string("before_from", None, "With --combine: retro rows of this earlier result stand as 'retro (before)'.")


class Case:
    """A model with its evaluation images, real calibration images and what the labels mean."""

    def __init__(self, name: str, load: Callable[[], tuple], labels_meaningful: bool = True,
                 reference: Optional[Callable[[], bytes]] = None, input_flags: Optional[dict] = None):
        self.name, self.load, self.labels_meaningful, self.reference = name, load, labels_meaningful, reference
        self.input_flags = input_flags  # what a user passes as --input-mean/--input-std/--input-range, if needed


def _cifar_case(depth: int) -> Case:
    def load():
        from benchmarks.zoo.cifar_resnet import build_resnet
        data = common.EvalData(FLAGS.zoo_dir, limit=FLAGS.eval_limit)
        return build_resnet(depth, FLAGS.zoo_dir), data.all_x, data.test_y, data.is_test, data.real_calibration(256)
    return Case(f"ResNet-{depth} (CIFAR-10)", load)


def _mlperf_case(name: str, title: str) -> Case:
    def load():
        from benchmarks.zoo import mlperf
        model = mlperf.load_model(name, FLAGS.zoo_dir)
        test_x, test_y = mlperf.eval_images(name, FLAGS.zoo_dir, "test")
        train_x, _ = mlperf.eval_images(name, FLAGS.zoo_dir, "train")
        x = np.concatenate([test_x, train_x])
        is_test = np.arange(len(x)) < len(test_x)
        if FLAGS.eval_limit and FLAGS.eval_limit < len(x):
            idx = np.linspace(0, len(x) - 1, FLAGS.eval_limit).astype(int)
            x, is_test = x[idx], is_test[idx]
            test_y = test_y[idx[is_test]]
        return model, x, test_y, is_test, train_x[:256]

    def reference():
        from benchmarks.zoo import mlperf
        return mlperf.reference_tflite(name, FLAGS.zoo_dir)
    return Case(title, load, labels_meaningful=name == "ic_resnet8", reference=reference)


def _fashion_case(kind: str, title: str) -> Case:
    def load():
        from benchmarks.zoo import fashion
        model = fashion.trained_model(kind)
        x, y = fashion.eval_images(kind, "test")
        if FLAGS.eval_limit and FLAGS.eval_limit < len(x):
            idx = np.linspace(0, len(x) - 1, FLAGS.eval_limit).astype(int)
            x, y = x[idx], y[idx]
        train_x, _ = fashion.eval_images(kind, "train")
        return model, x, y, np.ones(len(x), bool), train_x[:256]
    return Case(title, load)


def _family_case(module: str, kind: str, title: str) -> Case:
    """A Fashion-MNIST model of a family nobody tuned on (benchmarks/zoo/families.py, fashion_attention.py)."""
    def load():
        import importlib
        from benchmarks.zoo import fashion
        mod = importlib.import_module(f"benchmarks.zoo.{module}")
        model = mod.trained_model(kind)
        conv = getattr(mod, "to_input", lambda _k, p: p)
        x, y = fashion.load_fashion_mnist("test")
        if FLAGS.eval_limit and FLAGS.eval_limit < len(x):
            idx = np.linspace(0, len(x) - 1, FLAGS.eval_limit).astype(int)
            x, y = x[idx], y[idx]
        train_x, _ = fashion.load_fashion_mnist("train")
        return model, conv(kind, x), y, np.ones(len(x), bool), conv(kind, train_x[:256])
    flags_ = getattr(__import__(f"benchmarks.zoo.{module}", fromlist=["x"]), "INPUT_FLAGS", {}).get(kind)
    return Case(title, load, input_flags=flags_)


CASES: Dict[str, Case] = {
    "resnet20": _cifar_case(20),
    "resnet32": _cifar_case(32),
    "resnet44": _cifar_case(44),
    "resnet56": _cifar_case(56),
    "ic_resnet8": _mlperf_case("ic_resnet8", "MLPerf IC ResNet-8 (raw 0..255, softmax)"),
    "vww": _mlperf_case("vww_mobilenetv1_96", "MLPerf VWW MobileNetV1 (Keras 2 .h5, [0, 1])"),
    "fashion_dw_bn": _fashion_case("dw_bn", "Fashion-MNIST depthwise+BN ([0, 1], logits)"),
    "fashion_cnn_nobn": _fashion_case("cnn_nobn", "Fashion-MNIST CNN, no BN (raw 0..255, softmax)"),
    "res_raw_bn": _family_case("families", "res_raw_bn", "Fashion residual+BN (raw 0..255, logits)"),
    "dense_bn_softmax": _family_case("families", "dense_bn_softmax", "Fashion dense head+BN ([0, 1], softmax)"),
    "dw_bn_rescale": _family_case("families", "dw_bn_rescale", "Fashion depthwise+BN (Rescaling, ReLU6)"),
    "vgg_nobn_norm": _family_case("families", "vgg_nobn_norm", "Fashion VGG, no BN (normalized input, flags)"),
    "silu_se_bn": _family_case("families", "silu_se_bn", "Fashion SiLU+SE+BN ([-1, 1] Rescaling)"),
    "vit": _family_case("fashion_attention", "vit", "Fashion tiny ViT (LayerNorm, attention, no BN)"),
    "conv_attn": _family_case("fashion_attention", "conv_attn", "Fashion conv+attention (BN stem)"),
}


SOURCES = ("real", "gaussian", "zeroq", "retro", "retro, no logit widening", "retro (before)")


def _sources(quick: bool):
    """(name, config or None for real images, logit_range) of every source FLAGS.sources selects."""
    import tflite_retroq as rq
    small = {"images": 32, "iterations": 5} if quick else {}
    all_sources = [
        ("real", None, "auto"),
        ("gaussian", rq.SynthesisConfig(mode="gaussian", **small), "auto"),
        ("zeroq", rq.SynthesisConfig(mode="zeroq", **small), "auto"),
        ("retro", rq.SynthesisConfig(mode="retro", **small), "auto"),
        ("retro, no logit widening", rq.SynthesisConfig(mode="retro", **small), "calibrated"),
        # The previous round's defaults: an MSE towards soft targets (p = 0.9-0.99), no smoothness prior.
        ("retro (before)", rq.SynthesisConfig(mode="retro", class_loss="mse", target_confidence=(0.9, 0.99),
                                              smooth_weight=0.0, **small), "calibrated"),
    ]
    unknown = set(FLAGS.sources or ()) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; choose from {SOURCES}")
    return [s for s in all_sources if FLAGS.sources is None or s[0] in FLAGS.sources or s[0] == "real"]


def _evaluate(tfl: bytes, x, test_y, is_test, ref, labels_meaningful: bool) -> Dict:
    from tflite_retroq.evaluate import compare, run_tflite
    out = run_tflite(tfl, x, batch_size=128)
    r = compare(out, None, ref)
    acc = float(np.mean(np.argmax(out[is_test], 1) == test_y) * 100) if labels_meaningful else None
    return {"top1": acc, "agreement": r.agreement, "sqnr_db": r.sqnr_db}


def run_case(key: str, case: Case, quick: bool) -> List[Dict]:
    import tflite_retroq as rq
    from tflite_retroq.evaluate import keras_outputs
    common.log(f"{case.name}: loading")
    model, x, test_y, is_test, real = case.load()
    ref = keras_outputs(model, x)
    fp32 = float(np.mean(np.argmax(ref[is_test], 1) == test_y) * 100) if case.labels_meaningful else None
    rows = [{"model": case.name, "source": "float32 Keras", "top1": fp32, "agreement": 100.0}]
    if case.reference is not None:
        rows.append(dict({"model": case.name, "source": "MLPerf int8 (real images)"},
                         **_evaluate(case.reference(), x, test_y, is_test, ref, case.labels_meaningful)))
    real_cal = None
    for name, cfg, logit_range in _sources(quick):
        t0 = time.perf_counter()
        if cfg is None:
            data = rq.SyntheticDataset.from_images(real[:32] if quick else real)
        else:
            spec = rq.InputSpec(**case.input_flags) if case.input_flags else None
            data = rq.synthesize(model, cfg, input_spec=spec, progress=False)
        synth_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tfl = rq.convert(model, data, logit_range=logit_range)
        convert_s = time.perf_counter() - t0
        plain = rq.calibrate(model, data, logit_range="calibrated")  # what any min/max tool sees in the data
        real_cal = plain if cfg is None else real_cal
        row = {"model": case.name, "source": name, "synthesis_s": round(synth_s, 1),
               "convert_s": round(convert_s, 1), "images": len(data)}
        plan = data.metadata.get("plan") or {}
        row["iterations"] = plan.get("iterations")
        row.update(_evaluate(tfl, x, test_y, is_test, ref, case.labels_meaningful))
        row.update(range_fidelity.fidelity(plain, real_cal))
        if cfg is not None:
            row["input_space"] = data.metadata["input_space"]["source"].split(" -> ")[-1][:60]
        rows.append(row)
        common.log(f"  {name}: {row}")
    return rows


NOTES = (
    "W8A8 per-channel, int8 I/O. No input flags were given, except where a model states nothing about its input "
    "(the VGG on normalized input gets --input-mean/--input-std as a user would): the input space column is what "
    "the tool detected (preprocessing layers) or inferred (first BatchNorm's running statistics). agreement = top-1 "
    "agreement with the float Keras model, sqnr_db = output SQNR vs float, both on every evaluation image; top1 only "
    "where labels mean something (VWW is evaluated on resized CIFAR images). `retro (before)` is the previous "
    "round's default objective (an MSE towards soft targets p = 0.9-0.99, no smoothness prior) with today's work "
    "plan. synthesis_s includes compilation; the machine was shared, timings are rough. range_* = range fidelity "
    "(benchmarks/range_fidelity.py): per activation tensor of the plainly min/max-calibrated float model, the "
    "source's range width over real images' (1 = same scale as real data); median over tensors, worst (furthest "
    "from 1), at the classifier's input features (the global pool where there is one) and at the logits. It "
    "measures the data alone: no logits-range pass is applied to it, whatever the row's converter setting.")
COLUMNS = ["model", "source", "top1", "agreement", "sqnr_db", "range_median", "range_worst", "range_features",
           "range_logits", "images", "iterations", "synthesis_s", "convert_s", "input_space"]


def summary(rows: List[Dict]) -> List[Dict]:
    """One line per model: SQNR per source, retro's gap to real, whether retro >= gaussian, retro's range fidelity."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["source"]: r for r in rows if r["model"] == model}
        if "retro" not in by or "real" not in by:
            continue
        retro, real, gauss = by["retro"], by["real"], by.get("gaussian")
        out.append({"model": model, "real": real["sqnr_db"], "gaussian": gauss and gauss["sqnr_db"],
                    "retro": retro["sqnr_db"], "retro (before)": by.get("retro (before)", {}).get("sqnr_db"),
                    "retro - real": retro["sqnr_db"] - real["sqnr_db"],
                    "within 1 dB": retro["sqnr_db"] >= real["sqnr_db"] - 1.0,
                    "retro >= gaussian": None if gauss is None else retro["sqnr_db"] >= gauss["sqnr_db"],
                    "range_logits": retro.get("range_logits"), "range_features": retro.get("range_features"),
                    "plan": f"{retro.get('images')} x {retro.get('iterations')}",
                    "synthesis_s": retro.get("synthesis_s"), "convert_s": retro.get("convert_s")})
    return out


SUMMARY_COLUMNS = ["model", "real", "gaussian", "retro", "retro (before)", "retro - real", "within 1 dB",
                   "retro >= gaussian", "range_logits", "range_features", "plan", "synthesis_s", "convert_s"]


def write(name: str, rows: List[Dict], started: float) -> None:
    from benchmarks.common import markdown_table
    summ = summary(rows)
    within = sum(bool(r["within 1 dB"]) for r in summ)
    above = sum(bool(r["retro >= gaussian"]) for r in summ if r["retro >= gaussian"] is not None)
    head = (f"## Summary (output SQNR vs float, dB)\n\nretro within 1 dB of real on {within} of {len(summ)} models; "
            f"retro >= gaussian on {above} of {sum(r['retro >= gaussian'] is not None for r in summ)}.\n\n"
            + markdown_table(summ, SUMMARY_COLUMNS))
    common.write_results(FLAGS.out, name, "Calibration sources on every model we have (W8A8 per-channel)", rows,
                         COLUMNS, params={"quick": FLAGS.quick, "eval_limit": FLAGS.eval_limit,
                                          "defaults": __import__("tflite_retroq").SynthesisConfig().to_dict()},
                         notes=NOTES, extra_md=head, started=started, extra={"summary": summ})


def main(argv):
    del argv
    started = time.perf_counter()
    name = FLAGS.name or ("zoo_models_quick" if FLAGS.quick else "zoo_models")
    if FLAGS.combine:  # one table from several runs (run in parallel to finish in time)
        import json
        rows = []
        for part in FLAGS.combine:  # a (model, source) row already taken from an earlier part is not repeated
            seen = {(r["model"], r["source"]) for r in rows}
            rows += [r for r in json.load(open(f"{FLAGS.out}/{part}.json"))["rows"]
                     if (r["model"], r["source"]) not in seen]
        if FLAGS.before_from:  # a model run without "retro (before)": the previous round's retro row stands for it
            have = {r["model"] for r in rows if r["source"] == "retro (before)"}
            for r in json.load(open(f"{FLAGS.out}/{FLAGS.before_from}.json"))["rows"]:
                if r["source"] == "retro" and r["model"] not in have and any(q["model"] == r["model"] for q in rows):
                    rows.append(dict(r, source="retro (before)", note=f"from {FLAGS.before_from}.json"))
        write(name, rows, started)
        return
    keys = FLAGS.models or (["ic_resnet8", "fashion_cnn_nobn"] if FLAGS.quick else list(CASES))
    rows: List[Dict] = []
    for key in keys:
        rows += run_case(key, CASES[key], FLAGS.quick)
        write(name, rows, started)  # after every model: a stopped run keeps what it finished


if __name__ == "__main__":
    app.run(main)
