"""One entry point for the CLI: a named target's estimate as a plain dict."""
from __future__ import annotations

from typing import Tuple

from tflite_retroq.errors import ConfigError
from tflite_retroq.targets.tflm import TFLM, tflm_run
from tflite_retroq.targets.vela import ETHOS_U, vela_estimate

TARGETS: Tuple[str, ...] = tuple(ETHOS_U) + (TFLM,)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ConfigError(f"target {target!r} is not known; choose one of {', '.join(TARGETS)}.")
    return target


def estimate(model_bytes: bytes, target: str) -> dict:
    """Plain-dict estimate of one named target (an Ethos-U configuration or 'tflm')."""
    check_target(target)
    if target == TFLM:
        return dict(tflm_run(model_bytes).to_dict(), target=target)
    return dict(vela_estimate(model_bytes, target).to_dict(), target=target)
