"""SavedModel directories as input (Keras `model.export`, `tf.saved_model.save`), API and CLI.

The accuracy test compares against the `.keras` route on the same trained fixture model and the
same held-out images; refusals are checked for their one clear line.
"""
import subprocess

import numpy as np
import pytest

import keras
import tensorflow as tf

import tflite_retroq as rq
from stripes import CLASSES, C, H, W, stripes, train
from tflite_retroq.tflite.inspect import float_ops

SYNTH = rq.SynthesisConfig(mode="retro", samples_per_class=8, iterations=60, seed=1)


def tiny_cnn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, C), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    for strides in (1, 2):
        x = keras.layers.Conv2D(8, 3, strides=strides, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(CLASSES, name="logits")(x), name="tiny_cnn")


@pytest.fixture(scope="module")
def cnn():
    return train(tiny_cnn(), epochs=6)


@pytest.fixture(scope="module")
def exported(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("sm") / "exported"
    cnn.export(str(path), verbose=False)
    return str(path)


@pytest.fixture(scope="module")
def held_out():
    return stripes(400, seed=99)


@pytest.fixture(scope="module")
def keras_route_accuracy(cnn, held_out):
    x, y = held_out
    acc = rq.evaluate(rq.convert(cnn, rq.synthesize(cnn, SYNTH, progress=False)), x, y).accuracy
    assert acc >= 80.0  # trained: the comparison below is not between two coin flips
    return acc


def test_both_savedmodel_kinds_load_as_the_same_function(cnn, exported, tmp_path, held_out):
    saved = str(tmp_path / "saved")
    tf.saved_model.save(cnn, saved)
    x = held_out[0][:16]
    for path, name in ((exported, "pixels"), (saved, "inputs")):
        model = rq.load_model(path)
        assert model.inputs[0].name == name and tuple(model.inputs[0].shape) == (None, H, W, C)
        np.testing.assert_allclose(np.asarray(model(x)), np.asarray(cnn(x)), rtol=1e-5, atol=1e-5)


def test_exported_savedmodel_matches_keras_route(exported, held_out, keras_route_accuracy):
    x, y = held_out
    # The graph carries no Rescaling layer to detect the pixel range from: say it, as the warning asks.
    data = rq.synthesize(exported, SYNTH, input_spec=rq.InputSpec(value_range=(0, 255)), progress=False)
    assert data.images.min() >= 0 and data.images.max() <= 255
    tfl = rq.convert(exported, data)
    assert float_ops(tfl) == []
    acc = rq.evaluate(tfl, x, y).accuracy
    assert abs(acc - keras_route_accuracy) <= 0.5, (acc, keras_route_accuracy)


def test_cli_converts_savedmodel(exported, held_out, keras_route_accuracy, tmp_path):
    from test_cli import assert_ok, retroq
    out = tmp_path / "sm.tflite"
    proc = retroq("convert", exported, "-o", out, "--input-range", "0,255", "--samples", 8, "--iterations", 60,
                  "--seed", 1, "--quiet")
    assert_ok(proc)
    x, y = held_out
    acc = rq.evaluate(out.read_bytes(), x, y).accuracy
    assert abs(acc - keras_route_accuracy) <= 0.5, (acc, keras_route_accuracy)


def test_cli_refuses_directory_without_savedmodel(tmp_path):
    from test_cli import assert_one_error_line, retroq
    (tmp_path / "empty").mkdir()
    proc = retroq("convert", tmp_path / "empty", "-o", tmp_path / "x.tflite")
    assert_one_error_line(proc, "holds no saved_model.pb")
    assert not (tmp_path / "x.tflite").exists()


def _save_function(path, fn, *specs):
    module = tf.Module()
    module.f = tf.function(fn, input_signature=list(specs))
    tf.saved_model.save(module, str(path), signatures=module.f.get_concrete_function())
    return str(path)


def test_unusable_savedmodels_are_refused(tmp_path):
    image = tf.TensorSpec([None, H, W, C], tf.float32)
    two_inputs = _save_function(tmp_path / "two", lambda a, b: {"y": tf.reduce_mean(a + b, [1, 2])}, image, image)
    with pytest.raises(rq.ModelError, match="takes 2 named inputs"):
        rq.load_model(two_inputs)
    dynamic = _save_function(tmp_path / "dyn", lambda a: {"y": tf.reduce_mean(a, [1, 2])},
                             tf.TensorSpec([None, None, None, C], tf.float32))
    with pytest.raises(rq.ModelError, match=r"fixed \(batch, height, width, channels\)"):
        rq.load_model(dynamic)
    two_outputs = _save_function(tmp_path / "out2", lambda a: {"y": tf.reduce_mean(a, [1, 2]), "z": a}, image)
    with pytest.raises(rq.ModelError, match="2 outputs"):
        rq.load_model(two_outputs)
    with pytest.raises(rq.ModelError, match="no saved_model.pb"):
        rq.load_model(str(tmp_path))


def test_savedmodel_layer_norm_stays_float_only_when_allowed(tmp_path):
    """A SavedModel keeps no Keras layers, so LayerNormalization cannot be rewritten: NEG stays float."""
    from test_cli import assert_ok, retroq
    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, C))
    x = keras.layers.Reshape((16, 3))(keras.layers.Conv2D(3, 4, strides=4)(keras.layers.Rescaling(1 / 255)(inp)))
    x = keras.layers.LayerNormalization()(keras.layers.Dense(8)(keras.layers.LayerNormalization()(x)))
    path = str(tmp_path / "ln")
    keras.Model(inp, keras.layers.Dense(CLASSES)(keras.layers.Flatten()(x))).export(path, verbose=False)
    images = stripes(16, seed=3)[0]
    with pytest.raises(rq.QuantizationError, match=r"NEG .*allow_float_ops"):
        rq.convert(path, images)
    out = tmp_path / "ln.tflite"
    proc = retroq("convert", path, "-o", out, "--data", "gaussian", "--input-range", "0,255", "--images", 8,
                  "--allow-float-ops", "--quiet")
    assert_ok(proc)
    kept = float_ops(out.read_bytes())
    assert len(kept) == 2 and all(k.startswith("NEG (") for k in kept)  # one per LayerNormalization
    assert f"float ops kept: {', '.join(kept)};" in proc.stdout
