"""The TFLite Micro runtime, in a child process: the tensor arena a model needs and its outputs."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

import numpy as np

from tflite_retroq.errors import TargetError
from tflite_retroq.targets.tools import _require, _version, last_line
from tflite_retroq.tflite import model as tfm

TFLM = "tflm"

# ----------------------------------------------------------------------------- TFLite Micro

@dataclasses.dataclass(frozen=True)
class TFLMResult:
    """TFLite Micro run: the arena the interpreter allocated and the (dequantized) outputs."""

    arena_bytes: int
    model_bytes: int
    outputs: np.ndarray = dataclasses.field(repr=False, compare=False)
    tflm_version: str = "?"

    def to_dict(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "model_bytes": self.model_bytes,
                "num_outputs": int(len(self.outputs)), "tflm_version": self.tflm_version}


# Runs in a child process: the TFLM runtime aborts the whole process (SIGSEGV) on, e.g., an arena
# that is too small, so it must not run inside the caller's interpreter.
_TFLM_CHILD = r"""
import sys, numpy as np
d = sys.argv[1]
try:
    from tflite_micro.python.tflite_micro import runtime
    it = runtime.Interpreter.from_bytes(open(d + "/model.tflite", "rb").read(), arena_size=int(sys.argv[2]))
    inp, out = it.get_input_details(0), it.get_output_details(0)
    x = np.load(d + "/inputs.npy")
    ys = []
    for i in range(len(x)):
        it.set_input(x[i:i + 1], 0)
        it.invoke()
        ys.append(np.array(it.get_output(0)).reshape(1, -1))
        if i == 0:
            sys.stdout.flush()
            sys.stderr.flush()
            it.print_allocations()
    q = out["quantization_parameters"]
    np.savez(d + "/outputs.npz", y=np.concatenate(ys), scale=np.asarray(q["scales"], np.float64),
             zero_point=np.asarray(q["zero_points"], np.int64))
except Exception as e:
    msg = " ".join(str(e).split())[:300] or type(e).__name__
    print("RETROQ-TFLM-ERROR: " + msg, file=sys.stderr, flush=True)
    sys.exit(3)
"""


def _input_detail(model_bytes: bytes) -> dict:
    m = tfm.read(model_bytes)
    sg = m.subgraphs[0]
    t = sg.tensors[sg.inputs[0]]
    if t.type not in tfm._NP:
        raise TargetError(f"Input type {t.type} of the model is not supported by the TFLM runner.")
    sc = tfm.scales(t)
    zp = t.quantization.zeroPoint if t.quantization is not None and t.quantization.zeroPoint is not None else [0]
    return {"shape": [int(d) for d in t.shape], "dtype": tfm._NP[t.type],
            "quantization": (float(sc[0]) if sc.size else 0.0, int(zp[0]) if len(zp) else 0)}


def _quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu":
        s, zp = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / s) + zp, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def tflm_run(model_bytes: bytes, images: Optional[np.ndarray] = None, *, arena_size: Optional[int] = None,
             timeout_s: float = 900.0) -> TFLMResult:
    """Run a .tflite on the TFLite Micro runtime, one image at a time (images in the model's float input space;
    None runs one all-zero input), and report the tensor arena it needed (recorded after the first invoke).

    The runtime runs in a child process, so a crash (too small an arena) becomes a TargetError.
    """
    model_bytes = bytes(model_bytes)
    tfm.read(model_bytes)
    _require("tflite_micro", "tflite-micro")
    inp = _input_detail(model_bytes)  # from the flatbuffer: LiteRT cannot load LUT-packed (DECODE) models
    shape = inp["shape"]
    if images is None:
        images = np.zeros([1] + shape[1:], np.float32)  # quantized to the input's zero point
    images = np.asarray(images, np.float32)
    if images.ndim != len(shape) or tuple(images.shape[1:]) != tuple(shape[1:]):
        raise TargetError(f"Images of shape {images.shape[1:]} do not fit the model input {tuple(shape[1:])}.")
    if shape[0] != 1:
        raise TargetError(f"The TFLite Micro runner takes batch-1 models; this one has batch {shape[0]}.")
    arena_size = int(arena_size or max(16 * len(model_bytes), 8 * 1024 * 1024))
    with tempfile.TemporaryDirectory(prefix="retroq-tflm-") as tmp:
        with open(os.path.join(tmp, "model.tflite"), "wb") as f:
            f.write(model_bytes)
        np.save(os.path.join(tmp, "inputs.npy"), _quantize_input(images, inp))
        try:
            proc = subprocess.run([sys.executable, "-c", _TFLM_CHILD, tmp, str(arena_size)], capture_output=True,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TargetError(f"The TFLite Micro runtime did not finish within {timeout_s:.0f} s.") from None
        if proc.returncode != 0:
            m = re.search(r"RETROQ-TFLM-ERROR: (.*)", proc.stderr)
            why = m.group(1) if m else (f"crashed with signal {-proc.returncode}" if proc.returncode < 0
                                        else last_line(proc.stderr))
            raise TargetError(f"The TFLite Micro runtime failed on the model ({why}); an operator may be "
                              f"unsupported, or the arena of {arena_size:,} bytes too small (arena_size=).")
        m = re.search(r"Arena allocation total (\d+) bytes", proc.stderr)
        if m is None:
            raise TargetError("The TFLite Micro runtime printed no arena report; this tflite-micro version "
                              f"({_version('tflite-micro')}) is not supported.")
        with np.load(os.path.join(tmp, "outputs.npz")) as z:
            y, scale, zp = z["y"], z["scale"], z["zero_point"]
    outputs = ((y.astype(np.float32) - np.float32(zp[0])) * np.float32(scale[0]) if y.dtype.kind in "iu"
               else y.astype(np.float32))
    return TFLMResult(arena_bytes=int(m.group(1)), model_bytes=len(model_bytes), outputs=outputs,
                      tflm_version=_version("tflite-micro"))
