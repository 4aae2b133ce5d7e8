"""Atomic output: write to a temporary file beside the target, then rename.

A failed or interrupted run never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import os
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
