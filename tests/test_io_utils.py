"""Safe I/O and the API side of the error contract.

Outputs: the user's umask mode (not mkstemp's 0600), the mode of a replaced file kept,
written through a symlink, never onto a FIFO or device, never onto an input. Inputs: a
FIFO never blocks a loader (each call runs under an alarm), the real cause is named.
Out of memory becomes OutOfMemoryError (API) and one line with exit 2 (CLI). Mixed-
precision models get a float32 twin with the same weights.
"""
import contextlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.errors import OutOfMemoryError, is_out_of_memory, out_of_memory_as_error
from tflite_retroq.io_utils import check_not_inputs, check_readable, same_file, write_bytes, write_text

from conftest import alarm_after


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def deadline(seconds=20):
    """Fail (instead of hanging the suite) if the block blocks, e.g. on opening a FIFO."""
    def _raise(*_):
        raise TimeoutError(f"blocked for {seconds} s")
    return alarm_after(seconds, _raise)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("mask, expect", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_new_output_gets_umask_mode(tmp_path, mask, expect):
    with umask(mask):
        write_bytes(tmp_path / "a.tflite", b"x")
    assert _mode(tmp_path / "a.tflite") == expect
    assert [p.name for p in tmp_path.iterdir()] == ["a.tflite"]


def test_replaced_output_keeps_its_mode(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")
    os.chmod(p, 0o604)
    with umask(0o077):
        write_text(p, "new")
    assert p.read_text() == "new" and _mode(p) == 0o604


def test_dataset_save_gets_umask_mode(tmp_path):
    data = rq.SyntheticDataset(images=np.zeros((2, 2, 2, 1), np.float32), labels=np.array([0, 1]))
    with umask(0o022):
        data.save(tmp_path / "d.npz")
    assert _mode(tmp_path / "d.npz") == 0o644


def test_output_through_symlink_replaces_the_target(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.tflite"
    target.write_bytes(b"old")
    link = tmp_path / "link.tflite"
    link.symlink_to(target)
    write_bytes(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["model.tflite"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_output_is_refused(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "out.tflite"
        os.mkfifo(path)
    else:
        path = os.devnull
    with deadline(), pytest.raises(rq.OutputError, match="FIFO" if kind == "fifo" else "character device"):
        write_bytes(path, b"data")
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
        assert [p.name for p in tmp_path.iterdir()] == ["out.tflite"]


def test_read_only_output_is_refused_even_for_root(tmp_path):
    """A file without any write bit is refused whoever runs (root's os.access says writable; the README
    promises the refusal), and nothing is written; a writable one is replaced."""
    from tflite_retroq.errors import OutputError
    from tflite_retroq.io_utils import write_bytes
    ro = tmp_path / "ro.tflite"
    ro.write_bytes(b"old")
    ro.chmod(0o444)
    with pytest.raises(OutputError, match="read-only"):
        write_bytes(str(ro), b"new")
    assert ro.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["ro.tflite"]
    ro.chmod(0o644)
    write_bytes(str(ro), b"new")
    assert ro.read_bytes() == b"new"


def test_memory_budget_variable_must_be_positive_and_finite(monkeypatch):
    from tflite_retroq import resources
    from tflite_retroq.errors import ConfigError
    for bad in ("nan", "inf", "-inf", "0", "-1", "abc", "1e400"):
        monkeypatch.setenv(resources.ENV_BUDGET, bad)
        with pytest.raises(ConfigError, match=resources.ENV_BUDGET):
            resources.memory_budget()
    monkeypatch.setenv(resources.ENV_BUDGET, "2")
    assert resources.memory_budget() == 2 << 20
    assert "RETROQ_MEMORY_BUDGET_MB=2" in resources.budget_words(2 << 20)


def test_same_file_and_inputs(tmp_path):
    a = tmp_path / "a.npz"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "hard.npz")
    (tmp_path / "soft.npz").symlink_to("a.npz")
    (tmp_path / "other.npz").write_bytes(b"x")
    assert same_file(a, tmp_path / "hard.npz") and same_file(a, tmp_path / "soft.npz")
    assert same_file(a, tmp_path / "sub" / ".." / "a.npz") is True
    assert not same_file(a, tmp_path / "other.npz") and not same_file(a, tmp_path / "missing.npz")
    with pytest.raises(rq.OutputError, match="is the input dataset"):
        check_not_inputs(str(tmp_path / "soft.npz"), [("input model", None), ("input dataset", str(a))])
    check_not_inputs(str(tmp_path / "other.npz"), [("input dataset", str(a))])


# ----------------------------------------------------------------------------- inputs

@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "pipe"
    os.mkfifo(p)
    return p


def test_loaders_never_block_on_a_fifo(fifo):
    from tflite_retroq.tflite.model import read_bytes
    with deadline():
        with pytest.raises(rq.ModelError, match="FIFO"):
            rq.load_model(fifo)
        with pytest.raises(rq.DataError, match="FIFO"):
            rq.SyntheticDataset.load(fifo)
        with pytest.raises(rq.TFLiteModelError, match=r"FIFO \(named pipe\), not a regular file"):
            read_bytes(fifo)


def test_check_readable_names_the_cause(tmp_path):
    with pytest.raises(rq.DataError, match="does not exist; make it"):
        check_readable(tmp_path / "none", "Dataset file", rq.DataError, "make it")
    with pytest.raises(rq.DataError, match="is a directory"):
        check_readable(tmp_path, "Dataset file", rq.DataError, "make it")
    with pytest.raises(rq.ModelError, match="character device"):
        check_readable("/dev/zero", "Model file", rq.ModelError, "pass a file")
    (tmp_path / "ok").write_bytes(b"")
    assert check_readable(tmp_path / "ok", "x", rq.DataError, "y") == str(tmp_path / "ok")


def _npz(path, images, labels, meta):
    np.savez(path, images=images, labels=labels, meta=np.asarray(json.dumps(meta)))
    return path


_META = {"format": "tflite_retroq.SyntheticDataset/1", "metadata": {}, "loss_history": {}}


@pytest.mark.parametrize("images, labels, meta, needle", [
    (np.zeros((2, 2, 2, 1)), np.arange(2), [1, 2], "malformed metadata"),
    (np.zeros((2, 2, 2, 1)), np.arange(2), "a string", "malformed metadata"),
    (np.zeros((2, 2, 2, 1)), np.arange(2), dict(_META, metadata=[1]), "malformed metadata"),
    (np.zeros((2, 2, 2, 1)), np.arange(2), dict(_META, loss_history={"total": 3}), "malformed metadata"),
    (np.full((2, 2, 2, 1), "a"), np.arange(2), _META, "images must be numbers"),
    (np.zeros((2, 2, 2, 1)), np.array(["a", "b"]), _META, "labels must be integer"),
    (np.zeros((2, 2, 2, 1)), np.array([0.5, 1.0]), _META, "labels must be integer"),
])
def test_malformed_dataset_files(tmp_path, images, labels, meta, needle):
    p = _npz(tmp_path / "d.npz", images, labels, meta)
    with pytest.raises(rq.DataError, match=needle):
        rq.SyntheticDataset.load(p)


def test_nan_images_message_names_no_missing_knob():
    with pytest.raises(rq.DataError) as e:
        rq.SyntheticDataset(images=np.array([0.0, 1.0, np.inf, 2.0]).reshape(1, 2, 2, 1), labels=np.zeros(1))
    assert "1 of 4" in str(e.value) and "learning rate" not in str(e.value)


# ----------------------------------------------------------------------------- out of memory

def test_out_of_memory_becomes_typed_error():
    import tensorflow as tf
    with pytest.raises(OutOfMemoryError, match="lower batch_size") as e:
        with out_of_memory_as_error("synthesizing"):
            np.empty(1 << 62, np.uint8)  # 4 EiB: refused by any allocator
    assert isinstance(e.value, rq.RetroQError) and isinstance(e.value, MemoryError)
    assert "while synthesizing" in str(e.value)
    with pytest.raises(OutOfMemoryError):
        with out_of_memory_as_error("calibrating"):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    with pytest.raises(ValueError):  # everything else passes through unchanged
        with out_of_memory_as_error("x"):
            raise ValueError("not memory")
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("memory"))


@pytest.mark.parametrize("error", ["MemoryError()", "type('ResourceExhaustedError', (Exception,), {})('OOM')"])
def test_cli_maps_out_of_memory_to_one_line(tmp_path, error):
    code = ("import tflite_retroq.cli.main as cli\n"
            f"def boom(args):\n    raise {error}\n"
            "cli._HANDLERS['inspect'] = boom\ncli.run()\n")
    env = {k: v for k, v in os.environ.items() if k != "RETROQ_TRACEBACK"}
    proc = subprocess.run([sys.executable, "-c", code, "inspect", tmp_path / "x.tflite"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("retroq: error: out of memory while running `retroq inspect`")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- mixed precision

def _mixed_model(keras, policy="mixed_float16"):
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(5)
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.ReLU()(x)
        sub_in = keras.Input((8, 8, 4))
        block = keras.Model(sub_in, keras.layers.Conv2D(4, 1, name="sub_conv")(sub_in), name="block")
        x = keras.layers.GlobalAveragePooling2D()(block(x))
        out = keras.layers.Dense(3, name="fc")(x)
        out = keras.layers.Activation("linear", dtype="float32")(out)  # the usual float32 head
        model = keras.Model(inp, out, name="mixed")
    finally:
        keras.mixed_precision.set_global_policy(old)
    return model


def test_float32_model_of_mixed_precision():
    import keras
    from tflite_retroq.model.loading import as_model, float32_model
    mixed = _mixed_model(keras)
    assert mixed.get_layer("conv").compute_dtype == "float16"
    f32 = float32_model(mixed)
    layers = list(f32._flatten_layers(include_self=False, recursive=True))
    assert layers and all(l.compute_dtype == "float32" for l in layers if l.weights or not isinstance(
        l, keras.layers.InputLayer))
    assert f32.get_layer("block").get_layer("sub_conv").compute_dtype == "float32"  # nested models too
    for a, b in zip(mixed.get_weights(), f32.get_weights()):
        np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    # Independent reference: the same architecture built under the float32 policy, same weights.
    ref = _mixed_model(keras, policy="float32")
    ref.set_weights(mixed.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(f32(x)), np.asarray(ref(x)))
    y16 = np.asarray(mixed(x), np.float32)
    np.testing.assert_allclose(np.asarray(f32(x)), y16, rtol=0.05, atol=0.05)  # only half-precision rounding apart
    assert as_model(ref) is ref  # a float32 model is not cloned
    assert as_model(mixed).get_layer("conv").compute_dtype == "float32"


def test_mixed_precision_model_synthesizes_and_converts():
    import keras
    mixed = _mixed_model(keras)
    data = rq.synthesize(mixed, rq.SynthesisConfig(samples_per_class=2, iterations=2), progress=False)
    assert np.all(np.isfinite(data.images)) and data.images.dtype == np.float32
    assert rq.convert(mixed, data)[4:8] == b"TFL3"


def test_float32_model_refuses_clearly_when_it_cannot_clone():
    import keras
    from tflite_retroq.model.loading import float32_model

    class Sub(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.conv = keras.layers.Conv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        m = Sub()
        m(np.zeros((1, 8, 8, 3), np.float32))
    finally:
        keras.mixed_precision.set_global_policy(old)
    with pytest.raises(rq.ModelError, match="mixed_float16.*float32"):
        float32_model(m)


# ----------------------------------------------------------------------------- model refusals (API)

def _small(keras, in_dtype="float32"):
    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 3), dtype=in_dtype)
    x = keras.layers.Conv2D(4, 3, name="conv")(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(x)))


def _negative_variance(keras):
    m = _small(keras)
    m.get_layer("bn").moving_variance.assign(np.array([1.0, 1.0, -1e-3, 1.0], np.float32))
    return m


def _huge(keras):
    m = _small(keras)
    m.get_layer("fc").kernel.assign(np.full((4, 3), 3e20, np.float32))
    return m


def _one_hot(keras):
    inp = keras.Input((8, 8, 3))
    scores = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inp))
    return keras.Model(inp, keras.ops.one_hot(keras.ops.argmax(scores, axis=-1), 3))


def _unbuilt(keras):
    return keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])


@pytest.mark.parametrize("builder, needle", [
    (_negative_variance, r"'bn' has a negative moving variance \(-0.001 at channel 2\)"),
    (_huge, r"fc/kernel has values as large as 3e\+20"),
    (lambda keras: _small(keras, "int32"), "input has dtype int32"),
    (_one_hot, "one-hot class decisions"),
    (_unbuilt, "saved unbuilt"),
], ids=["negative_variance", "huge_weights", "int_input", "one_hot", "unbuilt"])
def test_validate_refuses_with_the_real_cause(builder, needle):
    import keras
    import warnings
    from tflite_retroq.model.validation import validate_classifier
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NumPy warning on the way to the error
        with pytest.raises(rq.ModelError, match=needle):
            validate_classifier(builder(keras))


def test_dead_relu_output_is_not_mistaken_for_one_hot():
    import keras
    from tflite_retroq.model.validation import validate_classifier
    inp = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    dense = keras.layers.Dense(3, activation="relu")
    model = keras.Model(inp, dense(x))
    dense.set_weights([np.zeros((3, 3), np.float32), np.full(3, -1.0, np.float32)])  # always exactly 0
    assert validate_classifier(model).num_classes == 3
