"""The `retroq` console script, run for real in subprocesses.

Success paths: synthesize, convert (default data, --data-file, per-tensor, W4, float
I/O, --report), inspect (table and JSON). Error paths: each one in its own process,
exit code 2, exactly one stderr line `retroq: error: ...`, no output file and no
`.retroq-*` temporary left behind.
"""
import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

H, W, C, CLASSES = 16, 16, 3, 4
TIMEOUT = 180


def _cli():
    from conftest import retroq_command
    return retroq_command()


CLI = _cli()


def _env():
    env = dict(os.environ)
    env.pop("RETROQ_TRACEBACK", None)
    return env


def retroq(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=cwd, env=_env())


def python_wrapped(code, *args):
    """Run the real CLI in a Python process prepared by `code` (which ends by calling run())."""
    return subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=_env())


def assert_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def assert_one_error_line(proc, expect=None, code=2, prefix="retroq: error:"):
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in proc.stderr
    if expect is not None:
        assert expect.lower() in lines[0].lower(), lines[0]
    return lines[0]


def assert_nothing_written(directory, *paths):
    for p in paths:
        assert not Path(p).exists(), f"{p} exists after a failed run"
    if Path(directory).is_dir():
        leftovers = [p.name for p in Path(directory).iterdir() if p.name.startswith(".retroq-")]
        assert not leftovers, leftovers


# ----------------------------------------------------------------------------- fixtures

