"""Memory accounting for synthesis: how much one image costs, how much we may use.

The batch size is chosen from these numbers before anything is allocated, so the
peak does not grow with the class count or the image budget beyond one batch, and a
request that cannot fit is refused with one line instead of an allocator crash.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

ENV_BUDGET = "RETROQ_MEMORY_BUDGET_MB"
# Bytes held per activation element during one compiled forward+backward step: the float32
# activation kept for the backward pass, its gradient, and XLA temporaries. Measured on
# MobileNetV2 / ResNet-20 / ResNet-8 (see benchmarks/results/scale.md); a cost model, not a quality knob.
BYTES_PER_ACTIVATION = 16
MAX_BUDGET = 4 << 30  # leave room for TensorFlow itself: peak RSS stays well under 8 GB
# Automatic batch sizes are planned against this fixed budget (not the free memory of the moment), so a
# model gets the same batches on every machine that has it; a smaller budget shrinks them.
REFERENCE_BUDGET = 2 << 30


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    """MemAvailable, bounded by a cgroup (container) limit when there is one."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limit, usage = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        avail = min(avail, limit - usage) if avail is not None else limit - usage
    return int(avail) if avail is not None else 8 << 30  # unknown platform: assume a modest machine


def memory_budget() -> int:
    """Bytes synthesis may use: $RETROQ_MEMORY_BUDGET_MB if set, else half the available memory, at most 4 GiB."""
    env = os.environ.get(ENV_BUDGET)
    if env is not None and env.strip():
        try:
            mb = float(env)
        except ValueError:
            mb = float("nan")
        if not math.isfinite(mb) or mb <= 0 or mb * (1 << 20) >= 2 ** 62:
            from tflite_retroq.errors import ConfigError
            raise ConfigError(f"{ENV_BUDGET}={env!r} must be a positive number of megabytes (e.g. 2048); set it to "
                              "the memory synthesis may use, or unset it to use half the free memory.")
        return max(1, int(mb * (1 << 20)))
    return int(min(available_bytes() // 2, MAX_BUDGET))


def budget_words(budget: int) -> str:
    """The budget and where it comes from, for messages: the variable is named when the user set it."""
    env = os.environ.get(ENV_BUDGET)
    origin = f" ({ENV_BUDGET}={env.strip()})" if env and env.strip() else ""
    return f"{fmt_bytes(budget)} memory budget{origin}"


def _fixed_outputs(model):
    """(layer, node, per-image output elements) of every layer call whose output shape is fixed."""
    import keras
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for t in node.output_tensors:
                shape = tuple(t.shape)[1:]
                if all(isinstance(d, int) for d in shape):
                    yield layer, node, int(np.prod(shape)) if shape else 1


def activation_elements(model) -> int:
    """Elements of every layer output for one image (nested models counted through their layers)."""
    return sum(out for _, _, out in _fixed_outputs(model))


def activation_bytes_per_image(model) -> int:
    return max(1, activation_elements(model)) * BYTES_PER_ACTIVATION


def forward_flops(model) -> int:
    """Floating-point operations of one image's forward pass, counted from the layers' shapes.

    Convolutions and dense layers: 2 per multiply-accumulate; every other layer: one per output
    element (activations, pooling, BatchNorm at inference, adds). A cost model for planning
    synthesis work from the model alone (the same plan on every machine), not a profiler.
    """
    total = 0
    for layer, node, out in _fixed_outputs(model):
        macs = _macs_per_output(layer, node)
        total += out * macs * 2 if macs else out
    return max(1, total)


def _macs_per_output(layer, node) -> int:
    """Multiply-accumulates behind one output element of a conv / dense layer (0 for other layers)."""
    import keras
    kernel = getattr(layer, "kernel", None)
    if kernel is None or not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                                                keras.layers.Dense, keras.layers.Conv1D)):
        return 0
    k = tuple(int(d) for d in kernel.shape)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return int(np.prod(k[:-2]))              # [kh, kw, cin, multiplier]: one input channel per output
    return int(np.prod(k[:-1]))                  # [kh, kw, cin / groups, cout] or [in, units]
