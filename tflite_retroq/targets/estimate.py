"""One entry point for the CLI: a named target's estimate as a plain dict."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from tflite_retroq.errors import ConfigError, TargetError
from tflite_retroq.targets.qualcomm import QUALCOMM, hexagon_estimate
from tflite_retroq.targets.tflm import TFLM, tflm_run
from tflite_retroq.targets.vela import ETHOS_U, vela_estimate

TARGETS: Tuple[str, ...] = tuple(ETHOS_U) + (TFLM,) + QUALCOMM


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ConfigError(f"target {target!r} is not known; choose one of {', '.join(TARGETS)}.")
    return target


def estimate(model_bytes: bytes, target: str, *, system_config: Optional[str] = None,
             memory_mode: Optional[str] = None) -> dict:
    """Plain-dict estimate of one named target (an Ethos-U configuration, 'tflm' or 'qualcomm-<soc>').
    `system_config` / `memory_mode` are Vela's (Arm/vela.ini) and apply to Ethos-U targets only."""
    check_target(target)
    if target == TFLM:
        return dict(tflm_run(model_bytes).to_dict(), target=target)
    if target in QUALCOMM:
        return dict(hexagon_estimate(model_bytes, target).to_dict(), target=target)
    return dict(vela_estimate(model_bytes, target, system_config=system_config, memory_mode=memory_mode).to_dict(),
                target=target)


def estimates(model_bytes: bytes, targets: Sequence[str], **vela_options) -> Tuple[Dict[str, dict], int]:
    """Every named target's estimate, each on its own: a target that rejects the model (TargetError) gets
    {"target", "error"} and never hides the others' results. Returns (estimates, number of failed targets)."""
    out: Dict[str, dict] = {}
    failed = 0
    for t in targets:
        try:
            out[t] = estimate(model_bytes, t, **vela_options)
        except TargetError as e:
            out[t] = {"target": t, "error": str(e)}
            failed += 1
    return out, failed
