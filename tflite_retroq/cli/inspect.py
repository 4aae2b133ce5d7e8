"""`retroq inspect MODEL.tflite`: the quantization table, and estimates on named targets.

Each target is estimated on its own: one that rejects the model (or whose tool is missing)
reports its error in its own entry and never hides the others' results. The command then
exits with code 1 (the inspection ran, some target failed), after one `retroq: error:` line
per failed target on stderr; 2 stays reserved for bad input, as in every other command.
"""
from __future__ import annotations

import sys
from typing import Sequence

from tflite_retroq.cli.common import check_tflite_file, emit, say
from tflite_retroq.cli.flags import flag, positional, target_names, vela_options


def cmd_inspect(args: Sequence[str]) -> int:
    path = positional("inspect", args, "a .tflite file")
    targets = target_names()
    options = vela_options(targets)
    from tflite_retroq.tflite.model import read_bytes
    data = read_bytes(check_tflite_file(path))
    from tflite_retroq.tflite.inspect import inspect_model
    info = inspect_model(data)
    from tflite_retroq.targets.estimate import estimates
    results, failed = estimates(data, targets, **options)  # every estimate done before anything is printed
    if flag("json"):
        from tflite_retroq.io_utils import to_json
        extra = {"targets": results} if targets else {}
        emit(to_json(dict(info, path=path, **extra)))
    else:
        from tflite_retroq.reports.report import format_inspect
        say(f"{path}")
        say(format_inspect(info))
        if targets:
            from tflite_retroq.reports.report import format_targets
            say("")
            say(format_targets(results))
    for name, r in results.items():
        if "error" in r:
            sys.stderr.write(f"retroq: error: target {name}: {' '.join(r['error'].split())}\n")
    return 1 if failed else 0
