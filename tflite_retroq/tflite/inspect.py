"""What is inside a .tflite: per-tensor quantization, weight tensors, op counts.

`inspect_model(bytes) -> dict` is pure (no interpreter, no TensorFlow) and returns
plain JSON types only, so the CLI can print it as a table (report.format_inspect)
or as JSON, and reports can embed its per-layer summary.
"""
from __future__ import annotations

import collections
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from tflite_retroq.errors import TFLiteModelError
from tflite_retroq.tflite import model as tfm


def _type_names() -> Dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema_fb
    return {v: k for k, v in vars(schema_fb.TensorType).items() if not k.startswith("_") and isinstance(v, int)}


def _op_label(model, op, index: int) -> str:
    name = tfm.op_name(model, op) or "CUSTOM"
    return f"{name}#{index}"


def _effective_bits(max_abs: int) -> int:
    """Bits b of the symmetric grid +-(2^(b-1)-1) that holds integers up to max_abs."""
    return int(math.ceil(math.log2(max_abs + 1))) + 1 if max_abs > 0 else 1


def _constant(model, sg, index: int) -> Optional[np.ndarray]:
    try:
        return tfm.tensor_array(model, sg, index)
    except TFLiteModelError:
        return None  # a type numpy cannot hold (string, bool, int4 ...): shown without values
    except ValueError:
        raise TFLiteModelError(f"Tensor {tfm.tensor_name(sg.tensors[index])!r} has a buffer that does not match "
                               "its shape; the .tflite is corrupt.") from None


def _io(model, sg, indices, types) -> List[dict]:
    out = []
    for i in indices:
        t = sg.tensors[i]
        sc = tfm.scales(t)
        q = t.quantization
        zp = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else []
        # shapeSignature keeps -1 for a dynamic batch (shape holds 1 there, which would read as a static batch)
        sig = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
        out.append({"index": int(i), "name": tfm.tensor_name(t), "dtype": types.get(t.type, str(t.type)),
                    "shape": [int(d) for d in (sig if sig is not None else [])],
                    "scale": float(sc[0]) if sc.size == 1 else None,
                    "zero_point": int(zp[0]) if len(zp) == 1 else None})
    return out


# A float op between DEQUANTIZE and QUANTIZE runs on LiteRT's CPU kernels, but int8-only accelerators cannot
# execute it: Vela leaves it to the Cortex-M host (Ethos-U runs int8/int16 only), and an int8 NPU delegate
# (Hexagon's int8 path, Edge TPU) splits the graph around it.
FLOAT_OPS_NOTE = ("not fully integer: int8-only accelerators (Ethos-U via Vela, Hexagon's int8 path, Edge TPU) "
                  "cannot run these ops; they fall back to a CPU with float kernels")


def _buffer_bytes(model, tensor) -> int:
    """Bytes the tensor's data takes in the file (INT4: two weights a byte; LUT-packed: its indices)."""
    buf = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
    return 0 if buf is None else int(len(buf))


def float_ops(data: bytes) -> List[str]:
    """Every op that computes in float32 (QUANTIZE / DEQUANTIZE at the borders excepted), as `KIND (output name)`."""
    model = tfm.read(bytes(data))
    found = []
    for sg in model.subgraphs:
        for op in sg.operators or []:
            name = tfm.op_name(model, op) or "CUSTOM"
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            tensors = [i for i in list(op.inputs if op.inputs is not None else [])
                       + list(op.outputs if op.outputs is not None else []) if i >= 0]
            if any(sg.tensors[i].type == 0 for i in tensors):  # FLOAT32
                out = tfm.tensor_name(sg.tensors[op.outputs[0]]).split(";")[0] if len(op.outputs) else "?"
                found.append(f"{name} ({out})")
    return found


