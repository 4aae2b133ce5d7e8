"""Arm Ethos-U through Vela, Arm's offline compiler: time, placement, SRAM/flash, encoded weights."""
from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Optional, Tuple

from tflite_retroq.errors import ConfigError, TargetError
from tflite_retroq.targets.tools import Placement, _require, _version, last_line
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

_VELA_MAIN = "import sys; from ethosu.vela.vela import main; sys.exit(main())"
_KIB = 1024

# ----------------------------------------------------------------------------- Vela (Ethos-U)

@dataclasses.dataclass(frozen=True)
class VelaEstimate(Placement):
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



def _ops_line(text: str, kind: str) -> int:
    m = re.search(rf"^{kind} operators\s*=\s*(\d+)", text, re.MULTILINE)
    if m is None:
        raise TargetError(f"Vela's summary has no '{kind} operators' line; this Vela version "
                          f"({_version('ethos-u-vela')}) prints an unknown format.")
    return int(m.group(1))


def vela_configs() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(system configs, memory modes) that Vela's own Arm/vela.ini defines."""
    import configparser
    import importlib.util
    _require("ethosu.vela", "ethos-u-vela")
    root = list(importlib.util.find_spec("ethosu").submodule_search_locations)[0]
    ini = configparser.ConfigParser()
    ini.read(os.path.join(root, "config_files", "Arm", "vela.ini"))
    def names(kind):
        return tuple(sec.split(".", 1)[1] for sec in ini.sections() if sec.startswith(kind + "."))
    return names("System_Config"), names("Memory_Mode")


def _check_config(value: Optional[str], known: Tuple[str, ...], what: str) -> None:
    if value is not None and known and value not in known:
        raise ConfigError(f"{what} {value!r} is not in Vela's Arm/vela.ini; choose one of {', '.join(known)}.")


def vela_estimate(model_bytes: bytes, accelerator: str = "ethos-u55-128", *, system_config: Optional[str] = None,
                  memory_mode: Optional[str] = None, timeout_s: float = 900.0) -> VelaEstimate:
    """Compile an int8 .tflite with Vela for `accelerator` (ethos-u55-128, ethos-u65-256, ethos-u85-256 or any
    --accelerator-config Vela knows) and parse its summary. Runs Vela in a subprocess and a temporary directory.
    `system_config` / `memory_mode`: sections of Vela's Arm/vela.ini (default: ETHOS_U's microcontroller-class
    system for the accelerator); an unknown name is a ConfigError."""
    model_bytes = bytes(model_bytes)
    tfm.read(model_bytes)  # TFLiteModelError for anything that is not a .tflite
    _require("ethosu.vela", "ethos-u-vela")
    if system_config is not None or memory_mode is not None:
        systems, modes = vela_configs()
        _check_config(system_config, systems, "system_config")
        _check_config(memory_mode, modes, "memory_mode")
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
            raise TargetError(f"Vela rejected the model for {accelerator} (exit {proc.returncode}: {last_line(text)}).")
        summaries = glob.glob(os.path.join(out_dir, "*_summary_*.csv"))
        if not summaries:
            raise TargetError(f"Vela wrote no summary for {accelerator} ({last_line(text)}).")
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
