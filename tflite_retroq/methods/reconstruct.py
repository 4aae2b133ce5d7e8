"""One layer's learned rounding (AdaRound, Nagel et al. 2020): choose each weight's rounding up or down,
and shift the bias, so the layer's int8 output reconstructs the float model's.

The layer is simulated in TensorFlow from its TFLite operator (CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED with their strides, padding, dilation and fused activation) and its output is
clipped to the int8 range of its output tensor, as the int8 kernel saturates. Its inputs are the
dequantized int8 activations of the quantized model (earlier layers already rounded, every
activation quantized as the converter calibrated it); its targets are the float model's outputs on
the same images, so the reconstruction also absorbs the error that reaches the layer.
Weights stay on their grid: code = floor(w / s) + h with h in {0, 1}, clipped to +-qmax.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import numpy as np

_ZETA, _GAMMA = 1.1, -0.1  # rectified sigmoid stretch (AdaRound)


@dataclasses.dataclass(frozen=True)
class LayerOp:
    """What the simulation needs to know about one TFLite weight op."""
    kind: str
    strides: Tuple[int, int] = (1, 1)
    dilations: Tuple[int, int] = (1, 1)
    padding: str = "SAME"
    activation: int = 0                 # TFLite ActivationFunctionType: 0 none, 1 relu, 2 relu_n1_to_1, 3 relu6
    out_range: Tuple[float, float] = (-np.inf, np.inf)   # what the int8 output tensor can hold

    @classmethod
    def from_tflite(cls, op, kind: str, out_range: Tuple[float, float]) -> "LayerOp":
        o = op.builtinOptions
        act = int(getattr(o, "fusedActivationFunction", 0) or 0)
        if kind == "FULLY_CONNECTED":
            return cls(kind, activation=act, out_range=out_range)
        return cls(kind, (int(o.strideH), int(o.strideW)),
                   (int(getattr(o, "dilationHFactor", 1) or 1), int(getattr(o, "dilationWFactor", 1) or 1)),
                   "SAME" if int(o.padding) == 0 else "VALID", act, out_range)

    def apply(self, x, w, b):
        """Float output of the op for input x [N, ...] and weight w in TFLite layout (TensorFlow tensors)."""
        import tensorflow as tf
        if self.kind == "CONV_2D":
            y = tf.nn.conv2d(x, tf.transpose(w, (1, 2, 3, 0)), strides=(1,) + self.strides + (1,),
                             padding=self.padding, dilations=(1,) + self.dilations + (1,))
        elif self.kind == "DEPTHWISE_CONV_2D":
            cin = int(x.shape[-1])
            f = tf.reshape(w[0], (int(w.shape[1]), int(w.shape[2]), cin, -1))
            y = tf.nn.depthwise_conv2d(x, f, strides=(1,) + self.strides + (1,), padding=self.padding,
                                       dilations=self.dilations)
        else:
            y = tf.matmul(tf.reshape(x, (-1, int(w.shape[1]))), w, transpose_b=True)
        y = y + b
        lo, hi = self.out_range
        if self.activation == 1:
            lo = max(lo, 0.0)
        elif self.activation == 2:
            lo, hi = max(lo, -1.0), min(hi, 1.0)
        elif self.activation == 3:
            lo, hi = max(lo, 0.0), min(hi, 6.0)
        return tf.clip_by_value(y, lo, hi)


def layer_error(op: LayerOp, x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, chunk: int = 64) -> float:
    """Mean over samples (and positions) of the squared output error summed over channels."""
    import tensorflow as tf
    total, count = 0.0, 0
    for i in range(0, len(x), chunk):
        out = op.apply(tf.constant(x[i:i + chunk]), tf.constant(w), tf.constant(b)).numpy()
        d = out.reshape(-1, out.shape[-1]) - y[i:i + chunk].reshape(-1, out.shape[-1])
        total += float(np.sum(np.square(d, dtype=np.float64)))
        count += d.shape[0]
    return total / max(count, 1)


class Rounding:
    """One weight tensor's rounding variables on its grid (AdaRound's rectified sigmoid h in [0, 1]) and its
    bias shift: soft weights while optimizing, int8 codes after. code = floor(w / s) + h, within +-qmax."""

    def __init__(self, w: np.ndarray, scale: np.ndarray, dim: Optional[int], bits: int, bias: np.ndarray,
                 bias_unit: float):
        import tensorflow as tf
        self.qmax = float(2 ** (bits - 1) - 1)
        shape = [1] * w.ndim
        if dim is not None:
            shape[dim] = -1
        s = np.asarray(scale, np.float32).reshape(shape)
        ratio = np.asarray(w, np.float32) / s
        self.floor = np.floor(ratio).astype(np.float32)
        frac = np.clip(ratio - self.floor, 1e-4, 1 - 1e-4)
        v0 = -np.log((_ZETA - _GAMMA) / (frac - _GAMMA) - 1.0)   # h(v0) = frac: soft nearest rounding
        self.v, self.u = tf.Variable(v0.astype(np.float32)), tf.Variable(np.zeros(bias.shape, np.float32))
        self.params = [self.v, self.u]
        self.bias0, self.unit = bias.astype(np.float32), np.float32(bias_unit)
        self._floor, self._s, self._b0 = tf.constant(self.floor), tf.constant(s), tf.constant(self.bias0)

    def h(self):
        import tensorflow as tf
        return tf.clip_by_value(tf.sigmoid(self.v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)

    def weight(self):
        import tensorflow as tf
        return tf.clip_by_value(self._floor + self.h(), -self.qmax, self.qmax) * self._s

    def bias(self):
        return self._b0 + self.u * self.unit

    def reg(self, beta):
        import tensorflow as tf
        return tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * self.h() - 1.0), beta))

    def codes(self) -> np.ndarray:
        up = (self.h().numpy() >= 0.5).astype(np.float32)
        return np.clip(self.floor + up, -self.qmax, self.qmax).astype(np.int8)

    def final_bias(self) -> np.ndarray:
        return (self.bias0 + self.u.numpy() * self.unit).astype(np.float32)


def run_adam(roundings, reconstruction: Callable, n: int, iterations: int, batch_size: int, reg_weight: float,
             learning_rate: float, seed: int, chunks: int = 4, on_chunk: Optional[Callable[[int], None]] = None) -> None:
    """`iterations` Adam steps on every rounding's variables against reconstruction(batch indices) plus the
    rounding regularizer, deterministic for a seed.

    The regularizer is off for the first fifth of the steps, then pushes every h to 0 or 1 with its
    exponent annealed from 20 to 2. The whole schedule (mini-batches from the seed, exponent, warm-up)
    is fixed up front, so a chunk of steps runs as one compiled graph-side loop with no Python between
    steps; `on_chunk(steps_done)` is called after each of the `chunks` chunks (progress).
    """
    import tensorflow as tf
    params = [p for r in roundings for p in r.params]
    m = [tf.Variable(tf.zeros_like(p)) for p in params]
    v2 = [tf.Variable(tf.zeros_like(p)) for p in params]
    rng = np.random.default_rng(seed)
    bs = min(batch_size, n)
    warm = iterations // 5
    its = np.arange(iterations)
    idx_all = tf.constant(np.array([rng.choice(n, bs, replace=False) for _ in its], np.int32).reshape(-1, bs))
    done = np.maximum(0.0, (its - warm) / max(1, iterations - warm))
    beta_all = tf.constant((20.0 + (2.0 - 20.0) * done).astype(np.float32))
    reg_all = tf.constant((its >= warm).astype(np.float32))

    def step(idx, beta, reg_on, t):
        with tf.GradientTape() as tape:
            loss = reconstruction(idx) + reg_on * reg_weight * tf.add_n([r.reg(beta) for r in roundings])
        grads = tape.gradient(loss, params)
        for p, g, mm, rr in zip(params, grads, m, v2):
            mm.assign(0.9 * mm + 0.1 * g)
            rr.assign(0.999 * rr + 0.001 * tf.square(g))
            p.assign_sub(learning_rate * (mm / (1 - 0.9 ** t)) / (tf.sqrt(rr / (1 - 0.999 ** t)) + 1e-8))

    @tf.function(autograph=False)
    def run(lo, hi):
        def body(t):
            step(idx_all[t], beta_all[t], reg_all[t], tf.cast(t + 1, tf.float32))
            return (t + 1,)
        tf.while_loop(lambda t: t < hi, body, (lo,))

    chunk = max(1, -(-iterations // chunks))
    for lo in range(0, iterations, chunk):
        run(tf.constant(lo), tf.constant(min(iterations, lo + chunk)))
        if on_chunk is not None:
            on_chunk(min(iterations, lo + chunk))


def optimize_layer(op: LayerOp, x: np.ndarray, y: np.ndarray, w: np.ndarray, scale: np.ndarray, dim: Optional[int],
                   bits: int, bias: np.ndarray, bias_unit: float, iterations: int, batch_size: int, reg_weight: float,
                   learning_rate: float, seed: int, chunks: int = 4,
                   on_chunk: Optional[Callable[[int], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float bias) after `iterations` Adam steps on one layer's rounding and bias (run_adam).

    `bias_unit` (the output's quantization step) scales the bias shift so one learning rate fits
    layers of any magnitude.
    """
    import tensorflow as tf
    r = Rounding(w, scale, dim, bits, bias, bias_unit)
    xs, ys = tf.constant(x), tf.constant(y.reshape((len(y), -1)) if op.kind == "FULLY_CONNECTED" else y)

    def reconstruction(idx):
        out = op.apply(tf.gather(xs, idx), r.weight(), r.bias())
        target = tf.reshape(tf.gather(ys, idx), tf.shape(out))
        return tf.reduce_mean(tf.reduce_sum(tf.square(out - target), axis=-1))

    run_adam([r], reconstruction, len(x), iterations, batch_size, reg_weight, learning_rate, seed, chunks, on_chunk)
    return r.codes(), r.final_bias()
