"""The bad-input contract of the `retroq` console script, one table row per hostile input.

Every row runs the real console script in its own process (two at a time) and must give:
exit code 2, exactly one stderr line `retroq: error: ...` naming the real cause, no result line
on stdout, the input folder byte-for-byte unchanged (names, file types, modes, contents) and
nothing written to the output folder. The rows cover issue 11's table (output = --data-file,
FIFO model, unbuilt Sequential, absurd --samples, --samples x 1000 classes out of memory,
malformed --data-file, unreadable files, negative BN variance) and its wrong-cause list
(unreadable vs corrupt, FIFO vs missing, integer input, one-hot/argmax output, huge
weights, load reasons cut mid-word). A mixed_float16 model must convert (in float32).

Permission rows need a file this process cannot read. As root (CI), permission bits do not
bind, so those rows run the CLI with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from
the capability bounding set before exec: a real root process that file modes then bind. If
that cannot be done the rows FAIL (never skip). Absurd-memory rows run under RLIMIT_AS (16 GiB), so an
allocation fails the same way whatever the machine's overcommit policy; one of them also
lifts the synthesis memory planner's budget, so the real MemoryError path is exercised.
"""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

H, W, C, CLASSES = 8, 8, 3, 4
TIMEOUT = 300  # a FIFO read that blocks shows up as a timeout, not a hung suite (TF import under load: ~1 min)


def _cli():
    from conftest import retroq_command
    return retroq_command()


CLI = _cli()

# Runs argv[2:] after optionally dropping root's file-permission override and capping memory.
_WRAP = r"""
import ctypes, os, resource, sys
mode, argv = sys.argv[1], sys.argv[2:]
if "nodac" in mode and os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; PR_CAPBSET_DROP = 24
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            sys.exit("WRAP-FAILED: cannot drop capability %d (errno %d)" % (cap, ctypes.get_errno()))
if "rlimit" in mode:
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
if "nobudget" in mode:  # let the memory planner accept anything: the allocation itself must fail
    os.environ["RETROQ_MEMORY_BUDGET_MB"] = "1000000000"
os.execv(argv[0], argv)
"""


def _env():
    env = dict(os.environ)
    env.pop("RETROQ_TRACEBACK", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_cli(args, mode="plain", umask=None):
    """`mode`: comma-separated wrapper options (nodac, rlimit, nobudget) and `env:NAME=VALUE` settings."""
    argv = CLI + [str(a) for a in args]
    env = _env()
    wrap = []
    for part in mode.split(","):
        if part.startswith("env:"):
            name, value = part[4:].split("=", 1)
            env[name] = value
        elif part != "plain":
            wrap.append(part)
    if wrap:
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
        argv = [sys.executable, "-c", _WRAP, ",".join(wrap), exe] + argv[1:]
    kwargs = {"umask": umask} if umask is not None else {}
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env, **kwargs)


def snapshot(folder):
    """Names, file types, permission bits, link targets and contents of everything in `folder`."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        st = p.lstat()
        entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)]
        if p.is_symlink():
            entry.append(os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            try:
                entry.append(hashlib.sha256(p.read_bytes()).hexdigest())
            except PermissionError:  # not root: the unreadable fixtures
                entry.append((st.st_size, st.st_mtime_ns))
        out[str(p.relative_to(folder))] = entry
    return out


# ----------------------------------------------------------------------------- hostile inputs

def _tiny(keras, classes=CLASSES, in_dtype="float32", shape=(H, W, C), name="tiny"):
    inp = keras.Input(shape, dtype=in_dtype, name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inp)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(classes, name="fc")(x), name=name)


def _mismatched_keras(src, dst):
    """A .keras archive whose config no longer fits its weights (Keras's error is long: it dumps the variable)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"units": 4', b'"units": 5')
                assert b'"units": 5' in data
            zout.writestr(item, data)


def _huge_header(src, dst):
    """A dataset whose images header claims 1.2 TB while the file holds a few bytes."""
    import io
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (300_000, 1000, 1000, 1)})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = header.getvalue() + bytes(64) if item.filename == "images.npy" else zin.read(item.filename)
            zout.writestr(item.filename, data)


