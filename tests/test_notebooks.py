"""The Colab notebooks run top to bottom, headless and offline, on this venv's Python.

Each notebook reads RETROQ_NB_SMALL=1 in its first code cell and shrinks its
parameters (epochs, samples, iterations), so the whole notebook runs in well under
a minute here. A failing cell fails the test with the cell's traceback; nothing is
skipped.
"""
import json
import os
import pathlib
import re
import sys

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"


def _kernel_dir(tmp_path) -> str:
    """A `python3` kernelspec whose argv is *this* interpreter (the venv's), first on JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (tflite_retroq venv)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return str(tmp_path / "jupyter")


def _execute(name, tmp_path, monkeypatch):
    nb = nbformat.read(COLAB / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON=' + sys.executable)"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", _kernel_dir(tmp_path))
    monkeypatch.setenv("RETROQ_NB_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the plots
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.name == "stdout")
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if o.output_type == "display_data" and "image/png" in o.get("data", {}))
    return text, images, work


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    text, images, work = _execute("01_quickstart.ipynb", tmp_path, monkeypatch)

    kernel_python = re.search(r"KERNEL_PYTHON=(.+)", text).group(1).strip()
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable), kernel_python

    assert "Float Keras top-1 on 450 held-out digits" in text, text
    for row in ("retro       per-channel  W8A8", "retro       per-channel  W4A8", "retro       per-tensor   W8A8",
                "retro       per-tensor   W4A8", "gaussian    per-channel  W8A8"):
        assert row in text, f"missing table row {row!r} in:\n{text}"

    # The converter hook: the user's own TFLiteConverter with the synthetic representative data.
    m = re.search(r"Own TFLiteConverter \+ retro data: top-1 ([\d.]+) % \(float ([\d.]+) %\)", text)
    assert m, text
    own, flt = float(m.group(1)), float(m.group(2))
    assert flt > 80.0 and own > flt - 10.0, (own, flt)
    m = re.search(r"agreement with rq.convert per-channel W8: ([\d.]+) %", text)
    assert m and float(m.group(1)) >= 95.0, text

    assert images >= 2, "expected the synthetic-image grid and the loss curves as PNG outputs"
    for name in ("digits.keras", "digits_retro.npz", "digits_int8.tflite"):
        assert (work / name).is_file(), name


def test_notebook_first_code_cell_holds_the_parameters():
    nb = nbformat.read(COLAB / "01_quickstart.ipynb", as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "REPO_URL" in nb.cells[0].source
    first_code = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and "EPOCHS" in c.source)
    for name in ("EPOCHS", "SAMPLES_PER_CLASS", "ITERATIONS", "RETROQ_NB_SMALL"):
        assert name in first_code, name
    shell = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
             if line.lstrip().startswith(("!", "%%bash", "%%sh", "%sx", "%system"))]
    assert not shell, f"notebooks stay pure Python, found shell lines: {shell}"


def test_nonuniform_notebook_runs(tmp_path, monkeypatch):
    text, images, _ = _execute("03_nonuniform.ipynb", tmp_path, monkeypatch)
    for row in ("uniform     per-tensor   W8A8", "non-uniform per-tensor   W8A8", "non-uniform per-channel  W4A8",
                "uniform     per-channel  W4A8"):
        assert row in text, f"missing table row {row!r} in:\n{text}"
    assert re.search(r"non-uniform per-channel  W8A8\s+[\d.]+ %\s+[\d.]+ %", text), text  # simulated beside int8
    m = re.search(r"plain (\d+) bytes -> LUT-packed (\d+) bytes .*TFLM packed == plain: (\w+)", text)
    assert m and int(m.group(2)) < int(m.group(1)) and m.group(3) == "True", text
    assert "LiteRT: The model is LUT-packed" in text and "TFLite Micro only" in text
    assert "centre" in text and "packed True" in text
    assert images >= 1, "expected the weight histogram with its levels"


def test_hybrid_notebook_runs(tmp_path, monkeypatch):
    text, images, work = _execute("02_hybrid.ipynb", tmp_path, monkeypatch)
    m = re.search(r"W4: (\d+) layers in [\d.]+ s, ([\d.]+)x faster than 2L full passes", text)
    assert m and int(m.group(1)) == 4, text  # the digits CNN: 3 convs + 1 dense
    for row in ("per-tensor                 W8A8     0/4", "per-channel                W4A8     4/4",
                "hybrid budget 2            W4A8", "hybrid Th=0, FC per-tensor W4A8"):
        assert row in text, f"missing table row {row!r} in:\n{text}"
    m = re.search(r"hybrid Th=0 output identical to per-channel: (\w+) \((\d+) of 4 layers per-channel\)", text)
    assert m and (m.group(1) == "True") == (m.group(2) == "4"), text
    assert images >= 2, "expected the W8 and W4 sensitivity plots"
    assert (work / "digits_hybrid_w4.tflite").is_file()


def test_low_bit_notebook_runs(tmp_path, monkeypatch):
    text, _, _ = _execute("04_low_bit.ipynb", tmp_path, monkeypatch)
    rows = {m.group(1) + " " + m.group(2): (float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"W(\d)A8 (nearest|learned)\s+([\d.]+)%\s+([\d.]+)%", text)}
    assert set(rows) == {"6 nearest", "6 learned", "4 nearest", "4 learned"}, text
    m = re.search(r"int8 containers (\d+) bytes -> INT4 (\d+) bytes .*outputs identical: (\w+)", text)
    assert m and int(m.group(2)) < int(m.group(1)) and m.group(3) == "True", text
    assert "17 = INT4" in text and "[17]" in text, text


def _notebooks():
    return sorted(COLAB.glob("*.ipynb"))


def test_markdown_states_no_measured_numbers():
    """Measured numbers (a decimal with %, dB, x or s) live in cell outputs, which `make notebooks`
    regenerates; typed into markdown they go stale (issue 18: '0.55-0.71x' next to a printed 0.74x)."""
    for path in _notebooks():
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "markdown":
                m = re.search(r"\d+\.\d+\s*(%|dB|x\b|s\b)", cell.source)
                assert m is None, f"{path.name} cell {i} states {m.group(0)!r} by hand"


def test_saved_outputs_are_from_the_current_cells():
    """The saved outputs were produced by `make notebooks` from these very cells: every code cell ran, in
    order, and the stamp matches the sources (edit a cell without re-running, and this fails)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.notebooks import source_digest
    for path in _notebooks():
        nb = nbformat.read(path, as_version=4)
        stamp = nb.metadata.get("retroq_executed", {})
        assert stamp.get("source_sha256") == source_digest(nb), f"{path.name}: run `make notebooks` and commit"
        counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
        assert counts == list(range(1, len(counts) + 1)), f"{path.name}: cells not run top to bottom: {counts}"
