"""Read/write .tflite through the schema object API (ModelT) and find what passes need.

Passes never patch bytes and never write into a buffer another tensor may share:
`set_tensor_data` always appends a fresh buffer.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Iterator, Optional

import numpy as np

from tflite_retroq.errors import TFLiteModelError

QUANTIZABLE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

INT4 = 17  # TensorType INT4: two values per byte, the first in the low nibble

_NP = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


def _fu():
    from ai_edge_litert.tools import flatbuffer_utils
    return flatbuffer_utils


def read(data: bytes):
    """bytes -> ModelT, or TFLiteModelError for anything that is not a .tflite flatbuffer."""
    fu = _fu()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteModelError("The data is not a TFLite flatbuffer (no 'TFL3' identifier); "
                               "pass a .tflite file produced by the TFLite converter.")
    try:
        model = fu.convert_bytearray_to_object(bytearray(data))
        if not model.subgraphs:
            raise ValueError("no subgraphs")
        return model
    except Exception as e:
        raise TFLiteModelError(f"The .tflite flatbuffer is corrupt or truncated ({type(e).__name__}); "
                               "convert the model again.") from None


def verify(data: bytes, what: str = "The model") -> bytes:
    """Refuse bytes that are not a well-formed .tflite before native code parses them.

    TensorFlow's converter entry points (`mlir_quantize`, the calibrator) read the flatbuffer
    unchecked and die with SIGSEGV on garbage or truncated bytes. LiteRT's interpreter runs the
    flatbuffer verifier (offsets, sizes, tables) and builds the graph (tensor and buffer indices),
    raising ValueError instead; bytes that pass it are safe to hand on.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TFLiteModelError(f"{what} must be the bytes of a .tflite flatbuffer, got {type(data).__name__}; "
                               "pass e.g. open('model.tflite', 'rb').read() or the result of calibrate().")
    data = bytes(data)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteModelError(f"{what} is not a TFLite flatbuffer (no 'TFL3' identifier); "
                               "pass a .tflite file produced by the TFLite converter.")
    from ai_edge_litert.interpreter import Interpreter
    from tflite_retroq.io_utils import library_quiet
    try:
        with library_quiet():
            Interpreter(model_content=data)
    except (ValueError, RuntimeError) as e:
        from tflite_retroq.errors import one_line
        raise TFLiteModelError(f"{what} is a corrupt or truncated .tflite flatbuffer ({one_line(e, 120)}); "
                               "produce it again (e.g. with calibrate()).") from None
    return data


def read_bytes(path: str) -> bytes:
    """The raw bytes of a .tflite file, or TFLiteModelError naming what is wrong with the path."""
    from tflite_retroq.io_utils import check_readable
    path = os.fspath(path)
    check_readable(path, "TFLite file", TFLiteModelError, "pass the path of a .tflite model")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TFLiteModelError(f"TFLite file {path!r} cannot be read ({e.strerror}); check the file and its "
                               "permissions.") from None


def read_file(path: str):
    return read(read_bytes(path))


def compact_buffers(model) -> None:
    """Drop buffers no tensor or metadata entry references (passes leave the old ones behind)."""
    used = {0}
    for sg in model.subgraphs:
        used.update(t.buffer for t in sg.tensors)
    for md in model.metadata or []:
        used.add(md.buffer)
    keep = sorted(b for b in used if b < len(model.buffers))
    if len(keep) == len(model.buffers):
        return
    remap = {old: new for new, old in enumerate(keep)}
    model.buffers = [model.buffers[i] for i in keep]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = remap[t.buffer]
    for md in model.metadata or []:
        md.buffer = remap[md.buffer]


def write(model) -> bytes:
    """ModelT -> bytes, without buffers that nothing references any more."""
    compact_buffers(model)
    return bytes(_fu().convert_object_to_bytearray(model))


def op_name(model, op) -> str:
    return _fu().opcode_to_name(model, op.opcodeIndex)