def _custom_layer_model(keras, path):
    """A model with a custom layer class that the CLI's process never registers."""
    @keras.saving.register_keras_serializable(package="contract")
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inp = keras.Input((H, W, C))
    x = keras.layers.GlobalAveragePooling2D()(Doubling()(inp))
    keras.Model(inp, keras.layers.Dense(CLASSES)(x)).save(path)


@pytest.fixture(scope="module")
def files():
    """Every hostile input in one folder; the folder itself is the 'unchanged' witness."""
    import keras
    from tflite_retroq.converter import float_tflite
    from tflite_retroq.dataset import SyntheticDataset

    d = Path(tempfile.mkdtemp(prefix="retroq-contract-"))
    keras.utils.set_random_seed(0)
    good = _tiny(keras)
    good.save(d / "good.keras")
    (d / "good.tflite").write_bytes(float_tflite(good))
    rng = np.random.default_rng(0)
    SyntheticDataset(images=rng.uniform(0, 255, (8, H, W, C)), labels=np.arange(8) % CLASSES).save(d / "data.npz")
    os.symlink("data.npz", d / "link.npz")
    os.link(d / "good.keras", d / "hardlink.keras")

    keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(CLASSES)]).save(d / "unbuilt.keras")
    _tiny(keras, classes=1000, shape=(16, 16, 3), name="k1000").save(d / "k1000.keras")
    neg = _tiny(keras, name="negvar")
    neg.get_layer("bn").moving_variance.assign(np.array([1.0, -0.5, 1.0, 1.0], np.float32))
    neg.save(d / "negvar.keras")
    huge = _tiny(keras, name="huge")
    huge.get_layer("conv").kernel.assign(np.full(huge.get_layer("conv").kernel.shape, 1e30, np.float32))
    huge.save(d / "huge.keras")
    _tiny(keras, in_dtype="uint8", name="uint8_input").save(d / "uint8_input.keras")
    inp = keras.Input((H, W, C))
    scores = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp)))
    keras.Model(inp, keras.ops.one_hot(keras.ops.argmax(scores, axis=-1), CLASSES)).save(d / "onehot.keras")
    keras.Model(inp, keras.ops.argmax(scores, axis=-1)).save(d / "argmax.keras")
    _mismatched_keras(d / "good.keras", d / "mismatched.keras")

    meta_ok = json.dumps({"format": "tflite_retroq.SyntheticDataset/1", "metadata": {}, "loss_history": {}})
    np.savez(d / "meta_list.npz", images=np.zeros((4, H, W, C), np.float32), labels=np.arange(4),
             meta=np.asarray(json.dumps([1, 2])))
    np.savez(d / "images_strings.npz", images=np.full((4, H, W, C), "a"), labels=np.arange(4),
             meta=np.asarray(meta_ok))

    # round 3: analyze outputs that resolve to an input, datasets a user could hand us
    for sub, link, target in (("an_model", "sensitivity.json", "../good.keras"),
                              ("an_data", "sensitivity.md", "../data.npz"),
                              ("an_pair", "sensitivity.md", "sensitivity.json")):
        (d / sub).mkdir()
        os.symlink(target, d / sub / link)
    shutil.copy(d / "data.npz", d / "an_data" / "sensitivity.json")  # --data-file DIR/sensitivity.json
    for name, space in (("space_int", 3), ("space_str", "normalized")):
        meta = json.dumps({"format": "tflite_retroq.SyntheticDataset/1", "metadata": {"input_space": space},
                           "loss_history": {}})
        np.savez(d / f"{name}.npz", images=np.zeros((4, H, W, C), np.float32), labels=np.arange(4),
                 meta=np.asarray(meta))
    np.savez(d / "own.npz", images=np.zeros((4, H, W, C), np.float32), labels=np.arange(4))
    _huge_header(d / "data.npz", d / "huge_header.npz")
    _custom_layer_model(keras, d / "custom.keras")
    # round 4: a SavedModel directory is an input made of many files; every one of them is guarded
    good.export(str(d / "sm"), verbose=False)
    (d / "sm" / "assets").mkdir(exist_ok=True)
    os.symlink(d / "sm" / "saved_model.pb", d / "sm_abs_link.tflite")  # an absolute symlink
    os.link(d / "sm" / "saved_model.pb", d / "sm_hard.tflite")
    os.symlink(d / "sm" / "variables", d / "sm_vars_link")
    shutil.copy(d / "good.tflite", d / "readonly_root.tflite")
    os.chmod(d / "readonly_root.tflite", 0o444)

    for name in ("fifo.keras", "fifo.npz", "fifo.tflite", "out_fifo.tflite"):
        os.mkfifo(d / name)
    shutil.copy(d / "good.tflite", d / "readonly.tflite")
    os.chmod(d / "readonly.tflite", 0o444)
    for src, dst in (("good.keras", "secret.keras"), ("good.tflite", "secret.tflite"), ("data.npz", "secret.npz")):
        shutil.copy(d / src, d / dst)
        os.chmod(d / dst, 0)
    yield d
    for name in ("secret.keras", "secret.tflite", "secret.npz"):
        os.chmod(d / name, 0o600)
    shutil.rmtree(d, ignore_errors=True)