def inspect_model(data: bytes) -> dict:
    """Summary of a .tflite flatbuffer (bytes); TFLiteModelError if it is not one."""
    model = tfm.read(bytes(data))
    types = _type_names()
    op_counts: collections.Counter = collections.Counter()
    tensors: List[dict] = []
    layers: List[dict] = []
    inputs: List[dict] = []
    outputs: List[dict] = []
    for si, sg in enumerate(model.subgraphs):
        ops = sg.operators or []
        consumers: Dict[int, List[str]] = collections.defaultdict(list)
        producer: Dict[int, str] = {}
        roles: Dict[int, str] = {}
        for oi, op in enumerate(ops):
            label = _op_label(model, op, oi)
            op_counts[label.split("#")[0]] += 1
            ins = [int(i) for i in (op.inputs if op.inputs is not None else [])]
            for pos, ti in enumerate(ins):
                if ti < 0:
                    continue
                consumers[ti].append(label)
                if label.split("#")[0] in tfm.QUANTIZABLE and pos in (1, 2):
                    roles.setdefault(ti, "weight" if pos == 1 else "bias")
            for ti in (op.outputs if op.outputs is not None else []):
                producer[int(ti)] = label
        sg_inputs = [int(i) for i in (sg.inputs if sg.inputs is not None else [])]
        sg_outputs = [int(i) for i in (sg.outputs if sg.outputs is not None else [])]
        if si == 0:
            inputs, outputs = _io(model, sg, sg_inputs, types), _io(model, sg, sg_outputs, types)
        arrays: Dict[int, Optional[np.ndarray]] = {}
        for ti, t in enumerate(sg.tensors or []):
            sc = tfm.scales(t)
            arr = _constant(model, sg, ti)
            arrays[ti] = arr
            constant = arr is not None or (0 < t.buffer < len(model.buffers)
                                           and model.buffers[t.buffer].data is not None
                                           and len(model.buffers[t.buffer].data) > 0)
            if sc.size == 0 and not constant:
                continue
            role = roles.get(ti) or ("input" if ti in sg_inputs else "output" if ti in sg_outputs
                                     else "constant" if constant else "activation")
            used_by = consumers.get(ti) or ([producer[ti]] if ti in producer else [])
            tensors.append({
                "subgraph": si, "index": ti, "name": tfm.tensor_name(t), "role": role,
                "op": ", ".join(used_by) if used_by else None,
                "dtype": types.get(t.type, str(t.type)),
                "shape": [int(d) for d in (t.shape if t.shape is not None else [])],
                "constant": bool(constant),
                "num_scales": int(sc.size),
                "scale_min": float(sc.min()) if sc.size else None,
                "scale_max": float(sc.max()) if sc.size else None,
                "quantized_dimension": tfm.quantized_dimension(t) if sc.size else None,
                "distinct_values": int(np.unique(arr).size) if arr is not None else None,
            })
        for wop in tfm.weight_ops(model):
            if wop.subgraph != si:
                continue
            wt = sg.tensors[wop.weight]
            w = arrays.get(wop.weight)
            sc = tfm.scales(wt)
            is_int = w is not None and w.dtype.kind in "iu"
            max_abs = int(np.max(np.abs(w.astype(np.int64)))) if is_int and w.size else None
            layers.append({
                "subgraph": si, "op_index": wop.index, "op": wop.kind, "output": wop.output_name,
                "weight_tensor": wop.weight, "weight_dtype": types.get(wt.type, str(wt.type)),
                "weight_shape": [int(d) for d in wt.shape],
                "scheme": "per-channel" if sc.size > 1 else "per-tensor" if sc.size == 1 else "float",
                "num_scales": int(sc.size),
                "quantized_dimension": tfm.quantized_dimension(wt) if sc.size > 1 else None,
                "distinct_values": int(np.unique(w).size) if w is not None else None,
                "max_abs_int": max_abs,
                "weight_bits": _effective_bits(max_abs) if max_abs is not None else None,
                "weight_bytes": _buffer_bytes(model, wt),
                "bias_dtype": types.get(sg.tensors[wop.bias].type) if wop.bias >= 0 else None,
            })
    floats = float_ops(data)
    return {
        "size_bytes": len(data),
        "subgraphs": len(model.subgraphs),
        "num_ops": int(sum(op_counts.values())),
        "op_counts": dict(sorted(op_counts.items())),
        "inputs": inputs,
        "outputs": outputs,
        "tensors": tensors,
        "layers": layers,
        "float_ops": floats,
        "float_ops_note": FLOAT_OPS_NOTE if floats else None,
        **_weight_tables(data),
    }


def _weight_tables(data: bytes) -> dict:
    """LUT packing: runtime note, per weight tensor distinct values and table size (tflite.pack)."""
    from tflite_retroq.tflite.pack import weight_tables
    return weight_tables(data)


def output_range(quantized: bytes) -> Optional[Tuple[float, float, float]]:
    """(lowest, highest, scale) the int8 model's output can represent, in real units (through a final
    DEQUANTIZE for float I/O, the uint8 grid for uint8 I/O); None when the output is not quantized."""
    m = tfm.read(quantized)
    sg = m.subgraphs[0]
    index = sg.outputs[0]
    for op in sg.operators:
        if index in op.outputs and sg.tensors[index].type not in (3, 9) and tfm.op_name(m, op) == "DEQUANTIZE":
            index = op.inputs[0]
    t = sg.tensors[index]
    sc = tfm.scales(t)
    if t.type not in (3, 9) or sc.size != 1:
        return None
    zp = t.quantization.zeroPoint
    zp = int(zp[0]) if zp is not None and len(zp) else 0
    qmin, qmax = (0, 255) if t.type == 3 else (-128, 127)
    return (qmin - zp) * float(sc[0]), (qmax - zp) * float(sc[0]), float(sc[0])
