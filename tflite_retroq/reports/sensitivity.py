"""What `retroq analyze` writes: the per-layer table as JSON and Markdown, and the plots.

`plot_sensitivity` is the paper's Fig. 4 (per-layer KL of per-tensor vs per-channel weights,
with the layers the Th=0 rule makes per-channel marked); `plot_fidelity` is its Fig. 5 (the
per-layer curve measured with each data source, and its Spearman correlation with real data).
"""
from __future__ import annotations

import datetime
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tflite_retroq.errors import OutputError
from tflite_retroq.io_utils import atomic_path, check_not_inputs, check_writable, same_file, to_json
from tflite_retroq.methods.plan import HybridPlan, SensitivityResult

FILES = ("sensitivity.json", "sensitivity.md", "sensitivity.png")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _g(v: float) -> str:
    return f"{v:.3g}"


def markdown(result: SensitivityResult, plan: HybridPlan, title: str = "Per-layer sensitivity") -> str:
    """The per-layer table: name, op, KL per-tensor, KL per-channel, difference, chosen scheme."""
    scheme = {n: s for n, _, s, _ in plan.decisions}
    lines = [f"# {title}", "",
             f"KL(softmax FP32 || softmax with only this layer's weights quantized, W{result.weight_bits}) on "
             f"{result.num_images} {result.data_source} images. Scheme by the rule per-channel iff "
             f"KL_PT - KL_PC > {plan.config.threshold:g}"
             + (f", at most {plan.config.max_per_channel} layers" if plan.config.max_per_channel is not None else "")
             + (", FULLY_CONNECTED kept per-tensor" if plan.config.fully_connected_per_tensor else "") + ": "
             f"**{len(plan.per_channel)} of {plan.num_layers} layers per-channel**.", "",
             f"Analysis {result.seconds:.2f} s ({result.method}); one float pass {result.full_pass_seconds:.3f} s; "
             f"naive 2L full passes {result.naive_seconds:.2f} s "
             f"({'measured' if result.method == 'naive' else 'estimated'}), speedup {result.speedup:.2f}x.", "",
             "| # | layer | op | channels | range max/min | KL per-tensor | KL per-channel | difference | scheme |",
             "|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for l in result.layers:
        lines.append(f"| {l.index} | {l.name} | {l.kind} | {l.channels} | {_g(l.range_ratio)} | {_g(l.kl_per_tensor)} "
                     f"| {_g(l.kl_per_channel)} | {_g(l.difference)} | {scheme.get(l.name, '-')} |")
    return "\n".join(lines) + "\n"


def plot_sensitivity(result: SensitivityResult, plan: Optional[HybridPlan], path_or_file, title: str = "") -> None:
    """Fig. 4: KL per layer, per-tensor vs per-channel (log scale); per-channel picks marked."""
    plt = _plt()
    x = np.arange(len(result.layers))
    pt = np.array([max(l.kl_per_tensor, 1e-12) for l in result.layers])
    pc = np.array([max(l.kl_per_channel, 1e-12) for l in result.layers])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(x) + 2), 3.6))
    ax.plot(x, pt, "o-", ms=3.5, lw=1.2, label="per-tensor")
    ax.plot(x, pc, "s-", ms=3.5, lw=1.2, label="per-channel")
    if plan is not None and plan.per_channel:
        chosen = [i for i, l in enumerate(result.layers) if l.name in set(plan.per_channel)]
        ax.scatter(chosen, pt[chosen], s=70, facecolors="none", edgecolors="red", linewidths=1.2,
                   label=f"made per-channel ({len(chosen)})", zorder=3)
    ax.set_yscale("log")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel(f"KL vs FP32 (W{result.weight_bits})")
    ax.set_title(title or f"Per-layer sensitivity ({result.num_images} {result.data_source} images)", fontsize=9)
    if len(x) <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([l.name for l in result.layers], rotation=90, fontsize=6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_or_file, dpi=110, format="png")
    plt.close(fig)


def plot_fidelity(results: Dict[str, SensitivityResult], rho: Dict[str, Dict[str, float]], path_or_file,
                  title: str = "", key: str = "kl_per_tensor") -> None:
    """Fig. 5: the per-layer curve from each data source, Spearman rho vs real data in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    for src, res in results.items():
        y = np.array([max(getattr(l, key), 1e-12) for l in res.layers])
        r = rho.get(src, {}).get(key)
        label = src if r is None or src == "real" else f"{src} (rho {r:.2f})"
        ax.plot(np.arange(len(y)), y, "o-" if src == "real" else ".-", ms=3, lw=1.6 if src == "real" else 1.0,
                label=label, color="black" if src == "real" else None)
    ax.set_yscale("log")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title or "Per-layer sensitivity by calibration data source", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_or_file, dpi=110, format="png")
    plt.close(fig)


def analysis_document(result: SensitivityResult, plan: HybridPlan, *, model_path: str, data_source: Dict,
                      version: str) -> Dict:
    """The JSON `retroq analyze` writes: the sensitivity table plus the Th=0 plan."""
    return {"tool": "retroq", "version": version, "command": "analyze",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model_path, "data": data_source, "sensitivity": result.to_dict(), "plan": plan.to_dict()}


def analysis_paths(out_dir: str) -> List[str]:
    return [os.path.join(out_dir, f) for f in FILES]


def check_analysis_outputs(out_dir: str, inputs: Sequence[Tuple[str, Optional[str]]] = ()) -> List[str]:
    """The three outputs are writable regular files, none of them resolves to an input (symlinks and hard
    links included), and no two of them are one file."""
    paths = analysis_paths(out_dir)
    for i, p in enumerate(paths):
        if os.path.isdir(out_dir):
            check_writable(p)
        check_not_inputs(p, inputs)
        for q in paths[:i]:
            if same_file(p, q):
                raise OutputError(f"{p!r} and {q!r} are the same file (a link); remove the link or choose "
                                  "another -o directory.")
    return paths


def write_analysis(out_dir: str, result: SensitivityResult, plan: HybridPlan, document: Dict,
                   title: str = "Per-layer sensitivity", inputs: Sequence[Tuple[str, Optional[str]]] = ()
                   ) -> List[str]:
    """sensitivity.json / .md / .png in `out_dir`, all written to temporaries before any is renamed.

    `inputs` are `(description, path)` pairs (the model, the dataset) that no output may resolve to."""
    check_analysis_outputs(out_dir, inputs)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"Output {out_dir!r} is a file; `retroq analyze -o` takes a directory.")
    if not os.path.isdir(out_dir):
        parent = os.path.dirname(os.path.abspath(out_dir))
        if not os.path.isdir(parent):
            raise OutputError(f"Cannot create {out_dir!r}: directory {parent!r} does not exist; create it first.")
        try:
            os.mkdir(out_dir)
        except OSError as e:
            raise OutputError(f"Cannot create {out_dir!r}: {e.strerror}.") from None
    paths = analysis_paths(out_dir)
    text_json, text_md = to_json(document), markdown(result, plan, title)
    with atomic_path(paths[0]) as t_json, atomic_path(paths[1]) as t_md, atomic_path(paths[2]) as t_png:
        with open(t_json, "w", encoding="utf-8") as f:
            f.write(text_json)
        with open(t_md, "w", encoding="utf-8") as f:
            f.write(text_md)
        plot_sensitivity(result, plan, t_png, title)
    return paths