# id, command line ({f} = the inputs folder, {o} = a fresh empty output folder), words the one
# error line must contain (any one of a tuple), words it must not contain, runner mode.
CASES = [
    ("output_is_data_file", ["convert", "{f}/good.keras", "-o", "{f}/data.npz", "--data-file", "{f}/data.npz"],
     ["input dataset", "another output path"], [], "plain"),
    ("output_symlink_to_data_file", ["convert", "{f}/good.keras", "-o", "{f}/link.npz", "--data-file",
                                     "{f}/data.npz"], ["input dataset"], [], "plain"),
    ("output_hardlink_to_model", ["convert", "{f}/good.keras", "-o", "{f}/hardlink.keras"], ["input model"], [],
     "plain"),
    ("report_is_data_file", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file", "{f}/data.npz",
                             "--report", "{f}/data.npz"], ["input dataset"], [], "plain"),
    ("model_is_fifo", ["convert", "{f}/fifo.keras", "-o", "{o}/x.tflite"], ["fifo", "regular file"],
     ["does not exist"], "plain"),
    ("data_file_is_fifo", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file", "{f}/fifo.npz"],
     ["fifo"], ["does not exist"], "plain"),
    ("inspect_fifo", ["inspect", "{f}/fifo.tflite"], ["fifo"], ["does not exist"], "plain"),
    ("output_is_fifo", ["convert", "{f}/good.keras", "-o", "{f}/out_fifo.tflite"], ["fifo", "regular file"], [],
     "plain"),
    ("output_is_device", ["synthesize", "{f}/good.keras", "-o", os.devnull], ["character device"], [], "plain"),
    ("unbuilt_sequential", ["convert", "{f}/unbuilt.keras", "-o", "{o}/x.tflite"], ["unbuilt", "keras.Input"],
     ["internal"], "plain"),
    ("samples_overflow", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--samples",
                          "99999999999999999999"], ["--samples"], ["overflow"], "plain"),
    ("iterations_overflow", ["synthesize", "{f}/good.keras", "-o", "{o}/x.npz", "--iterations",
                             "99999999999999999999"], ["--iterations"], ["overflow"], "plain"),
    # refused before allocating (a memory budget) or out of memory: either way the one-line contract
    ("samples_1000_classes_oom", ["convert", "{f}/k1000.keras", "-o", "{o}/x.tflite", "--samples", "100000",
                                  "--quiet"], [("memory", "--samples")], ["internal", "samples_per_class"], "rlimit"),
    ("images_over_memory_budget", ["convert", "{f}/k1000.keras", "-o", "{o}/x.tflite", "--images", "9000000",
                                   "--quiet"], ["memory", "--images"], ["internal"], "rlimit"),
    # the planner told to allow anything: the real allocation fails (MemoryError) and is mapped to the line
    ("images_real_out_of_memory", ["convert", "{f}/k1000.keras", "-o", "{o}/x.tflite", "--images", "10000000",
                                   "--quiet"], ["out of memory", ("--batch-size", "--images")], ["internal"],
     "rlimit,nobudget"),
    ("data_file_meta_list", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file",
                             "{f}/meta_list.npz"], ["malformed metadata"], [], "plain"),
    ("data_file_images_strings", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file",
                                  "{f}/images_strings.npz"], ["images must be numbers"], [], "plain"),
    ("inspect_unreadable", ["inspect", "{f}/secret.tflite"], ["permission denied"], ["does not exist"], "nodac"),
    ("model_unreadable", ["convert", "{f}/secret.keras", "-o", "{o}/x.tflite"], ["permission denied"],
     ["corrupt", "truncated"], "nodac"),
    ("data_file_unreadable", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file",
                              "{f}/secret.npz"], ["permission denied"], ["not a tflite_retroq dataset"], "nodac"),
    ("output_read_only", ["convert", "{f}/good.keras", "-o", "{f}/readonly.tflite", "--data-file", "{f}/data.npz"],
     ["read-only"], [], "nodac"),
    ("bn_negative_variance", ["convert", "{f}/negvar.keras", "-o", "{o}/x.tflite", "--samples", "1",
                              "--iterations", "1"], ["negative moving variance", "'bn'"],
     ["learning rate", "warning"], "plain"),
    ("huge_weights", ["synthesize", "{f}/huge.keras", "-o", "{o}/x.npz", "--samples", "1", "--iterations", "1"],
     ["1e+30", "conv"], ["learning rate"], "plain"),
    ("integer_input", ["convert", "{f}/uint8_input.keras", "-o", "{o}/x.tflite", "--samples", "1",
                       "--iterations", "1"], ["uint8", "float32 input"], ["operator"], "plain"),
    ("one_hot_output", ["convert", "{f}/onehot.keras", "-o", "{o}/x.tflite", "--samples", "1", "--iterations",
                        "1"], ["one-hot"], ["tf.", "{", "operator"], "plain"),
    ("argmax_output", ["convert", "{f}/argmax.keras", "-o", "{o}/x.tflite"], ["class scores"], [], "plain"),
    ("load_reason_long", ["synthesize", "{f}/mismatched.keras", "-o", "{o}/x.npz"],
     ["could not be loaded", "..."], [], "plain"),
    # ---- round 3 (issue 18): inputs destroyed through analyze's outputs, absl's own flags
    ("analyze_output_links_to_model", ["analyze", "{f}/good.keras", "-o", "{f}/an_model"], ["input model"], [],
     "plain"),
    ("analyze_output_links_to_data", ["analyze", "{f}/good.keras", "-o", "{f}/an_data", "--data-file",
                                      "{f}/data.npz"], ["input dataset"], [], "plain"),
    ("analyze_data_file_is_output", ["analyze", "{f}/good.keras", "-o", "{f}/an_data", "--data-file",
                                     "{f}/an_data/sensitivity.json"], ["input dataset"], [], "plain"),
    ("analyze_outputs_are_one_file", ["analyze", "{f}/good.keras", "-o", "{f}/an_pair"], ["same file"], [],
     "plain"),
    ("absl_profile_file", ["inspect", "{f}/good.tflite", "--profile_file", "{f}/good.keras"],
     ["--profile_file", "not a retroq flag"], [], "plain"),
    ("absl_flagfile_fifo", ["inspect", "{f}/good.tflite", "--flagfile", "{f}/fifo.npz"], ["--flagfile"], [], "plain"),
    ("absl_flagfile_zero", ["inspect", "{f}/good.tflite", "--flagfile=/dev/zero"], ["--flagfile"], ["memory"],
     "plain"),
    ("absl_run_with_pdb", ["inspect", "{f}/good.tflite", "--run_with_pdb"], ["--run_with_pdb"], [], "plain"),
    ("absl_single_dash", ["inspect", "{f}/good.tflite", "-undefok=x"], ["-undefok"], [], "plain"),
    # ---- environment and dataset files
    ("memory_budget_nan", ["synthesize", "{f}/good.keras", "-o", "{o}/x.npz"], ["RETROQ_MEMORY_BUDGET_MB", "'nan'"],
     ["internal"], "env:RETROQ_MEMORY_BUDGET_MB=nan"),
    ("memory_budget_inf", ["synthesize", "{f}/good.keras", "-o", "{o}/x.npz"], ["RETROQ_MEMORY_BUDGET_MB", "'inf'"],
     ["internal"], "env:RETROQ_MEMORY_BUDGET_MB=inf"),
    ("memory_budget_zero", ["synthesize", "{f}/good.keras", "-o", "{o}/x.npz"], ["RETROQ_MEMORY_BUDGET_MB", "'0'"],
     ["internal"], "env:RETROQ_MEMORY_BUDGET_MB=0"),
    ("memory_budget_tiny_named", ["synthesize", "{f}/good.keras", "-o", "{o}/x.npz"],
     ["RETROQ_MEMORY_BUDGET_MB=0.001", "memory budget"], ["internal"], "env:RETROQ_MEMORY_BUDGET_MB=0.001"),
    ("data_file_input_space_int", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file",
                                   "{f}/space_int.npz"], ["input_space", "malformed"], ["internal"], "plain"),
    ("data_file_input_space_str", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file",
                                   "{f}/space_str.npz"], ["input_space", "malformed"], ["internal"], "plain"),
    ("data_file_huge_header", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file",
                               "{f}/huge_header.npz"], ["corrupt", "header"], ["memory", "--batch-size"], "rlimit"),
    ("data_file_users_own_npz", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file", "{f}/own.npz"],
     ["'meta'", "from_images"], ["KeyError"], "plain"),
    # ---- messages that named the wrong cause
    ("custom_class_named", ["convert", "{f}/custom.keras", "-o", "{o}/x.tflite"], ["'Doubling'", "register"],
     ["Lambda"], "plain"),
    ("static_batch_overflow", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--static-batch",
                               "9223372036854775808"], ["--static-batch", "65536"], ["operator"], "plain"),
    ("time_budget_negative", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--time-budget", "-1"],
     ["--time-budget", "0 for no limit"], ["None"], "plain"),
    ("output_read_only_as_root", ["convert", "{f}/good.keras", "-o", "{f}/readonly_root.tflite", "--data-file",
                                  "{f}/data.npz"], ["read-only"], [], "plain"),
    # ---- round 4 (issue 28): outputs that are, or resolve into, a file of a SavedModel input
    ("sm_output_is_saved_model_pb", ["convert", "{f}/sm", "-o", "{f}/sm/saved_model.pb"],
     ["input model", "saved_model.pb"], [], "plain"),
    ("sm_output_is_variables_index", ["convert", "{f}/sm", "-o", "{f}/sm/variables/variables.index"],
     ["input model"], [], "plain"),
    ("sm_output_is_fingerprint", ["convert", "{f}/sm", "-o", "{f}/sm/fingerprint.pb"], ["input model"], [], "plain"),
    ("sm_report_is_saved_model_pb", ["convert", "{f}/sm", "-o", "{o}/x.tflite", "--report", "{f}/sm/saved_model.pb"],
     ["input model"], [], "plain"),
    ("sm_output_absolute_symlink", ["convert", "{f}/sm", "-o", "{f}/sm_abs_link.tflite"],
     ["input model", "saved_model.pb"], [], "plain"),
    ("sm_output_hard_link", ["convert", "{f}/sm", "-o", "{f}/sm_hard.tflite"], ["input model", "saved_model.pb"],
     [], "plain"),
    ("sm_output_new_file_inside", ["convert", "{f}/sm", "-o", "{f}/sm/assets/x.tflite"], ["inside", "input model"],
     [], "plain"),
    ("sm_output_through_dir_link", ["synthesize", "{f}/sm", "-o", "{f}/sm_vars_link/x.npz"], ["inside", "input model"],
     [], "plain"),
    ("sm_analyze_output_inside", ["analyze", "{f}/sm", "-o", "{f}/sm/variables"], ["input model"], [], "plain"),
    # ---- round 4: the wrong kind of model named plainly; API checks said in flag words
    ("inspect_keras_model", ["inspect", "{f}/good.keras"], ["is a keras model", "retroq convert"], [], "plain"),
    ("inspect_saved_model_dir", ["inspect", "{f}/sm"], ["savedmodel", ".tflite"], [], "plain"),
    ("convert_tflite_input", ["convert", "{f}/good.tflite", "-o", "{o}/x.tflite"],
     ["already a tflite file", "retroq inspect"], ["could not be loaded"], "plain"),
    ("int4_without_4_bits_in_flag_words", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--weight-dtype",
                                           "int4"], ["--weight-dtype int4", "--weight-bits 4"],
     ["weight_dtype=", "weight_bits="], "plain"),
    ("int4_with_pack_lut_in_flag_words", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--weight-dtype",
                                          "int4", "--weight-bits", "4", "--pack", "lut"], ["--pack lut"],
     ["pack=", "weight_dtype="], "plain"),
    ("learned_rounding_nonuniform_in_flag_words", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--rounding",
                                                   "learned", "--nonuniform", "--weight-bits", "4"],
     ["--rounding learned", "--nonuniform"], ["rounding=", "nonuniform="], "plain"),
    ("pack_lut_small_tensors", ["convert", "{f}/good.keras", "-o", "{o}/x.tflite", "--data-file", "{f}/data.npz",
                                "--nonuniform", "--weight-bits", "4", "--pack", "lut"], ["would grow"],
     ["few enough distinct"], "plain"),
]


