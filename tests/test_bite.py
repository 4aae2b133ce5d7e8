"""Tests that bite (issue 28): each one fails on a mutant that the suite used to let through.

* a LayerNormalization subclass with its own `call` is rewritten (mutant: the `call` check dropped);
* a SavedModel signature taking integer input is accepted (mutant: the dtype check dropped);
* fit_bias exactly at the bias limit (mutant: `<` / `>` turned into `<=` / `>=`);
* fold_batch_reshapes folds a shape tensor that FILL also reads (mutant: the consumer check dropped);
* fixed_batches with batch size 0 loops forever (now refused), and no test can hang the suite (the
  conftest bound is seen to fire on an endless loop).
Each was checked by applying the mutant by hand and seeing the test fail.
"""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tflite_retroq.errors import ConfigError, ModelError

TESTS = Path(__file__).resolve().parent


def test_layer_norm_subclass_with_its_own_call_is_not_rewritten():
    import keras
    from tflite_retroq.model.rewrite import int8_friendly, layers_to_rewrite

    class Shifted(keras.layers.LayerNormalization):
        def call(self, inputs):
            return super().call(inputs) + 1.0

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = keras.layers.LayerNormalization(name="stock")(keras.layers.Dense(6)(inp))
    out = keras.layers.Dense(3)(Shifted(name="own")(x))
    model = keras.Model(inp, out)
    assert [l.name for l in layers_to_rewrite(model)] == ["stock"]
    new = int8_friendly(model)
    assert type(new.get_layer("own")) is Shifted and type(new.get_layer("stock")) is not keras.layers.LayerNormalization
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-4)


def test_saved_model_with_integer_input_is_refused(tmp_path):
    import tensorflow as tf
    from tflite_retroq.model.saved_model import load_saved_model

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.uint8, name="image")])
        def serve(self, x):
            return {"scores": tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2]) @ self.w}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    with pytest.raises(ModelError, match="dtype uint8.*float32 input"):
        load_saved_model(str(tmp_path / "sm"))


def test_fit_bias_exactly_at_the_limit():
    """|b| / (s_in * s) == BIAS_MAX exactly (all values exact in float64): the per-channel rule enlarges only
    above the limit, the per-tensor rule at the limit too (the converter's two rules)."""
    from tflite_retroq.quant.uniform import BIAS_MAX, fit_bias
    s_in, s = 1.0, 0.5
    at = BIAS_MAX * s_in * s
    scale, mask = fit_bias(np.array([s, s], np.float32), np.array([at, at / 2]), s_in)
    assert mask.tolist() == [False, False] and scale.tolist() == [s, s]
    scale, mask = fit_bias(np.array([s, s], np.float32), np.array([at * 1.01, 0.0]), s_in)
    assert mask.tolist() == [True, False] and scale[0] > s
    scale, mask = fit_bias(np.array([s], np.float32), np.array([at, 1.0]), s_in)
    assert mask.tolist() == [True] and scale[0] == np.float32(at / BIAS_MAX / s_in)
    scale, mask = fit_bias(np.array([s], np.float32), np.array([at - 1.0]), s_in)
    assert mask.tolist() == [False] and scale[0] == s


def test_fold_batch_reshapes_keeps_a_shape_that_fill_also_reads():
    """The RESHAPE's shape tensor also feeds FILL, which needs the real batch: folding it to [-1, 32] would
    break FILL. The pass must leave it, and the model must still compute what TensorFlow computes."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from tflite_retroq.static_shape import fold_batch_reshapes
    from tflite_retroq.tflite import model as tfm

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 2], tf.float32)])
    def f(x):
        shape = tf.stack([tf.shape(x)[0], 32])
        return tf.reshape(x, shape) + tf.fill(shape, 1.0)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    raw = bytes(conv.convert())
    m = tfm.read(raw)
    sg = m.subgraphs[0]
    names = [tfm.op_name(m, op) for op in sg.operators]
    reshape = sg.operators[names.index("RESHAPE")]
    fill = sg.operators[names.index("FILL")]
    assert reshape.inputs[1] == fill.inputs[0], "fixture: one shape tensor for RESHAPE and FILL"
    folded = fold_batch_reshapes(raw)
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype(np.float32)
    it = Interpreter(model_content=folded)
    it.resize_tensor_input(it.get_input_details()[0]["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    np.testing.assert_allclose(it.get_tensor(it.get_output_details()[0]["index"]), f(x).numpy(), rtol=1e-6)


@pytest.mark.timeout(60)
def test_fixed_batches_refuses_batch_size_zero():
    from tflite_retroq.static_shape import fixed_batches

    def gen():
        yield [np.zeros((2, 3), np.float32)]

    for bad in (0, -1, None, 2.5):
        with pytest.raises(ConfigError):
            list(fixed_batches(gen, bad)())


@pytest.mark.timeout(120)
def test_the_suite_bound_fails_a_hanging_test(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.timeout(2)
        def test_hangs():
            while True:
                pass
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout[-2000:]
    assert "ran longer than its bound of 2 s" in proc.stdout


@pytest.mark.timeout(300)
def test_a_nested_bound_keeps_the_outer_one():
    """An inner deadline (e.g. test_io_utils' FIFO guard) re-arms the test's own bound when it ends."""
    import signal
    from conftest import alarm_after

    def _never(*_):
        raise AssertionError("the inner bound fired")

    with alarm_after(100, _never):
        pass
    left = signal.alarm(0)  # what the fixture armed (300 s), re-armed by alarm_after
    signal.alarm(left)
    assert 250 <= left <= 300
