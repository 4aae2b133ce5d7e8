"""Re-execute the Colab notebooks in place (full size, not RETROQ_NB_SMALL), so their saved outputs are fresh.

`make notebooks`; tests/test_notebooks.py checks that the saved outputs come from this run of the current
notebook source (the stamp written here) and that no markdown cell states a measured number by hand.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = tuple(sorted(p.name for p in COLAB.glob("*.ipynb")))


def source_digest(nb) -> str:
    """sha256 of the code and markdown cells' sources: the stamp changes whenever a cell does."""
    h = hashlib.sha256()
    for cell in nb.cells:
        h.update(cell.cell_type.encode() + b"\0" + cell.source.encode("utf-8") + b"\0")
    return h.hexdigest()


def execute(name: str) -> None:
    import nbclient
    import nbformat
    path = COLAB / name
    nb = nbformat.read(path, as_version=4)
    os.environ.pop("RETROQ_NB_SMALL", None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as work:
        nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                                resources={"metadata": {"path": work}}).execute()
    nb.metadata["retroq_executed"] = {"source_sha256": source_digest(nb), "command": "make notebooks"}
    nbformat.write(nb, path)
    print(f"executed {path.relative_to(ROOT)}")


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        execute(name)
