"""The `retroq` entry point (an absl app): dispatch to a verb, map every error to one line.

Flags are parsed and every option is validated (and output paths checked for
writability) before TensorFlow is imported, so mistakes fail in a fraction of a
second. Every RetroQError becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import List, Optional

from absl import app, flags

from tflite_retroq.cli.analyze import cmd_analyze
from tflite_retroq.cli.convert import cmd_convert
from tflite_retroq.cli.flags import ALLOWED, COMMANDS, FLAGS, USAGE, UsageError, as_flags, check_flags_apply
from tflite_retroq.cli.inspect import cmd_inspect
from tflite_retroq.cli.synthesize import cmd_synthesize
from tflite_retroq.errors import ConfigError, RetroQError, is_out_of_memory
from tflite_retroq.io_utils import native_logs_silenced

_HANDLERS = {"synthesize": cmd_synthesize, "convert": cmd_convert, "analyze": cmd_analyze, "inspect": cmd_inspect}


# ----------------------------------------------------------------------------- entry point

def _error(message: str, code: int = 2, prefix: str = "error") -> int:
    line = " ".join(str(message).split())  # exactly one line
    sys.stderr.write(f"retroq: {prefix}: {line}\n")
    sys.stderr.flush()
    return code


def _parse_flags(argv: List[str]) -> List[str]:
    for i, a in enumerate(argv[1:]):
        if a == "--":
            break
        if a in ("-h", "--help", "-?", "--helpshort") or (i == 0 and a == "help"):
            sys.stdout.write(USAGE)
            sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(_error(e))


def _show_warnings(caught) -> None:
    """Python warnings raised during a successful command, one line each, without repeats."""
    seen = set()
    for w in caught:
        line = " ".join(str(w.message).split())
        if line and line not in seen:
            seen.add(line)
            sys.stderr.write(f"retroq: warning: {line}\n")
    sys.stderr.flush()


def _out_of_memory_message(command: str) -> str:
    """What to lower, naming only flags this build of the CLI has."""
    knobs = [f"--{n}" for n in ("batch-size", "samples", "images") if n in FLAGS and n in ALLOWED.get(command, ())]
    fix = f"lower {' or '.join(knobs)}" if knobs else "use a smaller model or input"
    return f"out of memory while running `retroq {command}`; {fix} (fewer images held at once) and try again."


def main(argv: List[str]) -> int:
    args = list(argv[1:])
    try:
        if not args:
            raise UsageError(f"missing command; choose one of {', '.join(COMMANDS)} (see `retroq --help`).")
        command, rest = args[0], args[1:]
        if command not in _HANDLERS:
            raise UsageError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}.")
        check_flags_apply(command)
        with warnings.catch_warnings(record=True) as caught:  # the filters in force still apply
            code = _HANDLERS[command](rest)
        _show_warnings(caught)  # on success only: after an error, its one line says it all
        return code
    except ConfigError as e:  # also those raised once the model is known (e.g. --samples x classes)
        return _error(as_flags(str(e)))
    except RetroQError as e:
        return _error(e)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        if os.environ.get("RETROQ_TRACEBACK"):
            raise
        if is_out_of_memory(e):
            return _error(_out_of_memory_message(args[0] if args else "retroq"))
        return _error(f"{type(e).__name__}: {e} (unexpected; set RETROQ_TRACEBACK=1 for the traceback)",
                      1, "internal error")


def run(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    main_module = sys.modules.get("__main__")
    if main_module is not None and not getattr(main_module, "__doc__", None):
        main_module.__doc__ = USAGE  # absl's --helpfull prints it
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    with native_logs_silenced():
        app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
