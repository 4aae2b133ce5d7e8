"""Static-shape export: a Keras model behind an Input with a fixed batch.

Our Keras models keep a dynamic batch dimension, so every Flatten/Reshape becomes
SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE in the .tflite: shape computations that
microcontroller runtimes and NPU compilers (Vela: "Tensors must have constant
shape") either reject or must fold themselves. Converting a wrapper whose Input has
a fixed batch lets the converter fold them into constants; the weights, and so
every tensor value, are the model's own.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional

import numpy as np

from tflite_retroq.errors import ConfigError, DataError

SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")


MAX_BATCH = 65536  # a fixed batch beyond this is a typo (and beyond int32 it overflows the converter)


def check_batch_size(batch_size: Optional[int]) -> Optional[int]:
    """None (dynamic batch) or a positive int; ConfigError otherwise."""
    if batch_size is None:
        return None
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or not 1 <= batch_size <= MAX_BATCH):
        raise ConfigError(f"batch_size={batch_size!r} must be an integer from 1 to {MAX_BATCH} (1 for "
                          "microcontrollers and NPUs) or None for a dynamic batch.")
    return int(batch_size)


def fixed_batch_model(model, batch_size: int):
    """A functional wrapper of `model` whose Input has batch `batch_size` (same layers, same weights).

    The Input keeps the model's own input name: the converter names the signature input after
    it, and Android code looks inputs up by that name (an unnamed Input would be `keras_tensor_N`).
    """
    import keras
    shape = tuple(model.input_shape[1:])
    inp = keras.Input(batch_shape=(batch_size,) + shape, dtype=model.inputs[0].dtype, name=model.inputs[0].name)
    return keras.Model(inp, model(inp), name=model.name)


def fold_batch_reshapes(model_bytes: bytes) -> bytes:
    """Dynamic-batch RESHAPEs (Flatten) with a constant new shape [-1, d1, ...] instead of one computed by
    SHAPE -> STRIDED_SLICE -> PACK at run time; the batch stays dynamic.

    NPU compilers leave those shape computations on the CPU (Qualcomm HTP: SHAPE has no op builder,
    the rank-1 STRIDED_SLICE fails validation, so the model splits into two NPU partitions), while a
    -1 in a constant RESHAPE shape is standard TFLite that every runtime resolves from the input.
    Only a RESHAPE whose output shape is known except its leading (batch) dimension is folded; the
    shape ops left without consumers are removed. Values are unchanged (same kernels, same data).
    """
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(bytes(model_bytes))
    changed = False
    for sg in m.subgraphs:
        producer = {int(o): i for i, op in enumerate(sg.operators) for o in op.outputs}
        consumers: dict = {}
        for op in sg.operators:
            for i in op.inputs:
                consumers.setdefault(int(i), set()).add(tfm.op_name(m, op))
        drop = set()
        for op in sg.operators:
            if tfm.op_name(m, op) != "RESHAPE" or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            shape_in, out = int(op.inputs[1]), sg.tensors[op.outputs[0]]
            sig = [int(d) for d in (out.shapeSignature if out.shapeSignature is not None and len(out.shapeSignature)
                                    else out.shape)]
            if (tfm.tensor_array(m, sg, shape_in) is not None or shape_in not in producer or len(sig) < 1
                    or sig[0] != -1 or any(d < 0 for d in sig[1:]) or sg.tensors[shape_in].type != 2
                    or list(sg.tensors[shape_in].shape) != [len(sig)] or consumers[shape_in] != {"RESHAPE"}
                    or shape_in in set(int(o) for o in sg.outputs)):
                continue  # (another consumer, e.g. FILL or BROADCAST_TO, needs the real batch value)
            tfm.set_tensor_data(m, sg, shape_in, np.array([-1] + sig[1:], np.int32))
            if op.builtinOptions is not None and getattr(op.builtinOptions, "newShape", None) is not None:
                op.builtinOptions.newShape = [-1] + sig[1:]
            drop.add(producer[shape_in])
            changed = True
        if drop:
            _remove_ops(sg, drop)
    return tfm.write(m) if changed else bytes(model_bytes)


def _remove_ops(sg, drop: set) -> None:
    """Remove ops `drop`, then every op left whose outputs are all int32 (shape arithmetic) and unused."""
    while True:
        sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
        used = {int(i) for op in sg.operators for i in op.inputs} | {int(o) for o in sg.outputs}
        drop = {i for i, op in enumerate(sg.operators)
                if all(int(o) not in used and sg.tensors[o].type == 2 for o in op.outputs)}
        if not drop:
            return


def fixed_batches(gen_fn: Callable[[], Iterator[List[np.ndarray]]], batch_size: int
                  ) -> Callable[[], Iterator[List[np.ndarray]]]:
    """Regroup a representative-dataset generator into batches of exactly `batch_size` images.

    A fixed-batch model accepts no other batch; a remainder smaller than the batch is dropped.
    """
    batch_size = check_batch_size(batch_size)  # 0 would loop forever; None has no fixed batch to regroup into
    if batch_size is None:
        raise ConfigError("fixed_batches needs a batch size from 1 up; pass the static batch.")
    def gen():
        pending: List[np.ndarray] = []
        count = fed = 0
        for sample in gen_fn():
            x = np.asarray(sample[0] if isinstance(sample, (list, tuple)) else sample)
            pending.append(x)
            count += len(x)
            while count >= batch_size:
                block = np.concatenate(pending, axis=0)
                yield [block[:batch_size]]
                fed += 1
                rest = block[batch_size:]
                pending, count = ([rest] if len(rest) else []), len(rest)
        if fed == 0:
            raise DataError(f"The calibration data holds {count} images, fewer than the static batch of "
                            f"{batch_size}; give more images or a smaller batch_size.")
    return gen


def input_batch(model_bytes: bytes) -> Optional[int]:
    """The fixed batch of the model's first input, or None when the batch is dynamic."""
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(bytes(model_bytes))
    sg = m.subgraphs[0]
    t = sg.tensors[sg.inputs[0]]
    sig = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
    return None if int(sig[0]) < 0 else int(sig[0])


def shape_ops(model_bytes: bytes) -> List[str]:
    """Names of the shape-computing operators (SHAPE / STRIDED_SLICE / PACK) left in a .tflite."""
    from tflite_retroq.tflite import model as tfm
    m = tfm.read(bytes(model_bytes))
    return [tfm.op_name(m, op) for sg in m.subgraphs for op in sg.operators if tfm.op_name(m, op) in SHAPE_OPS]


def check_calibrated_batch(calibrated: bytes, batch_size: Optional[int]) -> None:
    """A given `batch_size` must match the batch the calibrated model was exported with."""
    batch_size = check_batch_size(batch_size)
    if batch_size is None:
        return
    have = input_batch(calibrated)
    if have != batch_size:
        raise ConfigError(f"batch_size={batch_size} conflicts with the calibrated model, whose batch is "
                          f"{'dynamic' if have is None else have}; calibrate with the same batch_size.")
