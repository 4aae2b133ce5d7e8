"""Algorithm 2 (per-layer KL of per-tensor vs per-channel weights) and the hybrid selection rules.

The reference is a brute-force computation written here: the BN-folded model cloned, one
layer's kernel replaced by a quantization done channel by channel in a plain loop, a full
Keras forward pass, and KL in float64.
"""
import json

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq.errors import ConfigError, DataError, ModelError
from tflite_retroq.methods.plan import LayerSensitivity, SensitivityResult, fidelity, spearman

H, W, C, K = 12, 12, 3, 4


def build_residual_model(seed=0):
    """Conv-BN-ReLU -> DW-BN-ReLU -> 1x1 Conv -> Add(skip) -> ReLU -> GAP -> Dense: a DAG whose
    channel ranges are made uneven (factors 0.05..3), where per-tensor weights visibly hurt."""
    import keras
    keras.utils.set_random_seed(seed)
    inp = keras.Input((H, W, C))
    a = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c0")(inp)
    a = keras.layers.BatchNormalization(name="c0_bn")(a)
    a = keras.layers.ReLU()(a)
    b = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(a)
    b = keras.layers.BatchNormalization(name="dw_bn")(b)
    b = keras.layers.ReLU()(b)
    b = keras.layers.Conv2D(6, 1, name="pw")(b)
    x = keras.layers.Add()([a, b])
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(K, name="fc")(x)
    model = keras.Model(inp, out, name="tiny_residual")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            ch = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, ch).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.2, ch).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.2, ch).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, ch).astype(np.float32))
        elif hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            factors = np.geomspace(0.05, 3.0, k.shape[-1]).astype(np.float32)
            layer.kernel.assign(k * factors * 3.0)
    # Moderate logits (std 2 on N(0, 1) images) so the softmax is neither flat nor saturated.
    logits = np.asarray(model(rng.normal(0, 1, (32, H, W, C)).astype(np.float32)))
    fc = model.get_layer("fc")
    fc.kernel.assign(fc.kernel.numpy() * np.float32(2.0 / logits.std()))
    return model


@pytest.fixture(scope="module")
def residual_model():
    return build_residual_model()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).normal(0, 1, (20, H, W, C)).astype(np.float32)


