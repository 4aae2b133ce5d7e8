"""Optional target tools: is a package installed, which version; what every placement estimate shares."""
from __future__ import annotations

import dataclasses

from tflite_retroq.errors import TargetError


def _require(module: str, package: str) -> None:
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise TargetError(f"{package} is not installed; install it with `pip install -e '.[targets]'` in the "
                          f"tflite_retroq clone (or `pip install {package}`).")


def _version(package: str) -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def last_line(text: str) -> str:
    """A tool's own reason: the last line it printed that is not one of Vela's 'Warning: No ...' notes."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: No ")]
    return (lines[-1] if lines else "no message")[:300]


class Placement:
    """Mixin of the compiler estimates (Vela, Qualcomm): operators on the NPU vs the CPU.

    Subclasses are frozen dataclasses with `npu_ops`, `cpu_ops` and a `cpu_op_types` tuple."""

    @property
    def npu_fraction(self) -> float:
        total = self.npu_ops + self.cpu_ops
        return self.npu_ops / total if total else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cpu_op_types"] = list(self.cpu_op_types)
        d["npu_fraction"] = self.npu_fraction
        return d
