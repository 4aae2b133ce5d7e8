"""The plugin form of the converter hook (issue 25): `rq.RetroQConverter(user_converter, data, **options)`
gives exactly the model `rq.convert(model, data, **options)` writes, for every data mode and scheme."""
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.evaluate import run_tflite

from conftest import C, H, W
from test_determinism import _tensors  # every tensor's type, shape, scales, zero points, data; the ops


def _user_converter(model, io="int8"):
    """A converter set up the way a user's own script would, including a hook they may already have."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = {"int8": tf.int8, "float": tf.float32}[io]
    return conv


@pytest.fixture(scope="module")
def datasets(bn_model):
    return {mode: rq.synthesize(bn_model, rq.SynthesisConfig(mode=mode, images=8, iterations=3), progress=False)
            for mode in ("retro", "gaussian", "zeroq")}


@pytest.mark.parametrize("mode", ["retro", "gaussian", "zeroq"])
@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
def test_wrapped_converter_equals_convert(bn_model, datasets, mode, scheme):
    data = datasets[mode]
    ours = rq.convert(bn_model, data, scheme=scheme)
    conv = _user_converter(bn_model)
    wrapped = rq.RetroQConverter(conv, data, scheme=scheme).convert()
    (t_ours, ops_ours), (t_hook, ops_hook) = _tensors(ours), _tensors(wrapped)
    assert ops_ours == ops_hook
    assert t_ours == t_hook
    x = np.random.default_rng(0).uniform(0, 255, (16, H, W, C)).astype(np.float32)
    np.testing.assert_array_equal(run_tflite(ours, x), run_tflite(wrapped, x))
    # The user's converter is theirs again: no calibrate-only flag left behind, their settings kept.
    import tensorflow as tf
    assert not getattr(conv, "_experimental_calibrate_only", False)
    assert conv.inference_input_type == tf.int8


def test_wrapped_converter_follows_the_converters_own_settings(bn_model, datasets):
    """Float I/O and per-tensor come from the user's converter when not given as options; W4 passes apply."""
    data = datasets["gaussian"]
    conv = _user_converter(bn_model, io="float")
    conv._experimental_disable_per_channel = True
    wrapper = rq.RetroQConverter(conv, data, weight_bits=4)
    assert wrapper.options() == {"weight_bits": 4, "io": "float", "scheme": "per-tensor"}
    wrapped = wrapper.convert()
    ours = rq.convert(bn_model, data, weight_bits=4, io="float", scheme="per-tensor")
    assert _tensors(wrapped) == _tensors(ours)
    # attributes read and write through to the wrapped converter
    wrapper.allow_custom_ops = True
    assert conv.allow_custom_ops is True


def test_wrapped_converter_refuses_unknown_options_and_non_converters(bn_model, datasets):
    import tensorflow as tf
    with pytest.raises(rq.ConfigError, match="unknown option.*weight_bit"):
        rq.RetroQConverter(_user_converter(bn_model), datasets["retro"], weight_bit=4)
    with pytest.raises(rq.ConfigError, match="wraps a tf.lite.TFLiteConverter"):
        rq.RetroQConverter(bn_model, datasets["retro"])
    conv = _user_converter(bn_model)
    conv.inference_input_type = tf.int16
    with pytest.raises(rq.ConfigError, match="inference_input_type"):
        rq.RetroQConverter(conv, datasets["retro"]).convert()
