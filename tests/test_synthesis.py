"""Algorithm 1: retro / zeroq / gaussian synthesis, checked against independent numpy measurements."""
import keras
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import SynthesisConfig
from tflite_retroq.synthesis import make_targets

from conftest import C, H, NUM_CLASSES, W

SPC = 4
ITERS = 100


def _synth(model, **kw):
    kw.setdefault("samples_per_class", SPC)
    return rq.synthesize(model, SynthesisConfig(**kw), progress=False)


@pytest.fixture(scope="module")
def retro(bn_model):
    return _synth(bn_model, mode="retro", iterations=ITERS)


@pytest.fixture(scope="module")
def gaussian(bn_model):
    return _synth(bn_model, mode="gaussian", iterations=ITERS)


def _bn_inputs(model, images):
    """(bn layer, its input on `images`) via a plain Keras sub-model, no package code involved."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            a = keras.Model(model.input, layer.input)(images)
            out.append((layer, np.asarray(a, np.float64)))
    return out


def _bn_distance(model, images):
    """Mean over BN layers of mean_c (mu_batch - mu_run)^2 + mean_c (sd_batch - sqrt(var_run + eps))^2."""
    terms = []
    for bn, a in _bn_inputs(model, images):
        mu, sd = a.mean(axis=(0, 1, 2)), a.std(axis=(0, 1, 2))
        mu_r = bn.moving_mean.numpy().astype(np.float64)
        sd_r = np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
        terms.append(np.mean((mu - mu_r) ** 2) + np.mean((sd - sd_r) ** 2))
    return float(np.mean(terms))


def _np_targets(labels, num_classes, rng, lo=0.9, hi=0.99):
    """The target recipe of Algorithm 1, re-implemented: p(label) ~ U(lo, hi), the rest random (one-hot at 1, 1)."""
    n = len(labels)
    p = rng.uniform(lo, hi, size=n)
    rest = rng.uniform(0.0, 1.0, size=(n, num_classes))
    rest[np.arange(n), labels] = 0.0
    rest = rest / rest.sum(axis=1, keepdims=True) * (1.0 - p)[:, None]
    rest[np.arange(n), labels] = p
    return rest


def _rng_at_targets(seed, n):
    """The synthesis RNG replayed up to the targets: the class permutations, then the initial images."""
    rng = np.random.default_rng(seed)
    for _ in range(-(-n // NUM_CLASSES)):
        rng.permutation(NUM_CLASSES)
    rng.standard_normal((n, H, W, C))
    return rng


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- retro

def test_retro_shapes_labels_metadata(retro, bn_model):
    assert retro.images.shape == (NUM_CLASSES * SPC, H, W, C) and retro.images.dtype == np.float32
    # Balanced, and every run of NUM_CLASSES consecutive images (what one batch holds) covers every class.
    for block in retro.labels.reshape(SPC, NUM_CLASSES):
        np.testing.assert_array_equal(np.sort(block), np.arange(NUM_CLASSES))
    np.testing.assert_array_equal(np.bincount(retro.labels), [SPC] * NUM_CLASSES)
    assert retro.mode == "retro"
    assert retro.metadata["iterations_run"] == ITERS
    assert retro.metadata["num_classes"] == NUM_CLASSES and retro.metadata["num_bn_layers"] == 2
    for k in ("total", "bn", "prior", "class"):
        assert len(retro.loss_history[k]) == ITERS


def test_retro_total_loss_falls(retro):
    h = retro.loss_history
    assert h["total"][-1] < 0.5 * h["total"][0]
    # The class term (cross-entropy, one-hot) falls; on this untrained fixture classifier confident images cost
    # some BN distance (the next test checks the BN term still pulls the statistics in).
    assert h["class"][-1] < 0.5 * h["class"][0]
    np.testing.assert_allclose(np.add(np.add(h["bn"], h["prior"]), h["class"]), h["total"], rtol=1e-5)


def test_retro_bn_statistics_approach_running_stats(retro, gaussian, bn_model):
    d_retro = _bn_distance(bn_model, retro.images)
    d_gauss = _bn_distance(bn_model, gaussian.images)
    # The BN term pulls the statistics towards the running ones: without it the same images end further away,
    # and without the class term (zeroq) they land far closer than the gaussian start.
    no_bn_term = _synth(bn_model, mode="retro", iterations=ITERS, bn_weight=0.0)
    assert d_retro < 0.8 * _bn_distance(bn_model, no_bn_term.images), d_retro
    zeroq = _synth(bn_model, mode="zeroq", iterations=ITERS)
    assert _bn_distance(bn_model, zeroq.images) < 0.5 * d_gauss, d_gauss
    # the recorded BN loss of the last step agrees with the independent measurement
    # (the last record is taken one Adam step before the final images)
    assert d_retro == pytest.approx(retro.loss_history["bn"][-1], rel=0.1)


def test_first_step_losses_match_numpy(retro, gaussian, bn_model):
    """Step 0 runs on the gaussian images of the same seed: recompute its three loss terms."""
    x0 = gaussian.images
    assert retro.loss_history["bn"][0] == pytest.approx(_bn_distance(bn_model, x0), rel=1e-4)
    z0 = (x0.astype(np.float64) - 127.5) / 63.75  # the normalized space of Rescaling(1/255)
    mu, sd = z0.mean(axis=(0, 1, 2)), z0.std(axis=(0, 1, 2))
    prior = np.mean(mu ** 2) + np.mean((sd - 1.0) ** 2)
    assert retro.loss_history["prior"][0] == pytest.approx(prior, rel=1e-3, abs=1e-6)
    t = _np_targets(gaussian.labels, NUM_CLASSES, _rng_at_targets(0, len(x0)), *SynthesisConfig().target_confidence)
    np.testing.assert_array_equal(t, np.eye(NUM_CLASSES)[gaussian.labels])  # default: one-hot, the training loss
    p = _softmax(np.asarray(bn_model(x0), np.float64))
    ce = -np.mean(np.sum(t * np.log(p), axis=1))
    assert retro.loss_history["class"][0] == pytest.approx(ce, rel=1e-4)


def test_softmax_output_not_softmaxed_twice(softmax_model):
    g = _synth(softmax_model, mode="gaussian", seed=3)
    r = _synth(softmax_model, mode="retro", iterations=30, seed=3)
    t = _np_targets(g.labels, NUM_CLASSES, _rng_at_targets(3, len(g.images)), *SynthesisConfig().target_confidence)
    p = np.asarray(softmax_model(g.images), np.float64)
    once = -np.mean(np.sum(t * np.log(np.clip(p, 1e-12, 1.0)), axis=1))
    twice = -np.mean(np.sum(t * np.log(_softmax(p)), axis=1))
    assert abs(once - twice) > 1e-3  # the two readings are distinguishable
    assert r.loss_history["class"][0] == pytest.approx(once, rel=1e-4)
    assert r.loss_history["class"][-1] < r.loss_history["class"][0]


def test_retro_images_are_classified_as_their_target(retro, gaussian, bn_model):
    acc_retro = np.mean(np.argmax(np.asarray(bn_model(retro.images)), 1) == retro.labels)
    acc_gauss = np.mean(np.argmax(np.asarray(bn_model(gaussian.images)), 1) == gaussian.labels)
    assert acc_retro >= 0.75
    assert acc_retro >= acc_gauss + 0.25


def test_images_clipped_to_detected_range(retro, gaussian):
    for d in (retro, gaussian):
        assert d.images.min() >= 0.0 and d.images.max() <= 255.0
        # the clip is active: the gaussian tail and the optimization both hit the bounds
        assert np.any(d.images == 0.0) and np.any(d.images == 255.0)
    assert tuple(retro.metadata["input_space"]["lo"]) == (0.0,) * C
    assert tuple(retro.metadata["input_space"]["hi"]) == (255.0,) * C


def test_make_targets_properties():
    labels = np.repeat(np.arange(5), 7)
    t = make_targets(labels, 5, np.random.default_rng(1), (0.9, 0.99))
    assert t.shape == (35, 5) and t.dtype == np.float32
    np.testing.assert_array_equal(np.argmax(t, 1), labels)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    tp = t[np.arange(35), labels]
    assert np.all(tp >= 0.9) and np.all(tp < 0.99) and np.all(t >= 0)
    np.testing.assert_allclose(t, _np_targets(labels, 5, np.random.default_rng(1)), rtol=1e-6)
    np.testing.assert_array_equal(make_targets(labels, 5, np.random.default_rng(1)), np.eye(5)[labels])


# ----------------------------------------------------------------------------- gaussian / zeroq

def test_gaussian_is_plain_clipped_normal(gaussian):
    h = gaussian.loss_history
    assert all(len(v) == 0 for v in h.values())
    assert gaussian.metadata["iterations_run"] == 0
    # independent: z ~ N(0,1) from the seed, +-2 sigma spanning [0, 255], clipped
    rng = np.random.default_rng(0)
    for _ in range(SPC):
        rng.permutation(NUM_CLASSES)  # the class of each image is drawn first
    z = rng.standard_normal(gaussian.images.shape)
    expect = np.clip(127.5 + 63.75 * z, 0.0, 255.0)
    np.testing.assert_allclose(gaussian.images, expect, rtol=1e-5, atol=1e-3)


def test_zeroq_has_no_class_term(bn_model):
    w = dict(iterations=20, bn_weight=2.0, prior_weight=0.5)
    zq = _synth(bn_model, mode="zeroq", class_weight=50.0, **w)
    h = zq.loss_history
    assert len(h["class"]) == 20 and all(v > 0 for v in h["class"])  # recorded...
    total = 2.0 * np.asarray(h["bn"]) + 0.5 * np.asarray(h["prior"])
    np.testing.assert_allclose(h["total"], total, rtol=1e-5)  # ...but not in the objective
    assert h["bn"][-1] < h["bn"][0]
    # zeroq == retro without the class term, whatever class_weight says
    no_cls = _synth(bn_model, mode="retro", class_weight=0.0, **w)
    np.testing.assert_array_equal(zq.images, no_cls.images)
    with_cls = _synth(bn_model, mode="retro", class_weight=1.0, **w)
    assert not np.array_equal(zq.images, with_cls.images)


# ----------------------------------------------------------------------------- no BN, determinism

def test_no_bn_model(nobn_model):
    # An untrained fixture has no meaningful input scale to guess: state it, as a user of such a model should.
    d = rq.synthesize(nobn_model, SynthesisConfig(samples_per_class=SPC, mode="retro", iterations=40),
                      input_spec=rq.InputSpec(value_range=(-3.0, 3.0)), progress=False)
    h = d.loss_history
    assert h["bn"] == [0.0] * 40
    assert h["class"][-1] < h["class"][0]
    assert d.metadata["num_bn_layers"] == 0
    assert d.images.min() >= -3.0 and d.images.max() <= 3.0
    acc = np.mean(np.argmax(np.asarray(nobn_model(d.images)), 1) == d.labels)
    assert acc > 0.25


def test_determinism(bn_model, retro):
    again = _synth(bn_model, mode="retro", iterations=ITERS)  # same config and seed as `retro`
    np.testing.assert_array_equal(again.images, retro.images)
    np.testing.assert_array_equal(again.labels, retro.labels)
    assert again.loss_history == retro.loss_history
    other = _synth(bn_model, mode="retro", iterations=ITERS, seed=1)
    assert not np.array_equal(other.images, retro.images)
    assert np.mean(np.abs(other.images - retro.images)) > 1.0


def test_nested_and_sequential_models_synthesize(nested_model, sequential_model):
    for m in (nested_model, sequential_model):
        d = _synth(m, mode="retro", iterations=15, samples_per_class=2)
        assert d.images.shape == (2 * NUM_CLASSES, H, W, C)
        assert d.loss_history["bn"][-1] < d.loss_history["bn"][0]
        assert all(v > 0 for v in d.loss_history["bn"])  # the nested BN is tapped too


def test_user_input_spec_range(nobn_model):
    d = rq.synthesize(nobn_model, SynthesisConfig(mode="retro", iterations=10, samples_per_class=2),
                      input_spec=rq.InputSpec(value_range=(-1.0, 1.0)), progress=False)
    assert d.images.min() >= -1.0 and d.images.max() <= 1.0


# ----------------------------------------------------------------------------- the plateau stop rule
def test_plateau_rule_by_hand():
    """Checked every window (10) from MIN_ITERATIONS on: stop once the last window's mean improves on the one
    before by less than PLATEAU_TOL (2 %)."""
    from tflite_retroq.synthesis import plateaued
    w, tol = SynthesisConfig.PLATEAU_WINDOW, SynthesisConfig.PLATEAU_TOL
    falling = 100.0 * 0.9 ** np.arange(200)           # 10 % per iteration: never a plateau
    assert not any(plateaued(falling[:n], n) for n in range(1, 201))
    flat = np.full(200, 3.0)                           # no progress at all: stops at the first check allowed
    first = max(SynthesisConfig.MIN_ITERATIONS, 2 * w)
    assert [n for n in range(1, 201) if plateaued(flat[:n], n)][0] == first
    # a window improving by exactly 1 % < tol stops; by 3 % > tol goes on
    for gain, stops in ((0.01, True), (0.03, False)):
        seq = np.concatenate([np.full(first - w, 1.0), np.full(w, 1.0 - gain)])
        assert plateaued(seq, first) is stops
    assert tol == 0.02 and not plateaued(flat[:first + 5], first + 5)  # only at window boundaries


def test_default_iterations_stop_on_plateau_and_stay_deterministic(bn_model):
    """Default iterations (none given) end on the loss plateau, before the cap, with the same images twice;
    explicit iterations always run in full."""
    cfg = SynthesisConfig(images=8, seed=4)
    a, b = (rq.synthesize(bn_model, cfg, progress=False) for _ in range(2))
    runs = a.metadata["iterations_per_batch"]
    cap = a.metadata["plan"]["iterations"]
    assert all(SynthesisConfig.MIN_ITERATIONS <= r < cap and r % SynthesisConfig.PLATEAU_WINDOW == 0 for r in runs)
    np.testing.assert_array_equal(a.images, b.images)
    total = np.asarray(a.loss_history["total"])
    r = runs[0]
    w = SynthesisConfig.PLATEAU_WINDOW
    assert total[r - w:r].mean() > total[r - 2 * w:r - w].mean() * (1 - SynthesisConfig.PLATEAU_TOL)
    fixed = rq.synthesize(bn_model, SynthesisConfig(images=8, seed=4, iterations=cap), progress=False)
    assert fixed.metadata["iterations_per_batch"] == [cap]


def test_smoothness_prior_by_hand(bn_model, gaussian):
    """The prior column records mean/std prior + total variation of the normalized image at step 0 (numpy);
    the default weight is on only for models with attention layers."""
    from tflite_retroq.synthesis import smooth_weight_for
    r = _synth(bn_model, mode="retro", iterations=2, smooth_weight=0.5)
    z0 = (gaussian.images.astype(np.float64) - 127.5) / 63.75
    mu, sd = z0.mean(axis=(0, 1, 2)), z0.std(axis=(0, 1, 2))
    tv = np.mean((z0[:, 1:] - z0[:, :-1]) ** 2) + np.mean((z0[:, :, 1:] - z0[:, :, :-1]) ** 2)
    prior = np.mean(mu ** 2) + np.mean((sd - 1.0) ** 2)
    assert r.loss_history["prior"][0] == pytest.approx(prior + tv, rel=1e-3)
    h = r.loss_history
    assert h["total"][0] == pytest.approx(h["bn"][0] + prior + 0.5 * tv + h["class"][0], rel=1e-4)
    assert r.metadata["smooth_weight"] == 0.5
    assert smooth_weight_for(bn_model, SynthesisConfig()) == 0.0
    inp = keras.Input((4, 8))
    att = keras.Model(inp, keras.layers.Dense(3)(keras.layers.MultiHeadAttention(2, 4)(inp, inp)))
    assert smooth_weight_for(att, SynthesisConfig()) == SynthesisConfig.AUTO_SMOOTH
    assert smooth_weight_for(att, SynthesisConfig(smooth_weight=0.0)) == 0.0