def tensor_name(tensor) -> str:
    n = tensor.name
    return n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)


def tensor_array(model, subgraph, index: int) -> Optional[np.ndarray]:
    """The constant data of a tensor as a numpy array of its dtype and shape (None if not constant)."""
    t = subgraph.tensors[index]
    buf = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
    if buf is None or len(buf) == 0:
        return None
    if t.type == INT4:
        return unpack_int4(np.asarray(buf, np.uint8), list(t.shape))
    dtype = _NP.get(t.type)
    if dtype is None:
        raise TFLiteModelError(f"Tensor {tensor_name(t)!r} has unsupported type {t.type}.")
    shape = list(t.shape) if t.shape is not None else []  # an absent shape vector is a scalar
    return np.frombuffer(np.asarray(buf, np.uint8).tobytes(), dtype=dtype).reshape(shape)


def pack_int4(values: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7] -> bytes, two per byte, element 2i in the low nibble (odd count: 0-padded)."""
    v = np.asarray(values, np.int16).reshape(-1)
    if v.size % 2:
        v = np.append(v, 0)
    return ((v[0::2] & 0xF) | ((v[1::2] & 0xF) << 4)).astype(np.uint8)


def unpack_int4(data: np.ndarray, shape) -> np.ndarray:
    """The inverse of pack_int4: int8 values of `shape` (sign-extended nibbles)."""
    d = np.asarray(data, np.uint8)
    nib = np.stack([d & 0xF, d >> 4], axis=1).reshape(-1).astype(np.int16)
    n = int(np.prod(shape)) if len(shape) else 1
    return np.where(nib >= 8, nib - 16, nib)[:n].astype(np.int8).reshape(shape)


def set_tensor_data(model, subgraph, index: int, array: np.ndarray) -> None:
    """Give tensor `index` a fresh buffer holding `array` (never aliases another tensor)."""
    fu = _fu()
    t = subgraph.tensors[index]
    want = _NP[t.type]
    array = np.ascontiguousarray(array, dtype=want)
    if list(array.shape) != list(t.shape):
        raise TFLiteModelError(f"Shape {array.shape} does not match tensor {tensor_name(t)!r} {list(t.shape)}.")
    buf = fu.BufferT()
    buf.data = np.frombuffer(array.tobytes(), np.uint8).copy()
    model.buffers.append(buf)
    t.buffer = len(model.buffers) - 1


@dataclasses.dataclass
class WeightOp:
    """A quantizable op and the tensor indices of its input, weight and bias (-1 if none)."""
    subgraph: int
    index: int
    kind: str
    input: int
    weight: int
    bias: int
    output_name: str


def weight_ops(model) -> Iterator[WeightOp]:
    for si, sg in enumerate(model.subgraphs):
        for oi, op in enumerate(sg.operators):
            kind = op_name(model, op)
            if kind not in QUANTIZABLE:
                continue
            ins = list(op.inputs)
            bias = ins[2] if len(ins) > 2 else -1
            yield WeightOp(si, oi, kind, ins[0], ins[1], bias, tensor_name(sg.tensors[op.outputs[0]]))


def by_output_name(model) -> Dict[str, WeightOp]:
    return {w.output_name: w for w in weight_ops(model)}


def scales(tensor) -> np.ndarray:
    q = tensor.quantization
    if q is None or q.scale is None:
        return np.zeros(0, np.float32)
    return np.asarray(q.scale, np.float32)


def quantized_dimension(tensor) -> int:
    q = tensor.quantization
    return int(q.quantizedDimension) if q is not None else 0


def set_quantization(tensor, scale: np.ndarray, dim: int) -> None:
    """Symmetric quantization parameters: zero points all 0."""
    fu = _fu()
    q = fu.QuantizationParametersT()
    q.scale = [float(s) for s in np.asarray(scale, np.float32).reshape(-1)]
    q.zeroPoint = [0] * len(q.scale)
    q.quantizedDimension = int(dim)
    tensor.quantization = q
