"""Block reconstruction (BRECQ, Li et al. 2021): the weight ops of one block learn their rounding together.

Why: layer by layer, each op reconstructs its own float output, but a residual block's output is what
the rest of the network reads; errors that cancel inside the block cost nothing, and one op can make
up for another. A block is the span of ops between two single-tensor cuts of the graph (a point
where exactly one activation tensor is alive: a residual block from its fork to its ADD); chains of
plain ops are one-op blocks and stay layer by layer. Inside a block the int8 graph is simulated with
straight-through re-quantization (methods/simulate.py), every weight op on its own grid.
"""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Block:
    first_op: int           # operator indices [first_op, last_op] of subgraph 0
    last_op: int
    input: int              # the one activation tensor entering the block
    output: int             # the one leaving it


def cut_blocks(model) -> List[Block]:
    """The spans between single-tensor cuts of subgraph 0, in order (every op in exactly one span)."""
    from tflite_retroq.tflite import model as tfm
    sg = model.subgraphs[0]
    n = len(sg.operators)
    const = {t for t in range(len(sg.tensors)) if tfm.tensor_array(model, sg, t) is not None}
    produced = {int(t): i for i, op in enumerate(sg.operators) for t in op.outputs}
    last = {int(t): n for t in sg.outputs}
    for i, op in enumerate(sg.operators):
        for t in op.inputs:
            if int(t) >= 0 and int(t) not in const:
                last[int(t)] = max(last.get(int(t), -1), i)
    blocks, start, entering = [], 0, int(sg.inputs[0])
    for i in range(n):
        live = [t for t, end in last.items() if produced.get(t, -1) <= i < end]
        if len(live) == 1:
            blocks.append(Block(start, i, entering, live[0]))
            start, entering = i + 1, live[0]
    return blocks


def pair_depthwise(model, blocks: List[Block]) -> List[Block]:
    """Blocks with a depthwise+pointwise pair joined: a one-op DEPTHWISE_CONV_2D block and the next block
    when that holds exactly one weight op, a 1x1 CONV_2D (MobileNet's separable convolution)."""
    from tflite_retroq.tflite import model as tfm
    sg = model.subgraphs[0]

    def weight_ops(b):
        return [i for i in range(b.first_op, b.last_op + 1) if tfm.op_name(model, sg.operators[i]) in tfm.QUANTIZABLE]

    out: List[Block] = []
    for b in blocks:
        prev = out[-1] if out else None
        if prev is not None and len(weight_ops(prev)) == 1 and len(weight_ops(b)) == 1:
            dw, pw = sg.operators[weight_ops(prev)[0]], sg.operators[weight_ops(b)[0]]
            kernel = list(sg.tensors[int(pw.inputs[1])].shape)
            if tfm.op_name(model, dw) == "DEPTHWISE_CONV_2D" and tfm.op_name(model, pw) == "CONV_2D" \
                    and kernel[1:3] == [1, 1]:
                out[-1] = Block(prev.first_op, b.last_op, prev.input, b.output)
                continue
        out.append(b)
    return out


def block_error(out: np.ndarray, target: np.ndarray) -> float:
    """Mean over samples and positions of the squared error summed over channels (as layer_error)."""
    d = np.asarray(out, np.float64).reshape(-1, out.shape[-1]) - np.asarray(target, np.float64).reshape(-1, out.shape[-1])
    return float(np.sum(np.square(d)) / max(1, d.shape[0]))


def optimize_block(qm, block: Block, x: np.ndarray, y: np.ndarray, roundings: List[Tuple[object, int, int]],
                   iterations: int, batch_size: int, reg_weight: float, learning_rate: float, seed: int,
                   on_chunk=None) -> None:
    """Adam on every rounding of the block (`roundings`: [(Rounding, weight tensor, bias tensor or -1)])
    so the simulated block output on input `x` reconstructs `y` (float targets, clipped)."""
    import tensorflow as tf
    from tflite_retroq.methods.reconstruct import run_adam
    from tflite_retroq.methods.simulate import Int8Graph
    xs, ys = tf.constant(x), tf.constant(y)
    def reconstruction(idx):
        override = {}
        for r, wt, bt in roundings:
            override[wt] = r.weight()
            if bt >= 0:
                override[bt] = r.bias()
        g = Int8Graph(qm, ste=True, override=override)
        g.values[block.input] = tf.gather(xs, idx)
        out = g.value(block.output)
        target = tf.reshape(tf.gather(ys, idx), tf.shape(out))
        return tf.reduce_mean(tf.reduce_sum(tf.square(out - target), axis=-1))

    run_adam([r for r, _, _ in roundings], reconstruction, len(x), iterations, batch_size, reg_weight, learning_rate, seed,
             on_chunk=on_chunk)
