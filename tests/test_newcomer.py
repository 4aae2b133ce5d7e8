"""What a newcomer trips on (issue 28): the clone folder, the install without make, inspect's batch,
the first ETA, litert_latency's result."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _extras() -> dict:
    """setup.py's extras_require, read as data (setup.py is not run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_readme_clone_folder_does_not_shadow_the_package():
    readme = (REPO / "README.md").read_text()
    clones = re.findall(r"git clone \S+ (\S+) && cd (\S+)", readme)
    assert clones, "the README's clone line"
    for folder, cd in clones:
        assert folder == cd and folder != "tflite_retroq" and not (REPO / folder / "__init__.py").exists()


def test_install_without_make_brings_what_the_python_example_imports():
    """The README's pip line names extras that hold scikit-learn (the example trains on sklearn's digits)."""
    readme = (REPO / "README.md").read_text()
    line = re.search(r'Without make: .*?pip install -e "\.\[([\w,]+)\]"', readme, re.S)
    assert line, "the README's install-without-make line"
    extras = _extras()
    wanted = set()
    for name in line.group(1).split(","):
        wanted |= set(extras[name])
    assert "scikit-learn" in wanted
    assert "from tflite_retroq.demo import train_digits_cnn" in readme


def test_inspect_shows_a_dynamic_batch_as_minus_one(int8_bytes):
    from tflite_retroq.static_shape import input_batch
    from tflite_retroq.tflite.inspect import inspect_model
    assert input_batch(int8_bytes) is None  # the default export keeps a dynamic batch
    info = inspect_model(int8_bytes)
    assert info["inputs"][0]["shape"][0] == -1 and info["outputs"][0]["shape"][0] == -1


def test_first_eta_waits_for_a_measured_rate(monkeypatch, capsys):
    """Step 1 takes 10 s (compilation), later steps 0.1 s: no ETA is shown until the rate is measured past
    the compiling steps, and then it is the true remaining time."""
    from tflite_retroq import io_utils
    clock = iter([0.0] + [10.0 + 0.1 * k for k in range(200)])
    monkeypatch.setattr(io_utils.time, "perf_counter", lambda: next(clock))
    bar = io_utils.ProgressBar("synthesis", 100, enabled=True)
    bar.every = 0.0
    for i in range(1, 11):
        bar.update(i, "loss 1")
    lines = capsys.readouterr().err.replace("\r", "\n").split("\n")
    etas = [l.rsplit("eta", 1)[1].strip() for l in lines if "eta" in l]
    assert etas[:5] == ["?"] * 5  # steps 1-5: warm-up (steps 1-2) then fewer than 3 measured steps
    remaining = [float(e.rstrip("s")) for e in etas[5:]]
    assert remaining and all(r == pytest.approx(0.1 * (100 - i), abs=0.6) for r, i in zip(remaining, range(6, 11)))
