"""Transformer blocks (LayerNormalization, MultiHeadAttention, GELU) quantize to full int8.

The rewrite of LayerNormalization is checked in float against numpy's own layer norm; the
whole pipeline on a tiny ViT trained in a fixture (retro synthesis without BatchNorm, convert,
run on LiteRT) against the float model on held-out images; allow_float_ops against an op
that really has no int8 kernel (SIN).
"""
import numpy as np
import pytest

import keras

import tflite_retroq as rq
from stripes import CLASSES, C, H, W, stripes, train
from tflite_retroq.model.rewrite import int8_friendly, layers_to_rewrite
from tflite_retroq.reports.report import format_inspect
from tflite_retroq.tflite import model as tfm
from tflite_retroq.tflite.inspect import float_ops, inspect_model


def numpy_layer_norm(x, gamma, beta, axes, eps):
    x = x.astype(np.float64)
    mu = x.mean(axis=tuple(axes), keepdims=True)
    var = ((x - mu) ** 2).mean(axis=tuple(axes), keepdims=True)
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    out = (x - mu) / np.sqrt(var + eps)
    if gamma is not None:
        out = out * gamma.reshape(shape)
    if beta is not None:
        out = out + beta.reshape(shape)
    return out


@pytest.mark.parametrize("kwargs, axes", [({}, [3]), ({"axis": [1, 2]}, [1, 2]), ({"center": False}, [3]),
                                          ({"scale": False, "epsilon": 0.1}, [3])])
def test_rewritten_layer_norm_equals_numpy(kwargs, axes):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 5, 6))
    ln = keras.layers.LayerNormalization(name="ln", **kwargs)
    model = keras.Model(inp, ln(inp))
    rng = np.random.default_rng(0)
    for w in ln.weights:  # non-trivial gamma and beta
        w.assign(rng.normal(0.5, 1.0, w.shape).astype(np.float32))
    x = (rng.normal(2.0, 3.0, (8, 4, 5, 6))).astype(np.float32)
    new = int8_friendly(model)
    assert type(new.get_layer("ln")) is not keras.layers.LayerNormalization
    assert type(model.get_layer("ln")) is keras.layers.LayerNormalization  # the user's model is untouched
    gamma = ln.gamma.numpy() if ln.gamma is not None else None
    beta = ln.beta.numpy() if ln.beta is not None else None
    want = numpy_layer_norm(x, gamma, beta, axes, ln.epsilon)
    np.testing.assert_allclose(np.asarray(new(x)), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-4, atol=1e-4)


def test_rewrite_leaves_other_models_alone(bn_model):
    assert int8_friendly(bn_model) is bn_model
    with pytest.warns(UserWarning, match="rms_scaling"):  # deprecated by Keras, still loadable
        rms = keras.Model(inp := keras.Input((3, 4)), keras.layers.LayerNormalization(rms_scaling=True)(inp))
    assert layers_to_rewrite(rms) == []  # x * rsqrt(var): no negation to remove


def tiny_vit(seed=0):
    """Patch conv -> tokens -> [LN -> MHA -> +] -> [LN -> Dense(GELU) -> Dense -> +] -> LN -> pool -> logits."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((H, W, C), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(16, 4, strides=4, name="patches")(x)
    x = keras.layers.Reshape((16, 16))(x)
    y = keras.layers.LayerNormalization()(x)
    y = keras.layers.MultiHeadAttention(2, 8, name="mha")(y, y)
    x = keras.layers.Add()([x, y])
    y = keras.layers.LayerNormalization()(x)
    y = keras.layers.Dense(32, activation="gelu")(y)
    y = keras.layers.Dense(16)(y)
    x = keras.layers.Add()([x, y])
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, keras.layers.Dense(CLASSES, name="logits")(x), name="tiny_vit")


@pytest.fixture(scope="module")
def vit():
    return train(tiny_vit(), epochs=8)


@pytest.fixture(scope="module")
def vit_data(vit):
    return rq.synthesize(vit, rq.SynthesisConfig(mode="retro", samples_per_class=4, iterations=60, seed=0),
                         progress=False)


def test_vit_synthesis_without_batchnorm_is_sensible(vit, vit_data):
    images = vit_data.images
    assert images.min() >= 0.0 and images.max() <= 255.0  # the Rescaling front's pixel range
    # The class loss drove each image to its class: the float model agrees with the targets.
    pred = np.asarray(vit(images)).argmax(1)
    assert np.mean(pred == vit_data.labels) >= 0.9
    assert set(vit_data.labels.tolist()) == set(range(CLASSES))


def test_vit_converts_to_full_int8_and_agrees_with_float(vit, vit_data):
    x, y = stripes(400, seed=99)  # held out: training used seed 0
    float_pred = np.asarray(vit(x)).argmax(1)
    assert np.mean(float_pred == y) >= 0.7  # trained: agreement below is not about a coin-flip model

    tfl = rq.convert(vit, vit_data)
    assert float_ops(tfl) == []
    m = tfm.read(tfl)
    kinds = {tfm.op_name(m, op) for op in m.subgraphs[0].operators}
    assert {"BATCH_MATMUL", "SOFTMAX", "GELU", "RSQRT", "SUB", "MEAN"} <= kinds
    assert "NEG" not in kinds
    for t in m.subgraphs[0].tensors:
        assert t.type != 0, f"float32 tensor {tfm.tensor_name(t)}"  # int8 I/O: nothing float anywhere
    result = rq.evaluate(tfl, x, y, reference=vit)
    assert result.agreement >= 95.0, result


def sin_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.ops.sin(keras.layers.Conv2D(4, 3, name="conv")(inp))  # SIN has no int8 kernel
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


def test_allow_float_ops_keeps_and_lists_them():
    model = sin_model()
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    with pytest.raises(rq.QuantizationError, match=r"SIN .*allow_float_ops=True"):
        rq.convert(model, data)
    tfl = rq.convert(model, data, allow_float_ops=True)
    found = float_ops(tfl)
    assert len(found) == 1 and found[0].startswith("SIN (")
    m = tfm.read(tfl)
    kinds = [tfm.op_name(m, op) for op in m.subgraphs[0].operators]
    assert "DEQUANTIZE" in kinds[:kinds.index("SIN")] and "QUANTIZE" in kinds[kinds.index("SIN"):]
    info = inspect_model(tfl)
    assert info["float_ops"] == found and "Ethos-U" in info["float_ops_note"]
    assert f"float ops: {found[0]}" in format_inspect(info)
    out = rq.run_tflite(tfl, data)
    ref = np.asarray(model(data))
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9  # the float island computes what the model does
