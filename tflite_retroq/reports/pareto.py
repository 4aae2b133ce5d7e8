"""The size frontier: planned files checked on held-out images, and what `retroq analyze --pareto` writes
(agreement with float vs file size as JSON, Markdown and PNG)."""
from __future__ import annotations

import datetime
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tflite_retroq.io_utils import atomic_path, to_json

FILES = ("pareto.json", "pareto.md", "pareto.png")


def holdout_check(model, twin: bytes, images: np.ndarray) -> Dict:
    """Agreement (top-1 match) and mean KL of the int8 twin against the float model on held-out images."""
    from tflite_retroq.evaluate import keras_outputs, mean_kl, run_tflite
    from tflite_retroq.model.prepared import keras_model
    ref = keras_outputs(keras_model(model), images)
    out = run_tflite(twin, images)
    return {"images": int(len(images)), "agreement": float(np.mean(ref.argmax(1) == out.argmax(1))),
            "mean_kl": float(mean_kl(ref, out))}


def frontier(model, runs: Sequence[Tuple[object, bytes, bytes]], holdout: np.ndarray) -> List[Dict]:
    """One point per planned file: its size, widths and agreement with float on held-out images;
    `pareto` marks the points no other point beats on both size and agreement."""
    points = []
    for plan, f, twin in runs:
        counts: Dict[str, int] = {}
        for _, b in plan.widths:
            counts[f"W{b}"] = counts.get(f"W{b}", 0) + 1
        points.append({"budget_bytes": plan.budget_bytes, "file_bytes": len(f), "widths": counts,
                       "predicted_cost": plan.predicted_cost, **{f"holdout_{k}": v for k, v in
                                                                 holdout_check(model, twin, holdout).items()}})
    for p in points:
        p["pareto"] = not any(q is not p and q["file_bytes"] <= p["file_bytes"]
                              and q["holdout_agreement"] >= p["holdout_agreement"]
                              and (q["file_bytes"], -q["holdout_agreement"]) != (p["file_bytes"], -p["holdout_agreement"])
                              for q in points)
    return sorted(points, key=lambda p: p["file_bytes"])


def pareto_document(points: List[Dict], *, model_path: str, storage: str, w8_bytes: int, version: str,
                    data_source: Dict, holdout_images: int) -> Dict:
    return {"tool": "retroq", "version": version, "command": "analyze --pareto",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model_path, "data": data_source, "storage": storage, "w8_bytes": w8_bytes,
            "holdout_images": holdout_images, "points": points}


def markdown(doc: Dict, title: str) -> str:
    lines = [f"# {title}", "",
             f"Per-layer widths planned under each budget (KL of each layer alone at W8/W6/W4 on the synthetic "
             f"images, exact knapsack), {doc['storage']} storage; agreement = top-1 match with the float model on "
             f"{doc['holdout_images']} held-out synthetic images (another seed). W8 file: {doc['w8_bytes']} bytes.", "",
             "| file bytes | x W8 | widths | agreement | mean KL | Pareto |", "|---:|---:|---|---:|---:|:-:|"]
    for p in doc["points"]:
        widths = ", ".join(f"{n} x {w}" for w, n in sorted(p["widths"].items(), reverse=True))
        lines.append(f"| {p['file_bytes']} | {p['file_bytes'] / doc['w8_bytes']:.3f} | {widths} | "
                     f"{100 * p['holdout_agreement']:.1f} % | {p['holdout_mean_kl']:.3g} | "
                     f"{'*' if p['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def plot_frontier(series: Dict[str, Sequence[Dict]], path_or_file, title: str = "",
                  key: str = "holdout_agreement", ylabel: str = "agreement with float (held-out synthetic)") -> None:
    """Agreement (or any `key` of the points) against file size, one line per series."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in series.items():
        pts = sorted(pts, key=lambda p: p["file_bytes"])
        ax.plot([p["file_bytes"] / 1024 for p in pts], [100 * p[key] for p in pts], "o-", label=name)
    ax.set_xlabel("file size (KiB)")
    ax.set_ylabel(f"{ylabel} (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_or_file, dpi=120, format="png")
    plt.close(fig)


def pareto_paths(out_dir: str) -> List[str]:
    return [os.path.join(out_dir, f) for f in FILES]


def write_pareto(out_dir: str, doc: Dict, title: str) -> List[str]:
    """pareto.json / .md / .png in an existing `out_dir`, all written to temporaries before any is renamed."""
    paths = pareto_paths(out_dir)
    with atomic_path(paths[0]) as t_json, atomic_path(paths[1]) as t_md, atomic_path(paths[2]) as t_png:
        with open(t_json, "w", encoding="utf-8") as f:
            f.write(to_json(doc))
        with open(t_md, "w", encoding="utf-8") as f:
            f.write(markdown(doc, title))
        plot_frontier({"synthetic held-out": doc["points"]}, t_png, title)
    return paths