@pytest.fixture(scope="module")
def results(files, tmp_path_factory):
    """All rows, two processes at a time; each test then checks its own row."""
    pool = ThreadPoolExecutor(max_workers=2)
    before = snapshot(files)
    futures = {}
    for case_id, argv, _, _, mode in CASES:
        out = tmp_path_factory.mktemp(case_id)
        futures[case_id] = (pool.submit(run_cli, [a.format(f=files, o=out) for a in argv], mode), out)
    yield before, futures
    pool.shutdown(wait=True)


def _words(line, must, must_not):
    low = line.lower()
    for w in must:
        options = w if isinstance(w, tuple) else (w,)
        assert any(o.lower() in low for o in options), f"none of {options} in: {line}"
    for w in must_not:
        assert w.lower() not in low, f"{w!r} in: {line}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_contract(case, files, results):
    case_id, _, must, must_not, _ = case
    before, futures = results
    future, out = futures[case_id]
    proc = future.result()
    lines = proc.stderr.splitlines()
    assert "WRAP-FAILED" not in proc.stderr, f"cannot make the file unreadable on this machine: {proc.stderr}"
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("retroq: error: "), lines[0]
    # stdout may carry what was announced before the failure (the input space), never a result line
    assert not any(l.startswith(("wrote", "synthesized")) for l in proc.stdout.splitlines()), proc.stdout
    _words(lines[0], must, must_not)
    assert list(Path(out).iterdir()) == [], f"left in the output folder: {list(Path(out).iterdir())}"
    assert snapshot(files) == before, "the inputs folder changed"


