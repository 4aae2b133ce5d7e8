"""The README's examples work as written.

* Every ```python block runs, concatenated, in a fresh interpreter (this venv's) in an
  empty directory; the blocks are written to be fast (a few epochs, one synthesis).
* Every `retroq ...` line of the ```bash blocks is accepted by the CLI: each subcommand's
  --help works and mentions the flags used, and each line passes flag parsing and
  validation (checked without TensorFlow: run where the model file is absent, the CLI
  gets as far as the model check). `retroq inspect` runs for real on the .tflite the
  Python example wrote.
"""
import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(lang):
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def _retroq_lines():
    return [shlex.split(line) for block in _blocks("bash") for line in block.splitlines()
            if line.strip().startswith("retroq ")]


def _retroq_cmd():
    exe = pathlib.Path(sys.executable).with_name("retroq")  # the console script of this venv
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tflite_retroq.cli"]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.pop("RETROQ_TRACEBACK", None)
    return env


def test_readme_names_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_readme_links_exist_or_are_benchmark_results():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if target.startswith("http"):
            continue
        # benchmarks/results/*.md are written by the benchmark scripts; everything else must exist now.
        assert (ROOT / target).exists() or target.startswith("benchmarks/results/"), target


def test_readme_cli_lines_are_accepted(tmp_path):
    lines = _retroq_lines()
    assert {"synthesize", "convert", "inspect"} <= {argv[1] for argv in lines}, lines
    cmd = _retroq_cmd()
    for sub in sorted({argv[1] for argv in lines}):
        r = subprocess.run(cmd + [sub, "--help"], capture_output=True, text=True, timeout=120, env=_env())
        assert r.returncode == 0, (sub, r.stdout, r.stderr)
        used = {a.split("=")[0] for argv in lines if argv[1] == sub for a in argv if a.startswith("--")}
        for flag in used:
            assert flag in r.stdout, f"`retroq {sub} --help` does not mention {flag}"
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in lines:
        if argv[1] == "inspect":
            continue  # runs for real in test_readme_python_examples_run
        r = subprocess.run(cmd + argv[1:], capture_output=True, text=True, timeout=120, cwd=empty, env=_env())
        # Flags parsed and validated; the only complaint is the (deliberately) missing model file.
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert "does not exist" in r.stderr and argv[2] in r.stderr, (argv, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr


def test_readme_python_examples_run(tmp_path):
    code = "\n\n".join(_blocks("python"))
    assert "rq.synthesize" in code and "rq.convert" in code and "rq.evaluate" in code
    assert "converter.representative_dataset = rq.representative_dataset(data)" in code
    script = tmp_path / "readme_examples.py"
    script.write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr[-5000:]
    m = re.search(r"int8 top-1 ([\d.]+) %, agreement with float ([\d.]+) %", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) > 90.0 and float(m.group(2)) > 95.0, r.stdout
    m = re.search(r"own converter: top-1 ([\d.]+) %, agreement with float ([\d.]+) %", r.stdout)
    assert m and float(m.group(1)) > 90.0, r.stdout
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "model_int8.tflite").is_file()

    # The README's `retroq inspect` line, for real, on the .tflite the Python example wrote.
    for argv in _retroq_lines():
        if argv[1] == "inspect":
            r = subprocess.run(_retroq_cmd() + argv[1:], capture_output=True, text=True, timeout=120,
                               cwd=tmp_path, env=_env())
            assert r.returncode == 0, r.stderr
            assert "INT8" in r.stdout and "CONV_2D" in r.stdout, r.stdout


def test_generated_blocks_match_the_results():
    """Every number in a generated README block (demo table, CIFAR table) is what benchmarks/docs.py makes
    from benchmarks/results/*.json today: edit a number by hand, or change a result, and this fails."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import docs
    text = README.read_text(encoding="utf-8")
    assert {"demo", "cifar"} <= set(docs.block_names(text)), "README lost a generated block marker"
    assert docs.render(text) == text, "README.md is stale: run `make docs` and commit it"


def test_generated_block_check_bites(tmp_path):
    """The check above would see a hand-edited number (independent of what the tables hold)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import docs
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- begin generated: cifar -->")
    digit = next(i for i in range(start, len(text)) if text[i].isdigit() and text[i - 1] == " ")
    edited = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1:]
    assert docs.render(edited) != edited
