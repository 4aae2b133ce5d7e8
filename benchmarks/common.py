"""Shared helpers for the benchmark scripts: zoo data, evaluation, result writing.

Every script writes ``<out>/<name>.json`` (machine-readable rows plus the exact
command line, date and machine note) and ``<out>/<name>.md`` (the same rows as a
Markdown table) through :func:`write_results`.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tflite_retroq.evaluate import keras_outputs  # noqa: E402
from tflite_retroq.io_utils import write_text  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZOO = str((REPO_ROOT / ".." / "shared" / "zoo").resolve())
DEFAULT_OUT = str(REPO_ROOT / "benchmarks" / "results")
WEIGHT_BITS = (8, 6, 4)


def machine_note() -> str:
    return (f"{os.cpu_count()} CPU cores (shared with other jobs; timings are noisy, compare ratios "
            f"measured in the same run), {platform.machine()}, Python {platform.python_version()}, "
            f"TF {_tf_version()}")


def _tf_version() -> str:
    try:
        import tensorflow as tf
        return tf.__version__
    except Exception:  # pragma: no cover
        return "?"


def command_line() -> str:
    """The command as typed from the repository root (`python -m benchmarks.x ...` kept as such)."""
    argv0 = Path(sys.argv[0]).resolve()
    head = [sys.argv[0]]
    if argv0.suffix == ".py" and REPO_ROOT in argv0.parents:
        head = ["-m", ".".join(argv0.relative_to(REPO_ROOT).with_suffix("").parts)]
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO_ROOT)] + head + sys.argv[1:])


# --------------------------------------------------------------------------- data
class EvalData:
    """All 6102 zoo images (test_first1017 then train_subset5085) for agreement / SQNR;
    accuracy on the test images among them. `limit` keeps an evenly spaced subset."""

    def __init__(self, zoo_dir: str, limit: Optional[int] = None):
        from benchmarks.zoo.cifar_resnet import load_cifar
        test_x, test_y = load_cifar(zoo_dir, "test")
        self.train_x, self.train_y = load_cifar(zoo_dir, "train")
        all_x = np.concatenate([test_x, self.train_x])
        idx = np.arange(len(all_x))
        if limit and limit < len(all_x):
            idx = np.linspace(0, len(all_x) - 1, num=limit).astype(int)
        self.all_x = all_x[idx]
        self.is_test = idx < len(test_x)
        self.test_y = test_y[idx[self.is_test]]
        self.n_test = int(self.is_test.sum())
        self.full_test_x, self.full_test_y = test_x, test_y

    def real_calibration(self, n: int = 256) -> np.ndarray:
        """The first `n` images of train_subset5085 (the real-data calibration baseline)."""
        return self.train_x[:n]


# --------------------------------------------------------------------------- metrics
def fp32_reference(model, data: EvalData) -> Dict:
    ref_all = keras_outputs(model, data.all_x)
    acc = float(np.mean(np.argmax(ref_all[data.is_test], 1) == data.test_y) * 100.0)
    if data.n_test == len(data.full_test_y):
        acc_full = acc
    else:
        acc_full = float(np.mean(np.argmax(keras_outputs(model, data.full_test_x), 1) == data.full_test_y) * 100)
    return {"all": ref_all, "accuracy": acc, "accuracy_full_test": acc_full}


def evaluate_tflite(tfl: bytes, data: EvalData, ref: Dict, batch_size: int = 128) -> Dict:
    """Accuracy on the test images; agreement, logit SQNR and KL vs FP32 on all images."""
    from tflite_retroq.evaluate import compare, run_tflite
    out_all = run_tflite(tfl, data.all_x, batch_size=batch_size, num_threads=os.cpu_count())
    r = compare(out_all, None, ref["all"])
    acc = float(np.mean(np.argmax(out_all[data.is_test], 1) == data.test_y) * 100.0)
    return {"accuracy": acc, "agreement": r.agreement, "sqnr_db": r.sqnr_db, "kl": r.kl}


def quantize_variants(model, calib, bits: Sequence[int] = WEIGHT_BITS, scheme: str = "per-channel"):
    """Calibrate once, quantize at each weight width. Returns ([(bits, tflite bytes)], calibration s)."""
    import tflite_retroq as rq
    t0 = time.perf_counter()
    cal = rq.calibrate(model, calib)
    t_cal = time.perf_counter() - t0
    return [(b, rq.convert(model, None, scheme=scheme, weight_bits=b, calibrated=cal)) for b in bits], t_cal


# --------------------------------------------------------------------------- output
def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.4f}"
    return str(v)


def markdown_table(rows: List[Dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _json_safe(o):
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


def write_results(out_dir: str, name: str, title: str, rows: List[Dict], columns: Sequence[str], *,
                  params: Optional[Dict] = None, notes: str = "", extra_md: str = "",
                  started: Optional[float] = None, extra: Optional[Dict] = None) -> Dict[str, str]:
    """Write <out_dir>/<name>.json and <name>.md; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": name, "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_note(), "params": params or {},
    }
    if started is not None:
        meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    doc = dict(meta, rows=rows, notes=notes, **(extra or {}))
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    write_text(str(jpath), json.dumps(_json_safe(doc), indent=2) + "\n")
    md = [f"# {title}", "", f"- command: `{meta['command']}`", f"- date: {meta['date']}",
          f"- machine: {meta['machine']}"]
    if "wall_seconds" in meta:
        md.append(f"- wall time: {meta['wall_seconds']} s")
    if params:
        md.append("- params: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    md += ["", markdown_table(rows, columns), ""]
    if notes:
        md += [notes.strip(), ""]
    if extra_md:
        md += [extra_md.strip(), ""]
    write_text(str(mpath), "\n".join(md))
    return {"json": str(jpath), "md": str(mpath)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- rates
def bare_rate(tf, model, batch: int, steps: int, fn_cache: dict) -> float:
    """Image-iterations/s of a compiled forward+backward w.r.t. the input (the bound)."""
    import numpy as np
    key = (id(model), batch)
    if key not in fn_cache:
        shape = (batch,) + tuple(int(d) for d in model.inputs[0].shape[1:])
        z = tf.Variable(np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32))

        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = tf.reduce_sum(tf.square(model(z, training=False)))
            g = tape.gradient(loss, z)
            z.assign_sub(1e-6 * g)  # consume the gradient, like the Adam update does
            return loss

        float(step())  # compile
        fn_cache[key] = step
    step = fn_cache[key]
    t0 = time.perf_counter()
    for _ in range(steps):
        float(step())  # host sync per step, as synthesis does
    return batch * steps / (time.perf_counter() - t0)