def test_long_load_reason_is_cut_at_a_word(results):
    """Keras's (long) reason is shortened to at most 240 characters, ending at a whole word plus '...'."""
    line = results[1]["load_reason_long"][0].result().stderr.strip()
    reason = line.split("as a Keras model (", 1)[1].rsplit("); save it", 1)[0]
    assert reason.endswith("...") and len(reason) <= 240, reason
    assert "shape" in reason  # the real cause, not only Keras's preamble line


def test_shorten_cuts_at_word_boundaries():
    from tflite_retroq.errors import one_line
    words = [f"word{i:03d}" for i in range(100)]
    text = "  ".join(words) + "\n\n tail"
    out = one_line(text, 100)
    assert len(out) <= 100 and out.endswith("...")
    kept = out[:-3].split(" ")
    assert kept == words[:len(kept)] and len(kept) >= 8  # whole words, in order, none cut
    assert one_line("short\n text", 100) == "short text"


def test_unreadable_fixture_is_really_unreadable(files):
    """The permission rows mean something only if the wrapped process cannot read the file."""
    probe = [sys.executable, "-c", f"open({str(files / 'secret.keras')!r}, 'rb').read(1)"]
    proc = subprocess.run([sys.executable, "-c", _WRAP, "nodac"] + probe, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert "WRAP-FAILED" not in proc.stderr, proc.stderr
    assert proc.returncode != 0 and "PermissionError" in proc.stderr, (proc.returncode, proc.stderr)


def test_mixed_float16_model_converts_in_float32_with_umask_mode(tmp_path):
    """A model saved under mixed_float16 converts (synthesis runs in float32), and the .tflite gets
    the user's umask mode (0640 under umask 027), not the temporary file's 0600."""
    import keras
    from tflite_retroq.evaluate import run_tflite
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(1)
        model = _tiny(keras, name="mixed")
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert model.get_layer("conv").compute_dtype == "float16"
    model.save(tmp_path / "mixed.keras")
    out = tmp_path / "out" / "mixed.tflite"
    out.parent.mkdir()
    proc = run_cli(["convert", tmp_path / "mixed.keras", "-o", out, "--samples", "2", "--iterations", "3",
                    "--quiet"], umask=0o027)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in out.parent.iterdir()] == ["mixed.tflite"]
    x = np.random.default_rng(0).uniform(0, 255, (16, H, W, C)).astype(np.float32)
    y = run_tflite(out.read_bytes(), x)
    ref = np.asarray(model(x), np.float64)
    assert y.shape == ref.shape and np.all(np.isfinite(y))
    # int8 on 8 synthetic calibration images of a random tiny model: close to the float outputs
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.9


