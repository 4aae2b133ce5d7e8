"""What a model costs on DSP/NPU-style targets, measured by real tools instead of guessed.

On CPU kernels per-tensor and per-channel int8 run at the same speed, so the value of
per-tensor, low-bit and non-uniform weights shows only on other targets. Three stand in:

* Arm Ethos-U NPUs through Vela (``ethos-u-vela``), Arm's offline compiler: estimated
  inference time, NPU vs CPU operator placement, SRAM and flash use, and weight bytes
  after its weight encoder (which rewards few distinct values).
* The TFLite Micro runtime (``tflite-micro``): the tensor arena a model needs and its
  outputs; what microcontrollers and DSPs with TFLM ports run.
* LiteRT's three CPU kernel paths, single-threaded latency medians.

Vela and TFLM are optional (``pip install tflite_retroq[targets]``); a missing tool or a
model it rejects raises TargetError.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from tflite_retroq.errors import ConfigError, TargetError
from tflite_retroq.tflite import model as tfm

# Accelerator -> (system config, memory mode) of Vela's Arm/vela.ini. All three are the
# microcontroller-class systems that keep weights in off-chip flash and activations in
# SRAM, so flash and SRAM figures compare across accelerators (Vela's own defaults for
# U65/U85 are server-class systems with weights in DRAM).
ETHOS_U: Dict[str, Tuple[str, str]] = {
    "ethos-u55-128": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u65-256": ("Ethos_U65_Embedded", "Shared_Sram"),
    "ethos-u85-256": ("Ethos_U85_SYS_Flash_High", "Shared_Sram"),
}
TFLM = "tflm"
TARGETS: Tuple[str, ...] = tuple(ETHOS_U) + (TFLM,)
RESOLVERS: Tuple[str, ...] = ("auto", "builtin", "reference")

_VELA_MAIN = "import sys; from ethosu.vela.vela import main; sys.exit(main())"
_KIB = 1024


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ConfigError(f"target {target!r} is not known; choose one of {', '.join(TARGETS)}.")
    return target


def _require(module: str, package: str) -> None:
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise TargetError(f"{package} is not installed; install it with `pip install tflite_retroq[targets]` "
                          f"(or `pip install {package}`).")


def _version(package: str) -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# ----------------------------------------------------------------------------- Vela (Ethos-U)

@dataclasses.dataclass(frozen=True)
class VelaEstimate:
    """Vela's summary of one compilation (times in seconds, sizes in bytes)."""

    accelerator: str
    system_config: str
    memory_mode: str
    inference_time_s: float
    inferences_per_second: float
    npu_ops: int
    cpu_ops: int
    cpu_op_types: Tuple[str, ...]     # operators left for the CPU in Vela's output model
    original_weight_bytes: int
    encoded_weight_bytes: int         # after Vela's weight encoder
    sram_bytes: int
    flash_bytes: int                  # on-chip + off-chip flash: weights, biases, command stream
    dram_bytes: int
    macs: int
    cycles: int
    vela_version: str

    @property
    def npu_fraction(self) -> float:
        total = self.npu_ops + self.cpu_ops
        return self.npu_ops / total if total else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cpu_op_types"] = list(self.cpu_op_types)
        d["npu_fraction"] = self.npu_fraction
        return d


def _ops_line(text: str, kind: str) -> int:
    m = re.search(rf"^{kind} operators\s*=\s*(\d+)", text, re.MULTILINE)
    if m is None:
        raise TargetError(f"Vela's summary has no '{kind} operators' line; this Vela version "
                          f"({_version('ethos-u-vela')}) prints an unknown format.")
    return int(m.group(1))


