"""Safe file I/O: atomic outputs, and input checks that never block or blame the wrong cause.

Outputs are written to a temporary file beside the target, then renamed: a failed or
interrupted run never leaves a half-written output behind. The result is a plain file
with the user's normal permissions (umask, or the mode of the file it replaces), never
the temporary's 0600. Inputs are checked with a non-blocking open, so a FIFO or a device
named as a model or dataset is refused instead of hanging the process.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Type

import numpy as np

from tflite_retroq.errors import OutputError, RetroQError


def _kind(mode: int) -> Optional[str]:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_readable(path: str, what: str, error: Type[RetroQError], hint: str) -> str:
    """Fail with `error` naming the real cause unless `path` is a regular file this process can read.

    `what` names the file ("Model file"), `hint` says how to fix a wrong path. The open is
    non-blocking, so a FIFO is reported instead of waiting forever for a writer.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{what} {path!r} does not exist; {hint}.") from None
    except IsADirectoryError:
        raise error(f"{what} {path!r} is a directory; {hint}.") from None
    except PermissionError:
        raise error(f"{what} {path!r} cannot be read (permission denied); give your user read access "
                    f"(e.g. chmod a+r) or copy it somewhere readable.") from None
    except OSError as e:
        raise error(f"{what} {path!r} cannot be opened ({e.strerror}); {hint}.") from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    if kind is not None:
        raise error(f"{what} {path!r} is {kind}, not a regular file; {hint}.")
    return path


def same_file(a: str, b: str) -> bool:
    """True if two paths name one file: same real path (symlinks resolved) or same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    ia = _identity(a)
    return ia is not None and ia == _identity(b)


def _identity(path: str) -> Optional[Tuple[int, int]]:
    """(st_dev, st_ino) of the file a path names through its links; None when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def input_files(path: str) -> List[str]:
    """Every file an input is made of: the file itself, or each file under a directory (a SavedModel's
    saved_model.pb, fingerprint.pb, variables/*, assets/*, ...)."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for root, _, names in os.walk(path):
        found.extend(os.path.join(root, n) for n in names)
    return found


def check_not_inputs(output: str, inputs: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Refuse an output path that is, or resolves into, any file of an input (`(description, path)` pairs).

    One rule for every kind of input: the output's real path (symlinks resolved) must not lie inside an
    input directory, and neither its real path nor its inode (hard links) may be that of any input file.
    """
    output = os.fspath(output)
    real, ident = os.path.realpath(output), _identity(output)
    for description, path in inputs:
        if not path:
            continue
        path = os.fspath(path)
        for f in input_files(path):
            if real == os.path.realpath(f) or (ident is not None and ident == _identity(f)):
                what = "" if f == path else f" (its file {os.path.relpath(f, path)!r})"
                raise OutputError(f"Output {output!r} is the {description}{what}; writing it would destroy the "
                                  "input. Choose another output path.")
        if os.path.isdir(path) and (real + os.sep).startswith(os.path.realpath(path) + os.sep):
            raise OutputError(f"Output {output!r} lies inside the {description} {path!r}; writing there would change "
                              "the input. Choose another output path, outside that directory.")