def _quantize_loop(w, kind, bits, per_channel):
    """Independent re-implementation: TFLite's symmetric weights, channel by channel."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, np.float64)
    out = np.empty_like(w)

    def q(block):
        m = np.max(np.abs(block))
        s = np.float32(m / qmax) if m > 0 else 1.0
        return np.clip(np.round(block / s), -qmax, qmax) * s

    if not per_channel:
        return q(w).astype(np.float32)
    if kind == "DEPTHWISE_CONV_2D":  # kernel [kh, kw, in, mult]: one channel per (in, mult)
        for i in range(w.shape[2]):
            for m in range(w.shape[3]):
                out[:, :, i, m] = q(w[:, :, i, m])
    else:  # Conv2D [kh, kw, in, out], Dense [in, out]
        for c in range(w.shape[-1]):
            out[..., c] = q(w[..., c])
    return out.astype(np.float32)


def _brute_force(model, x, bits):
    import keras
    folded = rq.fold_batchnorm(model)
    ref = np.asarray(folded.predict(x, verbose=0), np.float64)
    probs = bool(np.allclose(ref.sum(1), 1.0, atol=1e-4) and np.all(ref >= 0))

    def logp(y):
        if probs:
            return np.log(np.clip(y, 1e-12, None))
        y = y - y.max(1, keepdims=True)
        return y - np.log(np.exp(y).sum(1, keepdims=True))

    kinds = {"Conv2D": "CONV_2D", "DepthwiseConv2D": "DEPTHWISE_CONV_2D", "Dense": "FULLY_CONNECTED"}
    out = {}
    for layer in folded.layers:
        if type(layer).__name__ not in kinds:
            continue
        row = []
        for pc in (False, True):
            clone = keras.models.clone_model(folded)
            clone.set_weights(folded.get_weights())
            target = clone.get_layer(layer.name)
            w = target.get_weights()
            w[0] = _quantize_loop(w[0], kinds[type(layer).__name__], bits, pc)
            target.set_weights(w)
            y = np.asarray(clone.predict(x, verbose=0), np.float64)
            lp, lq = logp(ref), logp(y)
            row.append(float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1))))
        out[layer.name] = row
    return out


@pytest.mark.parametrize("bits", [8, 4])
def test_matches_brute_force_on_residual_model(residual_model, images, bits):
    res = rq.analyze_sensitivity(residual_model, images, weight_bits=bits, batch_size=8)  # 3 chunks, last partial
    want = _brute_force(residual_model, images, bits)
    assert res.names == ["c0", "dw", "pw", "fc"]
    assert [l.kind for l in res.layers] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    for l in res.layers:
        pt, pc = want[l.name]
        assert l.kl_per_tensor == pytest.approx(pt, rel=2e-3, abs=1e-9), l.name
        assert l.kl_per_channel == pytest.approx(pc, rel=2e-3, abs=1e-9), l.name
    # Uneven channel ranges: per-channel must clearly win somewhere, else the test is vacuous.
    assert any(l.kl_per_tensor > 3 * l.kl_per_channel > 0 for l in res.layers)
    assert res.layer("c0").range_ratio == pytest.approx(60.0, rel=0.5)


def test_softmax_output_is_not_softmaxed_twice(softmax_model, normal_images):
    res = rq.analyze_sensitivity(softmax_model, normal_images, weight_bits=4)
    want = _brute_force(softmax_model, normal_images, 4)
    for l in res.layers:
        assert [l.kl_per_tensor, l.kl_per_channel] == pytest.approx(want[l.name], rel=2e-3, abs=1e-9)


def test_naive_method_gives_the_same_numbers_and_timings_are_reported(residual_model, images):
    cached = rq.analyze_sensitivity(residual_model, images[:8])
    naive = rq.analyze_sensitivity(residual_model, images[:8], method="naive")
    for a, b in zip(cached.layers, naive.layers):
        # float32 kernels sum in another order over a full batch vs a suffix rerun: agree to 1e-4, and to
        # 1e-9 in absolute terms for KLs at the float32 noise floor (a 1e-8 KL changes no decision)
        assert a.kl_per_tensor == pytest.approx(b.kl_per_tensor, rel=1e-4, abs=1e-9)
        assert a.kl_per_channel == pytest.approx(b.kl_per_channel, rel=1e-4, abs=1e-9)
    assert cached.method == "cached" and naive.method == "naive"
    assert cached.naive_seconds == pytest.approx(2 * 4 * cached.full_pass_seconds)
    assert cached.seconds > 0 and cached.speedup == pytest.approx(cached.naive_seconds / cached.seconds)
    assert cached.num_images == 8 and cached.data_source == "array"


def test_dataset_input_and_layer_subset(bn_model, calib_data):
    res = rq.analyze_sensitivity(bn_model, calib_data, layers=["dw"])
    assert res.names == ["dw"] and res.data_source == "retro" and res.num_images == len(calib_data)


def test_result_round_trips_through_json_and_is_frozen(residual_model, images):
    res = rq.analyze_sensitivity(residual_model, images[:4])
    back = SensitivityResult.from_json(res.to_json())
    assert back == res
    d = json.loads(res.to_json())
    assert d["layers"][1]["difference"] == pytest.approx(res.layers[1].difference)
    with pytest.raises(Exception):
        res.layers[0].kl_per_tensor = 0.0  # frozen


@pytest.mark.parametrize("kwargs, exc", [
    ({"weight_bits": 5}, ConfigError), ({"method": "fast"}, ConfigError), ({"batch_size": 0}, ConfigError),
    ({"layers": ["nope"]}, ConfigError)])
def test_bad_options_raise_typed_errors(residual_model, images, kwargs, exc):
    with pytest.raises(exc):
        rq.analyze_sensitivity(residual_model, images[:2], **kwargs)


def test_bad_data_and_models_raise_typed_errors(residual_model, images, nested_model, normal_images):
    with pytest.raises(DataError):
        rq.analyze_sensitivity(residual_model, images[:, :8])  # wrong image size
    with pytest.raises(DataError):
        rq.analyze_sensitivity(residual_model, lambda: iter([]))
    with pytest.raises(ModelError, match="nested"):
        rq.analyze_sensitivity(nested_model, normal_images[:2])


# ----------------------------------------------------------------------------- selection rules

def _table(diffs, kinds=None):
    layers = []
    for i, d in enumerate(diffs):
        kind = (kinds or ["CONV_2D"] * len(diffs))[i]
        pc = 0.01
        layers.append(LayerSensitivity(index=i, name=f"l{i}", kind=kind, weight_shape=(3, 3, 4, 4), channels=4,
                                       range_ratio=2.0, kl_per_tensor=pc + d, kl_per_channel=pc))
    return SensitivityResult(layers=tuple(layers), weight_bits=8, num_images=10, data_source="retro",
                             method="cached", seconds=1.0, full_pass_seconds=0.1, naive_seconds=1.0)


def test_threshold_rule():
    t = _table([0.5, -0.1, 0.0, 0.02, 0.3])
    # Th = 0: per-channel exactly where KL_PT - KL_PC > 0 (tie 0.0 stays per-tensor), most sensitive first.
    assert rq.select_layers(t).per_channel == ("l0", "l4", "l3")
    assert rq.select_layers(t, rq.HybridConfig(threshold=0.1)).per_channel == ("l0", "l4")
    assert rq.select_layers(t, rq.HybridConfig(threshold=1.0)).per_channel == ()
    assert rq.select_layers(t, rq.HybridConfig(threshold=-0.2)).per_channel == ("l0", "l4", "l3", "l2", "l1")
    plan = t.select(threshold=0.1)
    assert [s for _, _, s, _ in plan.decisions] == ["per-channel", "per-tensor", "per-tensor", "per-tensor",
                                                    "per-channel"]


def test_budget_keeps_the_most_sensitive_layers():
    t = _table([0.5, -0.1, 0.0, 0.02, 0.3])
    assert rq.select_layers(t, rq.HybridConfig(max_per_channel=2)).per_channel == ("l0", "l4")
    assert rq.select_layers(t, rq.HybridConfig(max_per_channel=0)).per_channel == ()
    assert rq.select_layers(t, rq.HybridConfig(max_per_channel=10)).per_channel == ("l0", "l4", "l3")
    # Budget and threshold together: the budget never adds layers the threshold rejects.
    assert rq.select_layers(t, rq.HybridConfig(threshold=0.4, max_per_channel=3)).per_channel == ("l0",)


def test_fully_connected_can_be_kept_per_tensor():
    t = _table([0.5, 0.9, 0.3], kinds=["CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"])
    assert rq.select_layers(t).per_channel == ("l1", "l0", "l2")
    cfg = rq.HybridConfig(fully_connected_per_tensor=True, max_per_channel=1)
    assert rq.select_layers(t, cfg).per_channel == ("l0",)


def test_plan_round_trips():
    plan = _table([0.5, -0.1, 0.3]).select(max_per_channel=1)
    assert rq.HybridPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.to_dict()["num_per_channel"] == 1 and plan.num_layers == 3


@pytest.mark.parametrize("kwargs", [{"threshold": float("nan")}, {"threshold": "x"}, {"max_per_channel": -1},
                                    {"max_per_channel": 1.5}, {"fully_connected_per_tensor": "yes"}])
def test_hybrid_config_validates(kwargs):
    with pytest.raises(ConfigError):
        rq.HybridConfig(**kwargs)


# ----------------------------------------------------------------------------- fidelity (Fig. 5)

def test_spearman_matches_scipy():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.normal(size=12)
        b = a + rng.normal(size=12)
        b[3] = b[4]  # a tie
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_fidelity_ranks_sources_against_the_reference():
    real = _table([0.5, 0.1, 0.3, 0.0])
    good = _table([0.6, 0.2, 0.4, 0.1])     # same order
    bad = _table([0.0, 0.5, 0.1, 0.3])      # reversed-ish order
    rho = fidelity({"real": real, "retro": good, "gaussian": bad})
    assert rho["real"]["difference"] == pytest.approx(1.0)
    assert rho["retro"]["difference"] == pytest.approx(1.0)
    assert rho["gaussian"]["difference"] == pytest.approx(spearman([0.5, 0.1, 0.3, 0.0], [0.0, 0.5, 0.1, 0.3]))
    with pytest.raises(ConfigError):
        fidelity({"retro": good})


def test_sequential_and_depth_multiplier_match_brute_force(sequential_model, normal_images):
    import keras
    keras.utils.set_random_seed(6)
    inp = keras.Input((H, W, C))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw2")(inp)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(K, name="fc")(x)
    mult = keras.Model(inp, out)
    k = mult.get_layer("dw2").kernel
    k.assign(k.numpy() * np.geomspace(0.05, 3.0, 6).reshape(3, 2).astype(np.float32))  # per (in, mult) channel
    images = np.random.default_rng(4).normal(0, 1, (10, H, W, C)).astype(np.float32)
    for model, x in ((mult, images), (sequential_model, normal_images)):
        res = rq.analyze_sensitivity(model, x, weight_bits=4)
        want = _brute_force(model, x, 4)
        assert set(res.names) == set(want)
        for l in res.layers:
            assert [l.kl_per_tensor, l.kl_per_channel] == pytest.approx(want[l.name], rel=2e-3, abs=1e-9), l.name
    assert res.layers[0].channels == 5


def test_shared_layer_called_twice_matches_brute_force():
    """A layer used at two places: its quantized kernel must act at both (the unstacked path)."""
    import keras
    keras.utils.set_random_seed(8)
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c0")(inp)
    shared = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="shared")
    x = shared(shared(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(K, name="fc")(x))
    k = shared.kernel
    k.assign(k.numpy() * np.geomspace(0.05, 3.0, 4).astype(np.float32))
    images = np.random.default_rng(5).normal(0, 1, (10, H, W, C)).astype(np.float32)
    res = rq.analyze_sensitivity(model, images, weight_bits=4)
    want = _brute_force(model, images, 4)
    assert res.names == ["c0", "shared", "fc"]
    for l in res.layers:
        assert [l.kl_per_tensor, l.kl_per_channel] == pytest.approx(want[l.name], rel=2e-3, abs=1e-9), l.name
