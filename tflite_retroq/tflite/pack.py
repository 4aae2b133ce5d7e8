"""Pack weight tables: TFLite Micro's look-up-table (LUT) compression, through its own library.

A weight tensor with at most 2^b distinct int8 values (b = 1..7; W6/W4 uniform and
non-uniform weights qualify) is stored as b-bit indices plus value tables, and a
DECODE operator (custom op TFLM_DECODE) restores it at run time. The format is
written by `tflite_micro.tensorflow.lite.micro.compression.compress`, never by
hand. Packed files run on the TFLite Micro runtime, NOT on LiteRT (which has no
DECODE kernel).

The table layout follows the tensor's quantization: one table for a per-tensor
quantized weight, one table per output channel (along its quantized dimension)
for a per-channel one. Measured here (TFLM in tflite-micro, this venv): a
per-channel quantized tensor packed with ONE shared table decodes to wrong
outputs on TFLM (and a per-tensor one packed per channel too), although the
values are representable either way; so the layout is never chosen by size.
Tensors that would not shrink are left as they are.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import warnings
from typing import List, Optional, Union

import numpy as np

from tflite_retroq.errors import ConfigError, DataError, TFLiteModelError
from tflite_retroq.tflite import model as tfm

DECODE_OP = "TFLM_DECODE"
MAX_INDEX_BITS = 7  # the LUT format's widest index
_DCM_BYTES = 16     # decode common metadata in front of the value tables


@dataclasses.dataclass(frozen=True)
class LutChoice:
    """How one weight tensor is (or would be) packed."""
    subgraph: int
    tensor: int
    name: str
    elements: int
    distinct: int             # distinct values in the whole tensor
    index_bits: int
    axis: Optional[int]       # None: one table; else one table per slice along axis
    tables: int
    table_len: int
    packed_bytes: int         # indices + value tables + DCM

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _tflm(module: str):
    """A tflite_micro module, or a ConfigError saying how to install it."""
    import importlib
    try:
        return importlib.import_module(f"tflite_micro.{module}")
    except ImportError:
        raise ConfigError("LUT packing and the TFLite Micro runtime need the tflite-micro package: pip install "
                          "-e '.[targets]' in the tflite_retroq clone (or pip install tflite-micro).") from None


def _bits(distinct: int) -> int:
    return max(1, int(math.ceil(math.log2(max(distinct, 1)))))


def _choose(w: np.ndarray, sg_i: int, t_i: int, name: str, channel_axis: Optional[int]) -> Union[LutChoice, str]:
    """One table for a per-tensor quantized tensor, one per channel (along `channel_axis`) for a
    per-channel one; else why not: "axis", "distinct" (more than 128 values per table) or "grow"."""
    n = int(w.size)
    d = int(np.unique(w).size)
    if channel_axis is None:
        b, tables, tl = _bits(d), 1, d
    else:
        if w.ndim < 2 or channel_axis not in (0, w.ndim - 1):
            return "axis"  # the DECODE kernel supports the first and the last axis only
        per = [int(np.unique(s).size) for s in np.moveaxis(w, channel_axis, 0)]
        b, tables, tl = _bits(max(per)), w.shape[channel_axis], max(per)
    if b > MAX_INDEX_BITS:
        return "distinct"
    c = LutChoice(sg_i, t_i, name, n, d, b, channel_axis, tables, tl, (n * b + 7) // 8 + tables * tl + _DCM_BYTES)
    return c if c.packed_bytes < n * w.itemsize else "grow"


def lut_plan(model_bytes: bytes) -> List[LutChoice]:
    """The weight tensors `pack_lut` would pack, and how."""
    return [c for c in _scan(model_bytes) if isinstance(c, LutChoice)]


def _scan(model_bytes: bytes) -> List[Union[LutChoice, str]]:
    """Each int8 weight tensor: its LutChoice, or why it cannot be packed."""
    model = tfm.read(model_bytes)
    plan, seen = [], set()
    for wop in tfm.weight_ops(model):
        sg = model.subgraphs[wop.subgraph]
        t = sg.tensors[wop.weight]
        if (wop.subgraph, wop.weight) in seen or t.type != 9:
            continue
        w = tfm.tensor_array(model, sg, wop.weight)
        if w is None:
            continue
        seen.add((wop.subgraph, wop.weight))
        axis = tfm.quantized_dimension(t) if tfm.scales(t).size > 1 else None
        plan.append(_choose(w, int(wop.subgraph), int(wop.weight), tfm.tensor_name(t), axis))
    return plan


def is_packed(model_bytes: bytes) -> bool:
    """True when the model holds TFLM DECODE operators (it then runs on TFLite Micro only)."""
    model = tfm.read(model_bytes)
    return any(tfm.op_name(model, op) == DECODE_OP or _custom_code(model, op) == DECODE_OP
               for sg in model.subgraphs for op in sg.operators)


def refuse_packed(model_bytes: bytes) -> None:
    """LiteRT has no DECODE kernel: say so instead of failing inside allocate_tensors."""
    if DECODE_OP.encode() in bytes(model_bytes) and is_packed(model_bytes):  # cheap pre-check first
        raise TFLiteModelError("The model is LUT-packed (TFLM_DECODE operators): it runs on TFLite Micro only, "
                               "not on LiteRT; run it with tflite_retroq.tflite.pack.run_tflm or convert without "
                               "pack='lut'.")


def _custom_code(model, op) -> Optional[str]:
    code = model.operatorCodes[op.opcodeIndex].customCode
    return code.decode() if isinstance(code, bytes) else code


def _nothing_to_pack(reasons: List[str]) -> str:
    """Why no tensor was packed, naming the commonest cause and its fix."""
    if not reasons:
        return "The model has no int8 weight tensors to pack; LUT packing applies to a quantized model."
    counts = {r: reasons.count(r) for r in ("grow", "distinct", "axis")}
    parts = []
    if counts["grow"]:
        parts.append(f"{counts['grow']} would grow (their value tables, one per channel, outweigh the bytes "
                     "saved: the tensors are small)")
    if counts["distinct"]:
        parts.append(f"{counts['distinct']} have more than {2 ** MAX_INDEX_BITS} distinct values per table "
                     "(use --weight-bits 4 or 6, or --nonuniform)")
    if counts["axis"]:
        parts.append(f"{counts['axis']} are quantized along an axis the DECODE kernel does not support")
    fix = (" Drop --pack lut for this model, or use --scheme per-tensor (one table per tensor)."
           if counts["grow"] else "")
    return f"LUT packing would shrink none of the {len(reasons)} weight tensors: {'; '.join(parts)}.{fix}"


def pack_lut(model_bytes: bytes) -> bytes:
    """bytes -> bytes: every weight tensor LUT can hold, packed for TFLite Micro (see module docstring)."""
    if is_packed(model_bytes):
        raise TFLiteModelError("The model is already LUT-packed.")
    scan = _scan(model_bytes)
    plan = [c for c in scan if isinstance(c, LutChoice)]
    if not plan:
        raise TFLiteModelError(_nothing_to_pack(scan))
    # The package's __init__ re-exports a function named `compress`; take the module itself.
    compress = _tflm("tensorflow.lite.micro.compression.compress")
    spec = _tflm("tensorflow.lite.micro.compression.spec")
    specs = [spec.Tensor(subgraph=c.subgraph, tensor=c.tensor, compression=[spec.LookUpTableCompression(
        index_bitwidth=c.index_bits, mode=spec.PerTensor() if c.axis is None else spec.PerChannel(axis=c.axis))])
        for c in plan]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return bytes(compress.compress(bytes(model_bytes), specs))
    except Exception as e:  # the library's CompressionError and anything under it
        raise TFLiteModelError(f"TFLite Micro LUT compression failed ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''}).") from None


def run_tflm(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """Float outputs [N, classes] on the TFLite Micro runtime, one image per invoke.

    A small runner for packed models (LiteRT cannot run DECODE); int8 I/O is
    (de)quantized with the model's own parameters, as `evaluate.run_tflite` does.
    """
    runtime = _tflm("python.tflite_micro.runtime")
    images = np.asarray(images, np.float32)
    try:
        it = runtime.Interpreter.from_bytes(bytes(model_bytes))
    except Exception as e:
        raise TFLiteModelError(f"The TFLite Micro runtime rejected the model ({str(e).splitlines()[0][:200]}).") \
            from None
    inp, out = it.get_input_details(0), it.get_output_details(0)
    if tuple(inp["shape"][1:]) != tuple(images.shape[1:]):
        raise DataError(f"Images of shape {images.shape[1:]} do not fit the model input {tuple(inp['shape'][1:])}.")
    iq, oq = inp["quantization_parameters"], out["quantization_parameters"]
    results = []
    for x in images:
        x = x[None]
        if inp["dtype"] == np.int8:
            x = np.clip(np.round(x / iq["scales"][0]) + iq["zero_points"][0], -128, 127).astype(np.int8)
        it.set_input(x, 0)
        it.invoke()
        y = np.asarray(it.get_output(0))
        if out["dtype"] == np.int8:
            y = (y.astype(np.float32) - oq["zero_points"][0]) * oq["scales"][0]
        results.append(np.asarray(y, np.float32).reshape(-1))
    return np.stack(results)


# ----------------------------------------------------------------------------- reading packed tables

def _decode_lut(encoded: np.ndarray, ancillary: np.ndarray, shape, dtype) -> dict:
    """Undo one LUT-packed tensor (read-only use of the format the library wrote: DCM byte 0 is the
    decode type, 0 = LUT; byte 5 holds axis << 4 | index bits, axis 15 = one table; byte 6 the
    table stride; tables follow the 16-byte DCM)."""
    anc = np.asarray(ancillary, np.uint8)
    if anc.size < _DCM_BYTES or anc[0] != 0:
        raise TFLiteModelError("A DECODE operator's ancillary data is not a LUT table.")
    bits, axis_field, stride = int(anc[5] & 0x7), int(anc[5] >> 4), int(anc[6])
    dtype = np.dtype(dtype)
    tables = np.frombuffer(anc[_DCM_BYTES:].tobytes(), dtype).reshape(-1, max(stride, 1))
    n = int(np.prod(shape))
    raw = np.unpackbits(np.asarray(encoded, np.uint8))[:n * bits].reshape(n, bits)
    idx = (raw.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(axis=1).reshape(shape)
    if axis_field == 15:
        values, axis = tables[0][idx], None
    else:
        axis = axis_field
        moved = np.moveaxis(idx, axis, 0)
        values = np.moveaxis(np.stack([tables[c][moved[c]] for c in range(moved.shape[0])]), 0, axis)
    return {"values": values, "index_bits": bits, "axis": axis, "tables": int(tables.shape[0]),
            "table_len": stride, "packed_bytes": int(np.asarray(encoded).size + anc.size)}


def unpacked_weights(model) -> dict:
    """{(subgraph, DECODE output tensor): decoded info} for every LUT DECODE in a ModelT."""
    out = {}
    for si, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            if _custom_code(model, op) != DECODE_OP:
                continue
            ins, outs = list(op.inputs), list(op.outputs)
            for k, o in enumerate(outs):  # inputs come in (encoded, ancillary) pairs, one per output
                enc = tfm.tensor_array(model, sg, ins[2 * k])
                anc = tfm.tensor_array(model, sg, ins[2 * k + 1])
                t = sg.tensors[o]
                if enc is None or anc is None or t.type not in tfm._NP:
                    continue
                out[(si, int(o))] = _decode_lut(enc, anc, [int(d) for d in t.shape], tfm._NP[t.type])
    return out


def weight_tables(data: bytes) -> dict:
    """For `inspect`: whether the model is LUT-packed (TFLM only), and per weight tensor its
    distinct values and table size (as packed, or as `pack_lut` would pack it)."""
    model = tfm.read(data)
    decoded = unpacked_weights(model)
    planned = {} if decoded else {(c.subgraph, c.tensor): c for c in lut_plan(data)}
    rows = []
    for wop in tfm.weight_ops(model):
        sg = model.subgraphs[wop.subgraph]
        key = (wop.subgraph, int(wop.weight))
        t = sg.tensors[wop.weight]
        plain = int(np.prod(t.shape)) * np.dtype(tfm._NP.get(t.type, np.int8)).itemsize
        row = {"op": f"{wop.kind}#{wop.index}", "output": wop.output_name, "weight_tensor": int(wop.weight),
               "plain_bytes": plain}
        if key in decoded:
            d = decoded[key]
            row.update(packed=True, distinct_values=int(np.unique(d["values"]).size),
                       **{k: d[k] for k in ("index_bits", "axis", "tables", "table_len", "packed_bytes")})
        else:
            w = tfm.tensor_array(model, sg, wop.weight)
            c = planned.get(key)
            row.update(packed=False, distinct_values=int(np.unique(w).size) if w is not None else None,
                       index_bits=c.index_bits if c else None, axis=c.axis if c else None,
                       tables=c.tables if c else None, table_len=c.table_len if c else None,
                       packed_bytes=c.packed_bytes if c else None)
        rows.append(row)
    packed = bool(decoded)
    return {"lut_packed": packed,
            "runtime": ("TFLite Micro only (LUT-packed weights decoded by TFLM_DECODE ops; LiteRT cannot run it)"
                        if packed else "LiteRT and TFLite Micro"),
            "tables": rows}
