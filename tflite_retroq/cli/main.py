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
from tflite_retroq.cli.common import ReaderGone, emit, stdout_gone
from tflite_retroq.cli.flags import (ALLOWED, COMMANDS, FLAGS, USAGE, UsageError, as_flags, check_flags_apply,
                                     check_own_flags, help_requested)
from tflite_retroq.cli.inspect import cmd_inspect
from tflite_retroq.cli.synthesize import cmd_synthesize
from tflite_retroq.errors import ConfigError, RetroQError, is_out_of_memory
from tflite_retroq.io_utils import native_logs_silenced

_HANDLERS = {"synthesize": cmd_synthesize, "convert": cmd_convert, "analyze": cmd_analyze, "inspect": cmd_inspect}


# ----------------------------------------------------------------------------- entry point

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away (`| head -1`)


def _error(message: str, code: int = 2, prefix: str = "error") -> int:
    line = " ".join(str(message).split())  # exactly one line
    try:
        sys.stderr.write(f"retroq: {prefix}: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # stderr closed or full: the exit code still says it
        pass
    return code


def _standard_streams() -> Optional[str]:
    """Put /dev/null on closed fds 0-2, so no file we open later lands on them (a model written through
    `print`); return why stdout cannot be used, if it cannot. A closed stderr only loses the messages."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    if 1 in closed or sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
        return "standard output is closed; run retroq with stdout open (e.g. > /dev/null to discard it)."
    return None


def _parse_flags(argv: List[str]) -> List[str]:
    try:
        text = help_requested(argv)
        if text is not None:
            emit(text)
            sys.exit(0)
        check_own_flags(argv)
        return FLAGS(argv)
    except ReaderGone:
        stdout_gone()
        sys.exit(SIGPIPE_EXIT)
    except (flags.Error, RetroQError) as e:
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
    except ReaderGone:  # the reader of stdout went away (`| head -1`): nothing to say, nobody to say it to
        stdout_gone()
        return SIGPIPE_EXIT
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
    closed = _standard_streams()
    if closed:
        sys.exit(_error(closed))
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
    with native_logs_silenced():
        app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
