"""Algorithm 1: retro-synthesis of calibration images from the float model itself.

All classes are optimized together in one batch by one compiled tf.function step
(BatchNorm statistics are batch statistics, so the batch must hold every class).
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import numpy as np

from tflite_retroq.config import InputSpec, SynthesisConfig, SynthesisMode
from tflite_retroq.dataset import SyntheticDataset
from tflite_retroq.keras_tools import (InputSpace, as_model, bn_layers, bn_targets, bn_taps,
                                       resolve_input_space, validate_classifier)


def make_targets(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A random probability vector per image whose argmax is the image's class.

    The true class gets p in [0.6, 0.95); the rest is shared randomly, so every other
    entry is < 0.4 and the argmax is guaranteed.
    """
    n = labels.shape[0]
    p = rng.uniform(0.6, 0.95, size=n)
    rest = rng.uniform(0.0, 1.0, size=(n, num_classes))
    rest[np.arange(n), labels] = 0.0
    rest = rest / rest.sum(axis=1, keepdims=True) * (1.0 - p)[:, None]
    rest[np.arange(n), labels] = p
    return rest.astype(np.float32)


def synthesize(model, config: Optional[SynthesisConfig] = None, *, input_spec: Optional[InputSpec] = None,
               progress: bool = True) -> SyntheticDataset:
    """Synthesize calibration images (retro | zeroq | gaussian) from a float classifier.

    Returns images in the model's own input space (what `model(x)` expects), clipped to
    the valid pixel range, samples_per_class images per class.
    """
    import tensorflow as tf

    config = config or SynthesisConfig()
    model = as_model(model)
    info = validate_classifier(model)
    space = resolve_input_space(model, input_spec)
    h, w, c = info.input_shape
    labels = np.repeat(np.arange(info.num_classes), config.samples_per_class).astype(np.int64)
    n = labels.shape[0]
    rng = np.random.default_rng(config.seed)
    z0 = rng.standard_normal((n, h, w, c)).astype(np.float32)
    zlo, zhi = space.z_bounds()
    if zlo is not None:
        z0 = np.clip(z0, zlo, zhi)
    targets = make_targets(labels, info.num_classes, rng)
    history = {"total": [], "bn": [], "prior": [], "class": []}
    t0 = time.perf_counter()
    mode = config.mode
    iterations = 0 if mode == SynthesisMode.GAUSSIAN else config.iterations
    if iterations:
        z, t1 = _optimize(tf, model, space, z0, targets, config, info.outputs_probabilities, iterations,
                          (zlo, zhi), history, progress)
    else:
        z, t1 = z0, None
    t_end = time.perf_counter()
    seconds = t_end - t0
    steady = (n * (iterations - 1) / (t_end - t1)) if t1 is not None and t_end > t1 else None
    images = space.to_model_input(z)
    meta = {
        "mode": mode.value, "seed": config.seed, "config": config.to_dict(),
        "input_space": space.to_dict(), "num_classes": info.num_classes,
        "num_bn_layers": info.num_bn, "outputs_probabilities": info.outputs_probabilities,
        "seconds": seconds, "iterations_run": iterations, "model_name": model.name,
        "images_per_second": steady,  # image-iterations per second after compilation
    }
    return SyntheticDataset(images=images, labels=labels, metadata=meta, loss_history=history)