def check_writable(path: str) -> str:
    """Fail early (before expensive work) when `path` cannot be written as a regular file."""
    path = os.fspath(path)
    if not path:
        raise OutputError("The output path is empty; pass a file path with -o.")
    if os.path.isdir(path):
        raise OutputError(f"Output {path!r} is a directory; pass a file path.")
    try:
        kind = _kind(os.stat(path).st_mode)
    except OSError:
        kind = None  # does not exist yet (or a dangling link): the parent check decides
    if kind is not None:
        raise OutputError(f"Output {path!r} is {kind}; outputs are written as regular files, so choose a file path.")
    if os.path.isfile(path) and (not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222):
        # The rename would replace it anyway (it needs only the directory): respect the protection instead,
        # also as root, whom os.access always lets write: no write bit at all means "do not replace".
        raise OutputError(f"Output {path!r} exists and is read-only; make it writable (chmod u+w) to replace it, "
                          "or choose another output path.")
    parent = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"Cannot write {path!r}: directory {parent!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write {path!r}: directory {parent!r} is not writable; choose another output path.")
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _output_mode(target: str) -> int:
    """The mode of the file being replaced, else what `open(path, 'w')` would give (0666 & ~umask)."""
    try:
        st = os.stat(target)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in the target's directory; rename onto `path` (or its symlink target) on success."""
    path = check_writable(path)
    target = os.path.realpath(path)  # through a symlink: replace the file it points to, not the link
    parent = os.path.dirname(target)
    suffix = os.path.splitext(path)[1]
    try:
        fd, tmp = tempfile.mkstemp(prefix=".retroq-", suffix=suffix, dir=parent)
    except OSError as e:
        raise OutputError(f"Cannot write {path!r}: {e.strerror}; choose another output path.") from None
    try:
        os.fchmod(fd, _output_mode(target))  # mkstemp creates 0600; the output gets the user's normal mode
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as e:
        raise OutputError(f"Cannot write {path!r}: {e.strerror}; choose another output path.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def write_with(path: str, writer: Callable[[str], None]) -> str:
    """Let `writer(tmp_path)` produce the file, then move it into place."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return path


@contextlib.contextmanager
def library_quiet():
    """Keep the Python API as quiet as the CLI during a short TensorFlow/LiteRT call.

    Python warnings (Keras input-name chatter, TF deprecations) are dropped inside the block,
    and native writes to fd 2 (`fully_quantize: 0, ...`, XNNPACK INFO lines) go to /dev/null
    unless the user asked for native logs with TF_CPP_MIN_LOG_LEVEL=0 or 1. Never sets the
    environment. sys.stderr keeps the real stream, so our own messages still show.
    """
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1"):
            yield
            return
        with _fd2_to_devnull():
            yield


@contextlib.contextmanager
def native_logs_silenced():
    """Silence TensorFlow's C++ logs in command-line entry points (never at package import).

    TF_CPP_MIN_LOG_LEVEL=2 is set before TensorFlow is imported, but some native
    messages (CUDA probing, converter chatter) bypass it and write to fd 2 directly.
    At level 2 or 3 the native fd 2 goes to /dev/null while Python's sys.stderr keeps
    the real stream: progress, warnings and our error line still show. Set
    TF_CPP_MIN_LOG_LEVEL=0 to see every native log.
    """
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if level.strip() not in ("2", "3"):
        yield
        return
    with _fd2_to_devnull():
        yield


@contextlib.contextmanager
def _fd2_to_devnull():
    """Native fd 2 to /dev/null; Python's sys.stderr on a duplicate of the real stream."""
    old_stderr = sys.stderr
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        yield
        return
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                           errors="backslashreplace")
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
            sys.stderr.close()
        finally:
            sys.stderr = old_stderr
            os.dup2(saved, 2)
            os.close(saved)


# ----------------------------------------------------------------------------- JSON

def _jsonable(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "value"):  # str enums
        return o.value
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _finite(o: Any):
    """NaN/inf are not JSON: store them as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def to_json(obj: Any) -> str:
    return json.dumps(_finite(json.loads(json.dumps(obj, default=_jsonable))), indent=2, allow_nan=False) + "\n"


def write_json(path: str, obj: Any) -> str:
    """Serialize first, then write atomically: a failure never leaves a partial file."""
    return write_text(path, to_json(obj))


class ProgressBar:
    """A one-line progress bar on stderr for `label` (no dependency, quiet when disabled).

    The ETA is measured from the rate after WARMUP steps: the first steps include tracing and
    compilation (a 12 s run once showed a first ETA of 498 s), so until then it reads `eta    ?`.
    """
    WARMUP = 3

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled, self.t0, self.last = label, total, enabled, time.perf_counter(), 0.0
        self.warm = None  # (step, time) where the rate starts being measured
        # On a terminal redraw every 0.2 s; in a log file (no \r redraw) print a line every 10 s.
        self.tty = sys.stderr.isatty()
        self.every = 0.2 if self.tty else 10.0

    def eta(self, i: int, now: float) -> str:
        if self.warm is None or i - self.warm[0] < self.WARMUP:
            return "eta    ?"
        return f"eta {(now - self.warm[1]) / (i - self.warm[0]) * (self.total - i):4.0f}s"

    def update(self, i: int, text: str) -> None:
        now = time.perf_counter()
        if self.warm is None and i >= self.WARMUP:
            self.warm = (i, now)
        if not self.enabled or (now - self.last < self.every and i != self.total):
            return
        self.last = now
        frac = i / max(self.total, 1)
        bar = "#" * int(frac * 20)
        line = f"{self.label} [{bar:<20}] {i}/{self.total} {text} {self.eta(i, now) if i < self.total else 'eta    0s'}"
        sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