# ----------------------------------------------------------------------------- standard streams

# id, bash line around the command ("$@"), exit code, the one stderr line's words (None: stderr empty).
STREAM_CASES = [
    ("stdout_reader_gone", '"$@" | true; exit "${PIPESTATUS[0]}"', 141, None),  # `| head -1`: quiet, 128+SIGPIPE
    ("stdout_closed", '"$@" >&-', 2, "standard output is closed"),
    ("stdout_full", '"$@" >/dev/full', 2, "no space left"),
    ("stdout_full_json", '"$@" --json >/dev/full', 2, "no space left"),
    ("stderr_closed", '"$@" >/dev/null 2>&-', 0, None),
    ("helpfull", '"$@" --helpfull >/dev/null', 0, None),
    ("help_reader_gone", '"$@" --help | true; exit "${PIPESTATUS[0]}"', 141, None),
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_standard_streams(case, files):
    """A closed, broken or full stdout (and a closed stderr) never gives a traceback or `internal error`."""
    _, shell, code, words = case
    argv = ["bash", "-c", shell, "retroq"] + CLI + ["inspect", str(files / "good.tflite")]
    before = snapshot(files)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert proc.returncode == code, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    if words is None:
        assert proc.stderr == "", proc.stderr
    else:
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("retroq: error: "), proc.stderr
        assert words in lines[0].lower(), lines[0]
    assert snapshot(files) == before


# ----------------------------------------------------------------------------- the Python API

# id, a statement run with m (the Keras model), data (a SyntheticDataset), tfl (a float .tflite's bytes),
# f (the inputs folder) and rq in scope, the RetroQError subclass it must raise.
API_CASES = [
    ("convert_calibrated_garbage", "rq.convert(m, data, calibrated=b'garbage')", "TFLiteModelError"),
    ("convert_calibrated_truncated", "rq.convert(m, data, calibrated=tfl[:len(tfl) // 2])", "TFLiteModelError"),
    ("convert_calibrated_tfl3_noise", "rq.convert(m, data, calibrated=tfl[:8] + bytes(range(256)) * 8)",
     "TFLiteModelError"),
    ("convert_calibrated_str", "rq.convert(m, data, calibrated='model.tflite')", "TFLiteModelError"),
    ("quantize_calibrated_truncated", "rq.quantize_calibrated(tfl[:len(tfl) - 100])", "TFLiteModelError"),
    ("quantize_calibrated_noise", "rq.quantize_calibrated(tfl[:8] + bytes(4000))", "TFLiteModelError"),
    ("synthesize_config_str", "rq.synthesize(m, 'retro')", "ConfigError"),
    ("fold_batchnorm_path", "rq.fold_batchnorm(str(f / 'good.keras'))", "ModelError"),
    ("evaluate_labels_length", "rq.evaluate(tfl, data.images, np.arange(len(data) - 1))", "DataError"),
    ("evaluate_empty_images", "rq.evaluate(tfl, data.images[:0])", "DataError"),
    ("evaluate_reference_classes", "rq.evaluate(tfl, data.images, reference=np.zeros((len(data), 7)))",
     "DataError"),
    ("evaluate_nan_images", "rq.evaluate(tfl, np.full_like(data.images, np.nan), reference=m)", "DataError"),
    ("dataset_huge_header", "rq.SyntheticDataset.load(f / 'huge_header.npz')", "DataError"),
    ("dataset_users_own_npz", "rq.SyntheticDataset.load(f / 'own.npz')", "DataError"),
    ("memory_budget_nan", "os.environ['RETROQ_MEMORY_BUDGET_MB'] = 'nan'; rq.synthesize(m, progress=False)",
     "ConfigError"),
    # ---- round 4 (issue 28): the quality estimate's and convert's argument types
    ("estimate_quality_images_str", "rq.estimate_quality(tfl, m, 'images.npy')", "DataError"),
    ("estimate_quality_images_shape", "rq.estimate_quality(tfl, m, np.zeros((2, 5, 5, 3), np.float32))",
     "DataError"),
    ("estimate_quality_reference_none", "rq.estimate_quality(tfl, None, data.images)", "DataError"),
    ("estimate_quality_reference_not_a_model", "rq.estimate_quality(tfl, str(f / 'data.npz'), data.images)",
     "ModelError"),
    ("estimate_quality_reference_list", "rq.estimate_quality(tfl, [[1.0, 2.0]], data.images)", "DataError"),
    ("estimate_quality_reference_classes", "rq.estimate_quality(tfl, np.zeros((len(data), 7)), data.images)",
     "DataError"),
    ("estimate_quality_reference_nan", "rq.estimate_quality(tfl, np.full((len(data), 4), np.nan), data.images)",
     "DataError"),
    ("estimate_quality_quantized_path", "rq.estimate_quality(str(f / 'good.tflite'), m, data.images)",
     "TFLiteModelError"),
    ("holdout_images_path", "rq.holdout_images(m, str(f / 'data.npz'))", "DataError"),
    ("holdout_images_none", "rq.holdout_images(m, None)", "DataError"),
    ("holdout_images_flat_array", "rq.holdout_images(m, np.zeros((4, 8)))", "DataError"),
    ("holdout_images_count_float", "rq.holdout_images(m, data, count=2.5)", "ConfigError"),
    ("holdout_images_count_str", "rq.holdout_images(m, data, count='8')", "ConfigError"),
    ("convert_rounding_config_str", "rq.convert(m, data, rounding='learned', rounding_config='fast')", "ConfigError"),
    ("convert_rounding_config_dict", "rq.convert(m, data, rounding='learned', rounding_config={'iterations': 5})",
     "ConfigError"),
    ("convert_allow_float_ops_str", "rq.convert(m, data, allow_float_ops='no')", "ConfigError"),
    ("quantize_calibrated_allow_float_ops_str", "rq.quantize_calibrated(tfl, allow_float_ops='no')", "ConfigError"),
]

_API_RUNNER = r"""
import json, os, sys, warnings
from pathlib import Path
import numpy as np
import keras
import tflite_retroq as rq
f = Path(sys.argv[1])
cases = json.loads(sys.argv[2])
m = rq.load_model(f / "good.keras")
data = rq.SyntheticDataset.load(f / "data.npz")
tfl = (f / "good.tflite").read_bytes()
for case_id, code in cases:
    os.environ.pop("RETROQ_MEMORY_BUDGET_MB", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exec(code)
            row = {"raised": None}
        except Exception as e:
            row = {"raised": type(e).__name__, "retroq": isinstance(e, rq.RetroQError), "message": str(e)}
    row["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    print("ROW " + json.dumps([case_id, row]), flush=True)
"""


@pytest.fixture(scope="module")
def api_results(files):
    """Every API row in one child process: a native crash (SIGSEGV) there fails the rows, not the suite."""
    cases = json.dumps([[c[0], c[1]] for c in API_CASES])
    proc = subprocess.run([sys.executable, "-c", _API_RUNNER, str(files), cases], capture_output=True, text=True,
                          timeout=4 * TIMEOUT, env=_env())
    rows = dict(json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW "))
    return rows, proc


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_contract(case, api_results):
    """A typed RetroQError with one line (no ValueError/AttributeError/MemoryError, no native crash,
    no RuntimeWarning from NaN arithmetic)."""
    case_id, _, expected = case
    rows, proc = api_results
    assert case_id in rows, f"the API process died before this row (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    row = rows[case_id]
    assert row["raised"] == expected and row["retroq"], row
    assert "\n" not in row["message"] and row["message"], row
    assert row["warnings"] == [], row
