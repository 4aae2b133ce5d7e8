"""The int8 graph of a quantized .tflite simulated in TensorFlow (fake quantization at its own scales).

Why: learned rounding needs each weight op's input as the int8 model computes it, after the earlier
ops' rounding changed. Running the LiteRT interpreter over the whole model once per layer costs a
full inference per layer; here every tensor is a float holding exactly the values its int8 tensor
can take ((q - zero_point) * scale), each op computed in float on those values and re-quantized
at its output's scale, and only the ops downstream of a changed layer are recomputed.

The int8 kernels requantize with fixed-point multipliers; this simulation rounds in float, half away
from zero. Per op, given the same inputs, the two agree to within one quantization step of the output
(tests/test_simulate.py). Ops outside SUPPORTED make `supported()` false: callers then use the interpreter.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from tflite_retroq.tflite import model as tfm

SUPPORTED = ("QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL",
             "MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "SOFTMAX", "PAD", "CONCATENATION", "RELU", "RELU6",
             "LOGISTIC", "TANH")
_INT8 = 9


def supported(model) -> bool:
    """True when every op of subgraph 0 is one this simulation computes (and the model has one subgraph)."""
    return len(model.subgraphs) == 1 and all(tfm.op_name(model, op) in SUPPORTED for op in model.subgraphs[0].operators)


def _round_half_away(x):
    import tensorflow as tf
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


class Int8Graph:
    """Subgraph 0 of a quantized ModelT, evaluated lazily on a fixed set of images.

    `value(t)` computes tensor t (float, dequantized) over all images, keeping intermediate values;
    `invalidate(op_index)` forgets every value computed by that op or a later one (after its weights
    changed), so the next `value` recomputes only what depends on it.
    """

    def __init__(self, model, images: Optional[np.ndarray] = None, ste: bool = False, override: Optional[Dict] = None):
        """`images`: the model's input values (else fill `values` yourself); `ste`: re-quantize with a
        straight-through gradient (for optimizing through the graph); `override`: {tensor: value} for
        constant tensors (soft weights while optimizing)."""
        import tensorflow as tf
        self.model, self.sg, self.ste, self.override = model, model.subgraphs[0], ste, dict(override or {})
        self.producer = {int(t): i for i, op in enumerate(self.sg.operators) for t in op.outputs}
        self.values: Dict[int, "tf.Tensor"] = {}
        self.last_use = {int(t): len(self.sg.operators) for t in self.sg.outputs}
        for i, op in enumerate(self.sg.operators):
            for t in op.inputs:
                self.last_use[int(t)] = max(self.last_use.get(int(t), -1), i)
        self.input = int(self.sg.inputs[0])
        if images is not None:
            self.values[self.input] = self._fake(tf.constant(np.asarray(images, np.float32)), self.input)

    # -- tensors --------------------------------------------------------------------------------------
    def _fake(self, x, t: int):
        """x re-quantized at tensor t's scale and zero point (identity for a float tensor)."""
        import tensorflow as tf
        tensor = self.sg.tensors[t]
        if tensor.type != _INT8:
            return x
        s = float(tfm.scales(tensor)[0])
        zp = int(tensor.quantization.zeroPoint[0])
        q = (tf.clip_by_value(_round_half_away(x / s) + zp, -128.0, 127.0) - zp) * s
        if not self.ste:
            return q
        inside = tf.clip_by_value(x, (-128 - zp) * s, (127 - zp) * s)   # gradient 1 within the range, 0 outside
        return inside + tf.stop_gradient(q - inside)

    def const(self, t: int) -> Optional[np.ndarray]:
        """A constant tensor dequantized to float (per-channel scales along its quantized dimension)."""
        if t in self.override:
            return self.override[t]
        a = tfm.tensor_array(self.model, self.sg, t)
        if a is None:
            return None
        tensor = self.sg.tensors[t]
        s = tfm.scales(tensor)
        if a.dtype in (np.float32,) or s.size == 0:
            return np.asarray(a)
        zp = np.asarray(tensor.quantization.zeroPoint if tensor.quantization.zeroPoint is not None else [0])
        shape = [1] * a.ndim
        if s.size > 1:
            shape[tfm.quantized_dimension(tensor)] = -1
        return ((a.astype(np.float64) - zp.reshape(shape)) * s.astype(np.float64).reshape(shape)).astype(np.float32)

    def invalidate(self, op_index: int) -> None:
        """Forget what op `op_index` and later ops computed, and what no op from there on reads."""
        for t in [t for t in self.values
                  if self.producer.get(t, -1) >= op_index or self.last_use.get(t, -1) < op_index]:
            del self.values[t]

    def value(self, t: int):
        if t in self.values:
            return self.values[t]
        c = self.const(t)
        if c is not None:
            return c
        i = self.producer[t]
        op = self.sg.operators[i]
        out = self._op(tfm.op_name(self.model, op), op, [int(v) for v in op.inputs])
        self.values[int(op.outputs[0])] = out
        return out

    # -- ops ------------------------------------------------------------------------------------------
    def _op(self, kind: str, op, ins: List[int]):
        import tensorflow as tf
        out_t = int(op.outputs[0])
        o = op.builtinOptions
        act = int(getattr(o, "fusedActivationFunction", 0) or 0) if o is not None else 0
        args = lambda: [self.value(t) for t in ins if t >= 0]  # noqa: E731
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            from tflite_retroq.methods.reconstruct import LayerOp
            x = self.value(ins[0])
            w = self.const(ins[1])
            cout = int(w.shape[3 if kind == "DEPTHWISE_CONV_2D" else 0])
            b = self.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else np.zeros(cout, np.float32)
            y = LayerOp.from_tflite(op, kind, (-np.inf, np.inf)).apply(x, tf.convert_to_tensor(w), tf.convert_to_tensor(b))
            if kind == "FULLY_CONNECTED":
                y = tf.reshape(y, [-1] + [int(d) for d in self.sg.tensors[out_t].shape[1:]])
            return self._fake(y, out_t)
        if kind in ("ADD", "SUB", "MUL"):
            a, b = args()
            y = a + b if kind == "ADD" else (a - b if kind == "SUB" else a * b)
            return self._fake(_activation(y, act), out_t)
        if kind == "MEAN":
            axes = [int(a) for a in np.atleast_1d(self.const(ins[1]))]
            return self._fake(tf.reduce_mean(self.value(ins[0]), axis=axes, keepdims=bool(o.keepDims)), out_t)
        if kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            pool = tf.nn.avg_pool2d if kind == "AVERAGE_POOL_2D" else tf.nn.max_pool2d
            y = pool(self.value(ins[0]), (int(o.filterHeight), int(o.filterWidth)), (int(o.strideH), int(o.strideW)),
                     "SAME" if int(o.padding) == 0 else "VALID")
            return self._fake(_activation(y, act), out_t)
        if kind == "RESHAPE":
            return tf.reshape(self.value(ins[0]), [-1] + [int(d) for d in self.sg.tensors[out_t].shape[1:]])
        if kind == "SOFTMAX":
            return self._fake(tf.nn.softmax(float(o.beta) * self.value(ins[0]), axis=-1), out_t)
        if kind == "PAD":
            return tf.pad(self.value(ins[0]), self.const(ins[1]).astype(np.int64))  # int8 pads with the zero point: 0.0
        if kind == "CONCATENATION":
            return self._fake(_activation(tf.concat(args(), axis=int(o.axis)), act), out_t)
        if kind in ("QUANTIZE", "DEQUANTIZE"):
            return self._fake(self.value(ins[0]), out_t)
        fn = {"RELU": tf.nn.relu, "RELU6": tf.nn.relu6, "LOGISTIC": tf.sigmoid, "TANH": tf.tanh}[kind]
        return self._fake(fn(self.value(ins[0])), out_t)


def _activation(y, act: int):
    import tensorflow as tf
    if act == 1:
        return tf.nn.relu(y)
    if act == 2:
        return tf.clip_by_value(y, -1.0, 1.0)
    if act == 3:
        return tf.nn.relu6(y)
    return y