def _why(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: No ")]
    return (lines[-1] if lines else "no message")[:300]


def vela_estimate(model_bytes: bytes, accelerator: str = "ethos-u55-128", *, system_config: Optional[str] = None,
                  memory_mode: Optional[str] = None, timeout_s: float = 900.0) -> VelaEstimate:
    """Compile an int8 .tflite with Vela for `accelerator` (ethos-u55-128, ethos-u65-256, ethos-u85-256 or any
    --accelerator-config Vela knows) and parse its summary. Runs Vela in a subprocess and a temporary directory."""
    model_bytes = bytes(model_bytes)
    tfm.read(model_bytes)  # TFLiteModelError for anything that is not a .tflite
    _require("ethosu.vela", "ethos-u-vela")
    default_sys, default_mem = ETHOS_U.get(accelerator, (None, None))
    system_config = system_config or default_sys
    memory_mode = memory_mode or default_mem
    with tempfile.TemporaryDirectory(prefix="retroq-vela-") as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(model_bytes)
        out_dir = os.path.join(tmp, "out")
        cmd = [sys.executable, "-c", _VELA_MAIN, path, "--accelerator-config", accelerator,
               "--output-dir", out_dir]
        if system_config or memory_mode:
            cmd += ["--config", "Arm/vela.ini"]
        if system_config:
            cmd += ["--system-config", system_config]
        if memory_mode:
            cmd += ["--memory-mode", memory_mode]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise TargetError(f"Vela did not finish within {timeout_s:.0f} s for {accelerator}.") from None
        text = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0:
            raise TargetError(f"Vela rejected the model for {accelerator} (exit {proc.returncode}: {_why(text)}).")
        summaries = glob.glob(os.path.join(out_dir, "*_summary_*.csv"))
        if not summaries:
            raise TargetError(f"Vela wrote no summary for {accelerator} ({_why(text)}).")
        with open(summaries[0], newline="") as f:
            row = next(csv.DictReader(f))
        compiled = glob.glob(os.path.join(out_dir, "*_vela.tflite"))
        cpu_types: Tuple[str, ...] = ()
        if compiled:
            with open(compiled[0], "rb") as f:
                out = tfm.read(f.read())
            cpu_types = tuple(sorted({tfm.op_name(out, op) for sg in out.subgraphs for op in sg.operators
                                      if not _is_ethosu(out, op)}))
    try:
        return VelaEstimate(
            accelerator=accelerator, system_config=row["system_config"], memory_mode=row["memory_mode"],
            inference_time_s=float(row["inference_time"]), inferences_per_second=float(row["inferences_per_second"]),
            npu_ops=_ops_line(text, "NPU"), cpu_ops=_ops_line(text, "CPU"), cpu_op_types=cpu_types,
            original_weight_bytes=int(float(row["total_original_weights"])),
            encoded_weight_bytes=int(float(row["total_npu_encoded_weights"])),
            sram_bytes=int(round(float(row["sram_memory_used"]) * _KIB)),
            flash_bytes=int(round((float(row["on_chip_flash_memory_used"])
                                   + float(row["off_chip_flash_memory_used"])) * _KIB)),
            dram_bytes=int(round(float(row["dram_memory_used"]) * _KIB)),
            macs=int(float(row["nn_macs"])), cycles=int(float(row["cycles_total"])),
            vela_version=_version("ethos-u-vela"))
    except (KeyError, ValueError) as e:
        raise TargetError(f"Vela's summary CSV lacks an expected field ({e}); Vela "
                          f"{_version('ethos-u-vela')} is not supported.") from None


def _is_ethosu(model, op) -> bool:
    code = model.operatorCodes[op.opcodeIndex]
    custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
    return custom == "ethos-u"


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
                                        else _why(proc.stderr))
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


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


# ----------------------------------------------------------------------------- LiteRT latency

def litert_latencies(models: Mapping[str, bytes], resolvers: Sequence[str] = RESOLVERS, *, runs: int = 30,
                     warmup: int = 3, num_threads: int = 1, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Median single-image latency (seconds) of each model on each LiteRT resolver.

    Runs are interleaved round-robin over models and resolvers, so load on a shared machine
    hits every entry alike and ratios between entries are fair.
    """
    from tflite_retroq.evaluate import _interpreter
    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs={runs} must be >= 1 and warmup={warmup} >= 0.")
    rng = np.random.default_rng(seed)
    its = {}
    for name, data in models.items():
        for r in resolvers:
            it = _interpreter(bytes(data), r, num_threads)
            d = it.get_input_details()[0]
            shape = [1] + [int(s) for s in d["shape"][1:]]
            if list(d["shape"]) != shape:
                it.resize_tensor_input(d["index"], shape)
            it.allocate_tensors()
            dtype = np.dtype(d["dtype"])
            if dtype.kind in "iu":
                x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, shape).astype(dtype)
            else:
                x = rng.standard_normal(shape).astype(dtype)
            it.set_tensor(d["index"], x)
            for _ in range(warmup):
                it.invoke()
            its[(name, r)] = it
    times: Dict[Tuple[str, str], list] = {k: [] for k in its}
    for _ in range(runs):
        for key, it in its.items():
            t0 = time.perf_counter()
            it.invoke()
            times[key].append(time.perf_counter() - t0)
    result: Dict[str, Dict[str, float]] = {name: {} for name in models}
    for (name, r), ts in times.items():
        result[name][r] = float(np.median(ts))
    return result


def litert_latency(model_bytes: bytes, resolvers: Sequence[str] = RESOLVERS, *, runs: int = 30, warmup: int = 3,
                   num_threads: int = 1) -> Dict[str, float]:
    """Median single-image latency (seconds) per LiteRT resolver, num_threads=1 by default."""
    return litert_latencies({"model": model_bytes}, resolvers, runs=runs, warmup=warmup,
                            num_threads=num_threads)["model"]


# ----------------------------------------------------------------------------- one entry point for the CLI

def estimate(model_bytes: bytes, target: str) -> dict:
    """Plain-dict estimate of one named target (an Ethos-U configuration or 'tflm')."""
    check_target(target)
    if target == TFLM:
        return dict(tflm_run(model_bytes).to_dict(), target=target)
    return dict(vela_estimate(model_bytes, target).to_dict(), target=target)
