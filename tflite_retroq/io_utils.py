"""Atomic output: write to a temporary file beside the target, then rename.

A failed or interrupted run never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable, Iterator

from tflite_retroq.errors import OutputError


def check_writable(path: str) -> str:
    """Fail early (before expensive work) when `path` cannot be written."""
    path = os.fspath(path)
    if not path:
        raise OutputError("The output path is empty; pass a file path with -o.")
    if os.path.isdir(path):
        raise OutputError(f"Output {path!r} is a directory; pass a file path.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"Cannot write {path!r}: directory {parent!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write {path!r}: directory {parent!r} is not writable; choose another output path.")
    return path


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in the target's directory; rename onto `path` on success."""
    path = check_writable(path)
    parent = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    try:
        fd, tmp = tempfile.mkstemp(prefix=".retroq-", suffix=suffix, dir=parent)
    except OSError as e:
        raise OutputError(f"Cannot write {path!r}: {e.strerror}; choose another output path.") from None
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
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