def _optimize(tf, model, space: InputSpace, z0, targets, config: SynthesisConfig, probs_out: bool,
              iterations: int, bounds, history, progress: bool):
    """Adam on the normalized images z, projected back into the valid range each step.

    Returns (z, time after the first step): the first step traces and compiles, so the
    steady-state rate is measured from then on.
    """
    with bn_taps(model) as taps:
        stats = {id(l): tuple(tf.constant(a) for a in bn_targets(l)) for l in bn_layers(model)}
        use_cls = config.mode == SynthesisMode.RETRO
        w_bn, w_prior, w_cls = config.bn_weight, config.prior_weight, (config.class_weight if use_cls else 0.0)
        space_tf = (tf.constant(np.asarray(space.offset, np.float32)), tf.constant(np.asarray(space.scale, np.float32)))
        tgt = tf.constant(targets)
        z = tf.Variable(z0)
        m = tf.Variable(tf.zeros_like(z0))
        v = tf.Variable(tf.zeros_like(z0))
        step_t = tf.Variable(0.0)
        lr, b1, b2, eps = config.learning_rate, 0.9, 0.999, 1e-8
        lo = None if bounds[0] is None else tf.constant(bounds[0].astype(np.float32))
        hi = None if bounds[1] is None else tf.constant(bounds[1].astype(np.float32))

        @tf.function(jit_compile=True)  # XLA: ~1.7x faster fwd+bwd on CPU (measured on ResNet-20)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(z)
                bn, prior, cls = _loss_terms(z)
                total = w_bn * bn + w_prior * prior + w_cls * cls
            g = tape.gradient(total, z)
            step_t.assign_add(1.0)
            m.assign(b1 * m + (1 - b1) * g)
            v.assign(b2 * v + (1 - b2) * tf.square(g))
            mhat = m / (1 - tf.pow(b1, step_t))
            vhat = v / (1 - tf.pow(b2, step_t))
            new = z - lr * mhat / (tf.sqrt(vhat) + eps)
            if lo is not None:
                new = tf.clip_by_value(new, lo, hi)
            z.assign(new)
            return total, bn, prior, cls

        def _loss_terms(zz):
            """BN-statistics, Gaussian-prior and class losses of the current images."""
            x = space_tf[0] + space_tf[1] * zz
            taps.clear()
            out = model(x, training=False)
            bn_terms = []
            for layer, t in taps:
                mu_r, sd_r = stats[id(layer)]
                axes = list(range(len(t.shape) - 1))
                mu_b = tf.reduce_mean(t, axis=axes)
                sd_b = tf.sqrt(tf.reduce_mean(tf.square(t - mu_b), axis=axes) + 1e-8)
                bn_terms.append(tf.reduce_mean(tf.square(mu_b - mu_r)) + tf.reduce_mean(tf.square(sd_b - sd_r)))
            bn = tf.add_n(bn_terms) / len(bn_terms) if bn_terms else tf.constant(0.0)
            mu_z = tf.reduce_mean(zz, axis=[0, 1, 2])
            sd_z = tf.sqrt(tf.reduce_mean(tf.square(zz - mu_z), axis=[0, 1, 2]) + 1e-8)
            prior = tf.reduce_mean(tf.square(mu_z)) + tf.reduce_mean(tf.square(sd_z - 1.0))
            p = out if probs_out else tf.nn.softmax(out, axis=-1)
            cls = tf.reduce_mean(tf.square(p - tgt))
            return bn, prior, cls

        bar = _Progress(iterations, enabled=progress)
        t1 = None
        for i in range(iterations):
            if i == 1:
                t1 = time.perf_counter()
            total, bn, prior, cls = (float(a) for a in step())
            for k, val in (("total", total), ("bn", bn), ("prior", prior), ("class", cls)):
                history[k].append(val)
            bar.update(i + 1, f"loss {total:.4f} (bn {bn:.4f} prior {prior:.4f} class {cls:.4f})")
        bar.close()
        return z.numpy(), t1


class _Progress:
    """A one-line progress bar on stderr (no dependency, quiet when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0, self.last = total, enabled, time.perf_counter(), 0.0
        # On a terminal redraw every 0.2 s; in a log file (no \r redraw) print a line every 10 s.
        self.tty = sys.stderr.isatty()
        self.every = 0.2 if self.tty else 10.0

    def update(self, i: int, text: str) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every and i != self.total):
            return
        self.last = now
        frac = i / max(self.total, 1)
        bar = "#" * int(frac * 20)
        eta = (now - self.t0) / max(i, 1) * (self.total - i)
        line = f"synthesis [{bar:<20}] {i}/{self.total} {text} eta {eta:4.0f}s"
        sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
