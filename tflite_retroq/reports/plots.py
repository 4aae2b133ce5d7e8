"""PNG plots people would rather look at than numbers: synthesized images and loss curves.

matplotlib is imported lazily with the Agg backend, so plotting works headless.
"""
from __future__ import annotations

import textwrap
from typing import Optional

import numpy as np

from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.io_utils import write_with


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _displayable(images: np.ndarray, lo: Optional[np.ndarray], hi: Optional[np.ndarray]) -> np.ndarray:
    """Map images to [0, 1] for display, using the valid range when known."""
    if lo is None:
        lo, hi = images.min(axis=(0, 1, 2)), images.max(axis=(0, 1, 2))
    out = (images - np.asarray(lo)) / np.maximum(np.asarray(hi) - np.asarray(lo), 1e-12)
    out = np.clip(out, 0, 1)
    return out[..., 0] if out.shape[-1] == 1 else out[..., :3]


def _range_caption(lo, hi, images: np.ndarray) -> str:
    """What the grey levels / colours mean: the model's pixel range, or the stretch used when none is known."""
    if lo is not None:
        los, his = np.unique(np.asarray(lo)), np.unique(np.asarray(hi))
        span = (f"[{los[0]:g}, {his[0]:g}]" if los.size == 1 and his.size == 1
                else f"[{'/'.join(f'{v:g}' for v in np.ravel(lo))}, {'/'.join(f'{v:g}' for v in np.ravel(hi))}]")
        return f"black..white = the model's pixel range {span}"
    return (f"no pixel range known: each channel stretched from its min to its max "
            f"([{float(images.min()):.3g}, {float(images.max()):.3g}] in the model's input space)")


def plot_images(data: SyntheticDataset, path: str, per_class: int = 4) -> str:
    """A grid of synthetic images: one row per target class (at most 10 rows), `per_class` images each;
    gaussian data has no classes, so its rows are plain samples. The caption says what the pixel
    values are (the model's input range, or the stretch used when the model states none)."""
    plt = _plt()
    space = data.metadata.get("input_space", {})
    space = space if isinstance(space, dict) else {}
    lo = np.asarray(space["lo"]) if space.get("lo") is not None else None
    hi = np.asarray(space["hi"]) if space.get("hi") is not None else None
    by_class = data.mode != "gaussian"  # gaussian images are noise: the labels mean nothing
    if by_class:
        rows = [np.flatnonzero(data.labels == c)[:per_class] for c in np.unique(data.labels)[:10]]
        names = [f"class {c}" for c in np.unique(data.labels)[:10]]
    else:
        n_rows = min(10, -(-len(data) // per_class))
        rows = [np.arange(r * per_class, min((r + 1) * per_class, len(data))) for r in range(n_rows)]
        names = [""] * n_rows
    fig, axes = plt.subplots(len(rows), per_class, figsize=(1.3 * per_class + 0.6, 1.2 * len(rows) + 0.8),
                             squeeze=False)
    for r, idx in enumerate(rows):
        imgs = _displayable(data.images[idx], lo, hi)
        for k in range(per_class):
            ax = axes[r][k]
            ax.axis("off")
            if k < len(imgs):
                ax.imshow(imgs[k], cmap="gray" if imgs[k].ndim == 2 else None, vmin=0, vmax=1)
        if names[r]:
            axes[r][0].set_title(names[r], fontsize=7, loc="left")
    what = "rows: the class each image was pushed towards" if by_class else "plain Gaussian samples, no classes"
    fig.suptitle(f"{data.mode} synthetic calibration images ({len(data)} in all; {what})", fontsize=8, wrap=True)
    fig.text(0.5, 0.005, _range_caption(lo, hi, data.images), ha="center", va="bottom", fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def plot_losses(data: SyntheticDataset, path: str) -> str:
    """Loss curves of the synthesis run (total and each term), log scale."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    absent = {"class"} if data.mode == "zeroq" else set()  # zeroq has no class loss: no curve for it
    for name, values in data.loss_history.items():
        if name not in absent and values and np.any(np.asarray(values) > 0):
            ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("optimization step (iteration)")
    ax.set_ylabel("loss (log scale, unitless)")
    ax.set_title(f"{data.mode} synthesis: loss terms per step (mean over all images)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def plot_weight_levels(panels, path: Optional[str] = None, title: str = ""):
    """Weight histograms with quantization levels drawn over them (like the paper's Fig. 3).

    `panels`: list of (panel title, float weights, {label: levels}, (low fence, high fence) or None).
    Writes a PNG when `path` is given, else returns the figure (notebooks show it).
    """
    plt = _plt()
    colors = ["tab:red", "tab:gray", "tab:green", "tab:purple"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), squeeze=False)
    for ax, (name, w, levels, fences) in zip(axes[:, 0], panels):
        w = np.asarray(w, np.float64).ravel()
        ax.hist(w, bins=200, color="tab:blue", alpha=0.6)
        ax.set_yscale("log")
        top = ax.get_ylim()[1]
        for i, (label, lv) in enumerate(levels.items()):
            lv = np.asarray(lv, np.float64).ravel()
            style = "-" if i == 0 else "--" if i == 1 else ":"
            ax.vlines(lv, 0.5, top, colors=colors[i % len(colors)], linestyles=style, linewidth=0.8,
                      label=f"{label} ({len(np.unique(lv))})")
        if fences is not None:
            for f in fences:
                ax.axvline(f, color="black", linewidth=1.2)
        ax.set_title(textwrap.fill(str(name), 120), fontsize=7, loc="left")  # fused-op names are long: wrap, never cut
        ax.set_xlabel("weight value (float, after BatchNorm folding)", fontsize=7)
        ax.set_ylabel("weights per bin (log)", fontsize=7)
        ax.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is None:
        return fig
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
