"""Qualcomm Hexagon NPU (HTP) through LiteRT's ahead-of-time compiler plugin: placement, partitions, size.

`ai-edge-litert` ships the Qualcomm compiler plugin and its `apply_plugin_main` tool; the
HTP host libraries it links (libQnnHtp.so, libQnnSystem.so, ...) come from PyPI's
`onnxruntime-qnn` (``pip install -e ".[qualcomm]"`` in the clone). The plugin also links
`libQnnLpai.so` (the low-power AI backend), which that wheel lacks and the HTP backend never
calls: an empty stub built with the system C compiler in the run's temporary directory
satisfies the loader. The compiler runs in a child process (it is native code that may
abort). Timing is not reported: offline there is no device, only placement and sizes.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from typing import List, Tuple

from tflite_retroq.errors import TargetError
from tflite_retroq.targets.tools import Placement, _version, last_line
from tflite_retroq.tflite import model as tfm

PREFIX = "qualcomm-"
_DISPATCH = "DISPATCH_OP"


def _soc_models() -> Tuple[str, ...]:
    """The SoCs the installed plugin lists (ai_edge_litert's SocModel), lower case, without 'ALL'."""
    try:
        from ai_edge_litert.aot.vendors.qualcomm.target import SocModel
    except Exception:  # noqa: BLE001 - an ai-edge-litert without the AOT tools lists none
        return ()
    return tuple(s.value.lower() for s in SocModel if s.value != "ALL")


QUALCOMM: Tuple[str, ...] = tuple(PREFIX + s for s in _soc_models())


@dataclasses.dataclass(frozen=True)
class RejectedOp:
    """An operator the compiler left on the CPU, with its reason."""

    index: int      # operator index in subgraph 0 of the input model
    op: str         # LiteRT's operator name, e.g. 'Shape'
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class HexagonEstimate(Placement):
    """What the Qualcomm compiler did with a model (sizes in bytes)."""

    soc: str
    npu_ops: int                   # operators the plugin selected for the NPU
    cpu_ops: int
    partitions: int                # NPU partitions (each a DISPATCH_OP; between them the CPU runs)
    cpu_op_types: Tuple[str, ...]  # operators left in the compiled model beside the NPU dispatches
    rejected: Tuple[RejectedOp, ...]
    compiled_bytes: int            # the compiled .tflite (NPU context binaries embedded)
    context_bytes: int             # the HTP context binaries alone
    litert_version: str
    qnn_sdk_version: str           # the HTP SDK the plugin ran with
    onnxruntime_qnn_version: str   # the wheel that supplied the HTP host libraries

    def to_dict(self) -> dict:
        return dict(super().to_dict(), rejected=[r.to_dict() for r in self.rejected])


def soc_of(target: str) -> str:
    """'qualcomm-sm8650' -> 'SM8650' (TargetError for a SoC the plugin does not list)."""
    if not target.startswith(PREFIX) or target not in QUALCOMM:
        raise TargetError(f"{target!r} is not a Qualcomm target; choose one of {', '.join(QUALCOMM) or '(none)'}.")
    return target[len(PREFIX):].upper()


def _qnn_dir() -> str:
    """onnxruntime-qnn's directory of HTP host libraries."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("onnxruntime_qnn")
    except (ImportError, ValueError):
        spec = None
    where = [os.path.dirname(spec.origin)] if spec is not None and spec.origin else []
    where += list(spec.submodule_search_locations or []) if spec is not None else []
    for d in where:
        if os.path.exists(os.path.join(d, "libQnnHtp.so")):
            return d
    raise TargetError("The Qualcomm HTP libraries are not installed; install them with "
                      "`pip install -e '.[qualcomm]'` in the tflite_retroq clone (or `pip install onnxruntime-qnn`).")


def _tools() -> Tuple[str, str]:
    """(apply_plugin_main, the Qualcomm compiler plugin's directory) from ai-edge-litert."""
    import ai_edge_litert
    root = os.path.dirname(ai_edge_litert.__file__)
    tool = os.path.join(root, "tools", "apply_plugin_main")
    plugin = os.path.join(root, "vendors", "qualcomm", "compiler")
    if not os.path.exists(tool) or not os.path.exists(os.path.join(plugin, "libLiteRtCompilerPlugin_Qualcomm.so")):
        raise TargetError(f"ai-edge-litert {_version('ai-edge-litert')} has no Qualcomm AOT compiler on this "
                          "platform (tools/apply_plugin_main, vendors/qualcomm); it ships for Linux x86-64.")
    return tool, plugin


def _lpai_stub(qnn_dir: str, tmp: str) -> List[str]:
    """Library directories that complete the plugin's dependencies: an empty libQnnLpai.so unless present."""
    if os.path.exists(os.path.join(qnn_dir, "libQnnLpai.so")):
        return []
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise TargetError("The Qualcomm plugin links libQnnLpai.so, which onnxruntime-qnn lacks; an empty stub "
                          "is built with the system C compiler, and none was found (install gcc).")
    src, lib = os.path.join(tmp, "stub.c"), os.path.join(tmp, "libQnnLpai.so")
    with open(src, "w") as f:
        f.write("/* empty: satisfies the loader; the HTP backend never calls the LPAI backend */\n")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-o", lib, src], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TargetError(f"Building the libQnnLpai.so stub failed ({last_line(proc.stderr)}).")
    return [tmp]


# ----------------------------------------------------------------------------- the compiler's log

_REJECTED = re.compile(r"LiteRT Op #(\d+) '(\w+)' \(code=\d+\) is not supported in Qualcomm Compiler\.")
_QNN_NAME = re.compile(r"QNN op validation failed: '([^']+)'")
_VALIDATOR = re.compile(r"op validator ([^:\s]+):\S* failed")
_QNN_ERROR = re.compile(r"\[\s*ERROR\s*\]\s+(.*?)\s*$")
_PARTITIONED = re.compile(r"Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops\. "
                          r"resulted in (\d+) partitions\.")
_CONTEXT = re.compile(r"Serialized a context bin of size \(bytes\): (\d+)")
_QNN_VERSION = re.compile(r"Applying plugin with SDK version: v?([\d.]+)")
_GENERIC = ("Op specific validation failed.",)


def _validator_reasons(lines: List[str]) -> dict:
    """QNN op name -> the validator's own error lines (they precede its 'op validator NAME failed' line)."""
    reasons, pending = {}, []
    for line in lines:
        m = _VALIDATOR.search(line)
        if m:
            if pending:
                reasons.setdefault(m.group(1), list(dict.fromkeys(pending)))
            pending = []
            continue
        e = _QNN_ERROR.search(line)
        if e and "<E>" not in e.group(1) and e.group(1) not in _GENERIC and e.group(1):
            pending.append(e.group(1))
    return reasons


def parse_log(text: str) -> Tuple[Tuple[RejectedOp, ...], Tuple[int, int, int], int]:
    """(rejected ops, (selected ops, total ops, partitions) over all subgraphs, context binary bytes)."""
    lines = text.splitlines()
    reasons = _validator_reasons(lines)
    rejected, qnn_name = [], None
    for line in lines:
        q = _QNN_NAME.search(line)
        if q:
            qnn_name = q.group(1)
        m = _REJECTED.search(line)
        if m:
            why = reasons.get(qnn_name or "", [])
            reason = ("QNN op validation: " + "; ".join(why) if why else "not supported in Qualcomm Compiler")
            rejected.append(RejectedOp(int(m.group(1)), m.group(2), reason))
            qnn_name = None
    parts = _PARTITIONED.findall(text)
    if not parts:
        raise TargetError(f"The Qualcomm compiler printed no partition summary ({last_line(text)}); "
                          f"ai-edge-litert {_version('ai-edge-litert')} prints an unknown format.")
    totals = tuple(sum(int(p[k]) for p in parts) for k in (1, 2, 3))
    context = sum(int(n) for n in _CONTEXT.findall(text))
    return tuple(rejected), totals, context  # type: ignore[return-value]


def hexagon_estimate(model_bytes: bytes, target: str = "qualcomm-sm8650", *, timeout_s: float = 600.0
                     ) -> HexagonEstimate:
    """Compile a .tflite for a Qualcomm SoC's HTP with LiteRT's AOT plugin (in a child process) and report
    NPU vs CPU operators, NPU partitions, each operator left on the CPU with the compiler's reason, and the
    compiled size. TargetError when the libraries are missing or the compiler fails."""
    model_bytes = bytes(model_bytes)
    tfm.read(model_bytes)  # TFLiteModelError for anything that is not a .tflite
    soc = soc_of(target)
    qnn_dir = _qnn_dir()
    tool, plugin = _tools()
    with tempfile.TemporaryDirectory(prefix="retroq-qnn-") as tmp:
        libs = _lpai_stub(qnn_dir, tmp) + [qnn_dir]
        src, out = os.path.join(tmp, "model.tflite"), os.path.join(tmp, "compiled.tflite")
        with open(src, "wb") as f:
            f.write(model_bytes)
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(libs + [os.environ.get("LD_LIBRARY_PATH", "")]))
        cmd = [tool, "--cmd=apply", f"--model={src}", f"--o={out}", "--soc_manufacturer=Qualcomm",
               f"--soc_model={soc}", f"--libs={plugin}", "--err=--"]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                  timeout=timeout_s, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise TargetError(f"The Qualcomm compiler did not finish within {timeout_s:.0f} s for {soc}.") from None
        text = proc.stdout
        if proc.returncode != 0 or not os.path.exists(out):
            why = (f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}")
            raise TargetError(f"The Qualcomm compiler failed for {soc} ({why}: {_error_line(text)}).")
        with open(out, "rb") as f:
            compiled = f.read()
    rejected, (selected, total, partitions), context = parse_log(text)
    m = tfm.read(compiled)
    cpu_types = tuple(sorted({tfm.op_name(m, op) for sg in m.subgraphs for op in sg.operators
                              if _custom(m, op) != _DISPATCH}))
    qnn = _QNN_VERSION.search(text)
    return HexagonEstimate(soc=soc, npu_ops=selected, cpu_ops=total - selected, partitions=partitions,
                           cpu_op_types=cpu_types, rejected=rejected, compiled_bytes=len(compiled),
                           context_bytes=context, litert_version=_version("ai-edge-litert"),
                           qnn_sdk_version=qnn.group(1) if qnn else "?",
                           onnxruntime_qnn_version=_version("onnxruntime-qnn"))


def _custom(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex].customCode
    return code.decode() if isinstance(code, bytes) else (code or "")


def _error_line(text: str) -> str:
    """The compiler's own last error, not its closing banner."""
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "error" in ln.lower()]
    return (errors[-1] if errors else last_line(text))[:300]