def _tiny_cnn(keras, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((H, W, C), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(CLASSES, name="fc")(x)
    model = keras.Model(inp, out, name="cli_tiny")
    rng = np.random.default_rng(seed)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(0, 0.3, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 1.5, 8).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Good, bad and corrupt model / data / .tflite files, all in one folder."""
    import keras
    from tflite_retroq.dataset import SyntheticDataset

    d = tmp_path_factory.mktemp("cli_models")
    good = _tiny_cnn(keras)
    good.save(d / "good.keras")

    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    keras.Model(inp, keras.layers.Reshape((H * W, 4))(x), name="rank3").save(d / "rank3.keras")

    a, b = keras.Input((H, W, C)), keras.Input((H, W, C))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Concatenate()([a, b]))
    keras.Model([a, b], keras.layers.Dense(CLASSES)(x), name="two_inputs").save(d / "two_inputs.keras")

    v = keras.Input((10,))
    keras.Model(v, keras.layers.Dense(CLASSES)(v), name="vector").save(d / "vector.keras")

    nan = _tiny_cnn(keras)
    k = nan.get_layer("conv").kernel.numpy()
    k[0, 0, 0, 0] = np.nan
    nan.get_layer("conv").kernel.assign(k)
    nan.save(d / "nan.keras")

    raw = (d / "good.keras").read_bytes()
    (d / "truncated.keras").write_bytes(raw[: len(raw) // 2])
    (d / "text.keras").write_text("this is not a keras model\n")
    with zipfile.ZipFile(d / "zip_not_keras.keras", "w") as z:
        z.writestr("hello.txt", "hi")

    SyntheticDataset(images=np.zeros((2, 8, 8, 3), np.float32), labels=np.array([0, 1])).save(d / "small.npz")
    (d / "bad.npz").write_text("not a dataset")
    (d / "junk.tflite").write_bytes(b"\0" * 200)
    from tflite_retroq.converter import float_tflite
    flat = float_tflite(good)
    (d / "truncated.tflite").write_bytes(flat[: len(flat) // 2])
    (d / "a_file").write_text("a file, not a directory")
    return d


@pytest.fixture(scope="module")
def jobs(models, tmp_path_factory):
    """Every run that imports TensorFlow starts here, two at a time (TF start-up is CPU-bound).

    Each error case still runs in its own process; tests wait for the one they check.
    """
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {}
    runs = {name: tmp_path_factory.mktemp(f"run_{name}") for name in ("synth", "default", "variant", "gaussian")}
    synth = runs["synth"] / "synth.npz"
    good = models / "good.keras"
    futures["synth"] = pool.submit(retroq, "synthesize", good, "-o", synth, "--samples", 2, "--iterations", 3,
                                   "--seed", 1)
    futures["default"] = pool.submit(retroq, "convert", good, "-o", runs["default"] / "default.tflite",
                                     "--samples", 1, "--iterations", 2, "--quiet")

    def variant():  # --data-file + per-tensor + W4 + float I/O + --report, all in one run
        futures["synth"].result()
        return retroq("convert", good, "-o", runs["variant"] / "variant.tflite",
                      "--data-file", synth,
                      "--scheme", "per-tensor", "--weight-bits", 4, "--io", "float",
                      "--report", runs["variant"] / "variant.json")

    futures["variant"] = pool.submit(variant)
    futures["gaussian"] = pool.submit(retroq, "synthesize", good, "-o", runs["gaussian"] / "gauss.npz",
                                      "--mode", "gaussian", "--samples", 3, "--input-mean", "0.5,0.5,0.5",
                                      "--input-std", "0.25,0.25,0.25", "--quiet")
    for case_id, argv, _, _ in TF_CASES:
        out = tmp_path_factory.mktemp(case_id)
        futures[case_id] = pool.submit(retroq, *[a.format(m=models, o=out) for a in argv])
        futures[case_id].out = out
    futures["runs"] = runs
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def synthesized(models, jobs):
    return jobs["synth"].result(), jobs["runs"]["synth"] / "synth.npz"


@pytest.fixture(scope="module")
def converted_default(models, jobs):
    return jobs["default"].result(), jobs["runs"]["default"] / "default.tflite"


@pytest.fixture(scope="module")
def converted_variant(models, jobs):
    d = jobs["runs"]["variant"]
    return jobs["variant"].result(), d / "variant.tflite", d / "variant.json"


# ----------------------------------------------------------------------------- success paths

def test_help_is_usage_and_exit_0():
    proc = retroq("--help")
    assert proc.returncode == 0
    for word in ("synthesize", "convert", "analyze", "inspect", "--data-file", "--weight-bits", "--input-mean"):
        assert word in proc.stdout


@pytest.mark.parametrize("verb", ["synthesize", "convert", "analyze", "inspect"])
def test_verb_help_lists_that_verbs_flags(verb):
    """`retroq VERB --help` names every flag VERB accepts (from the table the CLI checks flags against),
    and none of the flags only convert or inspect take."""
    from tflite_retroq.cli.flags import ALLOWED
    proc = retroq(verb, "--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert f"retroq {verb}" in proc.stdout
    for name in ALLOWED[verb] - {"output"}:
        assert f"--{name}" in proc.stdout, f"`retroq {verb} --help` does not mention --{name}"
    only = {"convert": ("scheme", "io", "report", "static-batch", "nonuniform"), "inspect": ("json", "target")}  # --pack: convert, analyze --pareto
    for owner, names in only.items():
        for name in names if owner != verb else ():
            assert f"--{name}" not in proc.stdout, f"--{name} (only `retroq {owner}`) in `retroq {verb} --help`"
    assert proc.stdout != retroq("--help").stdout


def test_help_anywhere_and_helpfull_exit_0():
    for args in (("convert", "model.keras", "--help"), ("help", "inspect"), ("--helpfull",), ("-h",)):
        proc = retroq(*args)
        assert proc.returncode == 0 and "usage:" in proc.stdout and proc.stderr == "", (args, proc.stderr)


def test_synthesize_writes_dataset(synthesized):
    from tflite_retroq.dataset import SyntheticDataset
    proc, out = synthesized
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == "input space: detected: Rescaling"  # the assumption, said first
    assert "8 images" in lines[1] and "images/s" in lines[1]
    assert "synthesis [" in proc.stderr  # the progress bar is on by default
    data = SyntheticDataset.load(out)
    assert data.images.shape == (2 * CLASSES, H, W, C)
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert data.metadata["mode"] == "retro" and data.metadata["seed"] == 1
    assert data.images.min() >= 0.0 and data.images.max() <= 255.0  # Rescaling(1/255) front detected
    with np.load(out) as z:
        assert z["images"].shape == (8, H, W, C)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".retroq-")]


def test_synthesize_gaussian_with_input_flags_quiet(models, jobs):
    out = jobs["runs"]["gaussian"] / "gauss.npz"
    proc = jobs["gaussian"].result()  # --mode gaussian --samples 3 --input-mean 0.5,.. --input-std 0.25,.. --quiet
    assert_ok(proc)
    assert proc.stderr == ""
    from tflite_retroq.dataset import SyntheticDataset
    data = SyntheticDataset.load(out)
    assert data.images.shape == (3 * CLASSES, H, W, C)
    assert data.metadata["mode"] == "gaussian"
    assert data.metadata["input_space"]["source"].startswith("user")
    assert data.images.min() >= -2.0 - 1e-6 and data.images.max() <= 2.0 + 1e-6  # (pixel - 0.5) / 0.25, pixel in [0, 1]


def test_convert_default_data(converted_default):
    from tflite_retroq.evaluate import run_tflite
    proc, out = converted_default
    assert_ok(proc)
    data = out.read_bytes()
    assert data[4:8] == b"TFL3"
    assert f"{len(data)} bytes" in proc.stdout and "per-channel" in proc.stdout and " s" in proc.stdout
    y = run_tflite(data, np.random.default_rng(0).uniform(0, 255, (3, H, W, C)).astype(np.float32))
    assert y.shape == (3, CLASSES) and np.all(np.isfinite(y))


def test_inspect_table_mentions_scales(converted_default):
    proc = retroq("inspect", converted_default[1])
    assert_ok(proc)
    text = proc.stdout
    assert "scales" in text and "quant_dim" in text and "model size" in text
    assert f"{converted_default[1].stat().st_size} bytes" in text
    assert "CONV_2D" in text and "FULLY_CONNECTED" in text and "per-channel" in text


def test_convert_variant_per_tensor_w4_float_io_report(converted_variant, synthesized):
    proc, out, report = converted_variant
    assert_ok(proc)
    assert "per-tensor" in proc.stdout and "W4" in proc.stdout
    insp = retroq("inspect", out, "--json")
    assert_ok(insp)
    info = json.loads(insp.stdout)
    assert info["size_bytes"] == out.stat().st_size
    assert info["inputs"][0]["dtype"] == "FLOAT32" and info["outputs"][0]["dtype"] == "FLOAT32"
    assert {l["op"] for l in info["layers"]} == {"CONV_2D", "FULLY_CONNECTED"}
    for layer in info["layers"]:
        assert layer["scheme"] == "per-tensor" and layer["num_scales"] == 1
        assert layer["weight_bits"] <= 4 and layer["max_abs_int"] <= 7 and layer["distinct_values"] <= 15
    weights = [t for t in info["tensors"] if t["role"] == "weight"]
    assert weights and all(t["constant"] and t["distinct_values"] <= 15 for t in weights)

    rep = json.loads(report.read_text())
    assert rep["config"]["quantization"] == {"scheme": "per-tensor", "weight_bits": 4, "io": "float", "rounding": "nearest", "weight_dtype": "int8"}
    assert rep["config"]["data"]["source"] == "file"
    assert rep["config"]["data"]["path"] == str(synthesized[1])
    assert rep["output_size_bytes"] == out.stat().st_size
    assert rep["input_space"]["source"].startswith("detected")
    assert rep["synthesis"]["mode"] == "retro" and rep["synthesis"]["num_images"] == 8
    assert len(rep["layers"]) == 2 and rep["op_counts"]["CONV_2D"] == 1
    assert "conversion" in rep["seconds"]


# ----------------------------------------------------------------------------- error paths

# (id, command line with {m} = models folder and {o} = a fresh output folder, expected text, files to be absent)
CASES = [
    # cheap: fail before TensorFlow is imported
    ("no_command", [], "missing command", []),
    ("unknown_command", ["quantize", "{m}/good.keras"], "unknown command", []),
    ("missing_positional", ["convert", "-o", "{o}/x.tflite"], "needs a keras model", ["{o}/x.tflite"]),
    ("extra_positional", ["convert", "{m}/good.keras", "{m}/nan.keras", "-o", "{o}/x.tflite"], "takes one",
     ["{o}/x.tflite"]),
    ("missing_output", ["convert", "{m}/good.keras"], "-o", []),
    ("missing_output_synth", ["synthesize", "{m}/good.keras"], "-o", []),
    ("unknown_flag", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--frobnicate"], "is not a retroq flag",
     ["{o}/x.tflite"]),
    ("bad_flag_value", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--samples", "many"], "--samples",
     ["{o}/x.tflite"]),
    ("flag_not_for_command", ["inspect", "{m}/junk.tflite", "--scheme", "per-tensor"], "does not apply", []),
    ("missing_model", ["convert", "{m}/missing.keras", "-o", "{o}/x.tflite"], "does not exist", ["{o}/x.tflite"]),
    ("nonexistent_dir", ["convert", "{m}/good.keras", "-o", "{o}/nope/x.tflite"], "does not exist",
     ["{o}/nope"]),
    ("parent_is_file", ["synthesize", "{m}/good.keras", "-o", "{m}/a_file/x.npz"], "does not exist", []),
    ("output_is_dir", ["convert", "{m}/good.keras", "-o", "{o}"], "is a directory", []),
    ("report_nonexistent_dir", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--report", "{o}/nope/r.json"],
     "does not exist", ["{o}/x.tflite"]),
    # the output check comes before the model is loaded (the model here is corrupt)
    ("output_checked_before_load", ["convert", "{m}/truncated.keras", "-o", "{o}/nope/x.tflite"], "cannot write",
     []),
    ("data_and_data_file", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--data", "zeroq",
                            "--data-file", "{m}/small.npz"], "conflict", ["{o}/x.tflite"]),
    ("data_file_and_samples", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--data-file", "{m}/small.npz",
                               "--samples", "3"], "conflicts with --data-file", ["{o}/x.tflite"]),
    ("bad_input_mean", ["synthesize", "{m}/good.keras", "-o", "{o}/x.npz", "--input-mean", "x,y,z",
                        "--input-std", "1,1,1"], "input mean", ["{o}/x.npz"]),
    ("mean_without_std", ["synthesize", "{m}/good.keras", "-o", "{o}/x.npz", "--input-mean", "0.5"], "both",
     ["{o}/x.npz"]),
    ("bad_input_range", ["synthesize", "{m}/good.keras", "-o", "{o}/x.npz", "--input-range", "1,0"], "input range",
     ["{o}/x.npz"]),
    ("zero_samples", ["synthesize", "{m}/good.keras", "-o", "{o}/x.npz", "--samples", "0"], "--samples",
     ["{o}/x.npz"]),
    ("negative_seed", ["synthesize", "{m}/good.keras", "-o", "{o}/x.npz", "--seed", "-3"], "--seed", ["{o}/x.npz"]),
    ("output_is_model", ["convert", "{m}/good.keras", "-o", "{m}/good.keras"], "is the input model", []),
    ("weight_bits_5", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--weight-bits", "5"], "--weight-bits 5",
     ["{o}/x.tflite"]),
    ("threshold_without_hybrid", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--threshold", "0.1"],
     "only applies to --scheme hybrid", ["{o}/x.tflite"]),
    ("max_per_channel_without_hybrid", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--max-per-channel", "2"],
     "only applies to --scheme hybrid", ["{o}/x.tflite"]),
    ("hybrid_negative_budget", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--scheme", "hybrid",
                                "--max-per-channel", "-1"], "--max-per-channel -1", ["{o}/x.tflite"]),
    ("pack_unknown", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--pack", "zip"], "--pack",
     ["{o}/x.tflite"]),
    ("pack_not_for_inspect", ["inspect", "{m}/junk.tflite", "--pack", "lut"], "does not apply", []),
    ("analyze_output_is_file", ["analyze", "{m}/good.keras", "-o", "{m}/a_file"], "is a file", []),
    ("analyze_parent_missing", ["analyze", "{m}/good.keras", "-o", "{o}/nope/sens"], "does not exist",
     ["{o}/nope"]),
    ("analyze_data_file_and_samples", ["analyze", "{m}/good.keras", "-o", "{o}/sens", "--data-file",
                                       "{m}/small.npz", "--samples", "2"], "conflicts with --data-file", ["{o}/sens"]),
    ("analyze_missing_output", ["analyze", "{m}/good.keras"], "-o", []),
    ("data_file_missing", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--data-file", "{m}/none.npz"],
     "does not exist", ["{o}/x.tflite"]),
    ("data_file_corrupt", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--data-file", "{m}/bad.npz"],
     "not a tflite_retroq dataset", ["{o}/x.tflite"]),
    ("inspect_missing", ["inspect", "{m}/none.tflite"], "does not exist", []),
    ("inspect_not_tflite", ["inspect", "{m}/junk.tflite"], "TFL3", []),
    ("inspect_truncated", ["inspect", "{m}/truncated.tflite"], "corrupt or truncated", []),
]

# TensorFlow loads the model: each costs a few seconds, so they run in the background (`jobs`)
TF_CASES = [
    ("corrupt_keras", ["convert", "{m}/truncated.keras", "-o", "{o}/x.tflite"], "not a valid .keras archive",
     ["{o}/x.tflite"]),
    ("text_keras", ["synthesize", "{m}/text.keras", "-o", "{o}/x.npz"], "not a valid .keras archive",
     ["{o}/x.npz"]),
    ("zip_not_keras", ["convert", "{m}/zip_not_keras.keras", "-o", "{o}/x.tflite"], "could not be loaded",
     ["{o}/x.tflite"]),
    ("rank3_output", ["convert", "{m}/rank3.keras", "-o", "{o}/x.tflite", "--samples", "1", "--iterations", "1"],
     "rank-2", ["{o}/x.tflite"]),
    ("two_inputs", ["synthesize", "{m}/two_inputs.keras", "-o", "{o}/x.npz"], "2 inputs", ["{o}/x.npz"]),
    ("non_image_input", ["convert", "{m}/vector.keras", "-o", "{o}/x.tflite", "--data", "gaussian"],
     "input has shape", ["{o}/x.tflite"]),
    ("nan_weights", ["convert", "{m}/nan.keras", "-o", "{o}/x.tflite", "--report", "{o}/r.json"], "nan",
     ["{o}/x.tflite", "{o}/r.json"]),
    ("input_mean_channels", ["synthesize", "{m}/good.keras", "-o", "{o}/x.npz", "--input-mean", "0.5,0.5",
                             "--input-std", "0.2,0.2"], "channels", ["{o}/x.npz"]),
    ("data_file_shape_mismatch", ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--data-file",
                                  "{m}/small.npz", "--report", "{o}/r.json"], "shape",
     ["{o}/x.tflite", "{o}/r.json"]),
]


def _check_error(proc, models, out, expect, absent):
    fill = lambda s: s.format(m=models, o=out)  # noqa: E731
    assert_one_error_line(proc, expect)
    assert proc.stdout == ""
    assert_nothing_written(out, *[fill(p) for p in absent])
    assert_nothing_written(models)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_cases(case, models, tmp_path):
    _, argv, expect, absent = case
    out = tmp_path / "out"
    out.mkdir()
    proc = retroq(*[a.format(m=models, o=out) for a in argv])
    _check_error(proc, models, out, expect, absent)


@pytest.mark.parametrize("case", TF_CASES, ids=[c[0] for c in TF_CASES])
def test_error_cases_model_loaded(case, models, jobs):
    case_id, _, expect, absent = case
    _check_error(jobs[case_id].result(), models, jobs[case_id].out, expect, absent)


def test_unwritable_output_dir(models, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "x.tflite"
    args = ["convert", models / "good.keras", "-o", out]
    if os.geteuid() != 0:
        ro.chmod(0o555)
        try:
            proc = retroq(*args)
        finally:
            ro.chmod(0o755)
    else:  # root ignores permission bits: make the real CLI see the folder as unwritable
        code = ("import os, sys\n"
                "d = sys.argv.pop(1); real = os.access\n"
                "os.access = lambda p, m, *a, **k: False if (m & os.W_OK and os.path.abspath(p) == d) "
                "else real(p, m, *a, **k)\n"
                "from tflite_retroq.cli.main import run\nrun()\n")
        proc = python_wrapped(code, ro, *args)
    assert_one_error_line(proc, "not writable")
    assert_nothing_written(ro, out)


_TF_PROBE = ("import atexit, sys\n"
             "atexit.register(lambda: print('TF-LOADED' if 'tensorflow' in sys.modules or 'keras' in sys.modules "
             "else 'TF-NOT-LOADED'))\n"
             "from tflite_retroq.cli.main import run\nrun()\n")


@pytest.mark.parametrize("argv", [
    ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--weight-bits", "5"],
    ["convert", "{m}/good.keras", "-o", "{o}/nope/x.tflite"],
    ["synthesize", "{m}/good.keras", "-o", "{o}/x.npz", "--input-mean", "a", "--input-std", "1"],
    ["convert", "{m}/good.keras", "-o", "{o}/x.tflite", "--bogus"],
    ["inspect", "{m}/junk.tflite"],
], ids=["weight_bits", "output_dir", "input_mean", "unknown_flag", "inspect"])
def test_cheap_errors_do_not_import_tensorflow(argv, models, tmp_path):
    proc = python_wrapped(_TF_PROBE, *[a.format(m=models, o=tmp_path) for a in argv])
    assert_one_error_line(proc)
    assert proc.stdout.strip() == "TF-NOT-LOADED"


def test_unexpected_exception_is_one_line_exit_1(models):
    code = ("import tflite_retroq.cli.main as cli\n"
            "def boom(args):\n    raise RuntimeError('boom')\n"
            "cli._HANDLERS['inspect'] = boom\ncli.run()\n")
    proc = python_wrapped(code, "inspect", models / "junk.tflite")
    line = assert_one_error_line(proc, "RuntimeError: boom", code=1, prefix="retroq: internal error:")
    assert "Traceback" not in line
