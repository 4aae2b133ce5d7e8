"""`retroq inspect MODEL.tflite`: the quantization table, and estimates on named targets."""
from __future__ import annotations

from typing import Sequence

from tflite_retroq.cli.common import emit, say
from tflite_retroq.cli.flags import flag, positional, target_names


def cmd_inspect(args: Sequence[str]) -> int:
    path = positional("inspect", args, "a .tflite file")
    targets = target_names()
    from tflite_retroq.tflite.model import read_bytes
    data = read_bytes(path)
    from tflite_retroq.tflite.inspect import inspect_model
    info = inspect_model(data)
    estimates = target_estimates(data, targets)  # every estimate done before anything is printed
    if flag("json"):
        from tflite_retroq.io_utils import to_json
        extra = {"targets": estimates} if targets else {}
        emit(to_json(dict(info, path=path, **extra)))
    else:
        from tflite_retroq.reports.report import format_inspect
        say(f"{path}")
        say(format_inspect(info))
        if targets:
            from tflite_retroq.reports.report import format_targets
            say("")
            say(format_targets(estimates))
    return 0



def target_estimates(data: bytes, targets: Sequence[str]) -> dict:
    from tflite_retroq.targets.estimate import estimate
    return {t: estimate(data, t) for t in targets}
