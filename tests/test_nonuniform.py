"""nonuniform.py: quartiles, IQR clusters, level allocation and codes, on hand-computed examples,
an independent brute-force re-implementation, and degenerate tensors."""
import numpy as np
import pytest

from tflite_retroq.quant import nonuniform as nu
from tflite_retroq.errors import ConfigError, QuantizationError


# ----------------------------------------------------------------------------- quartiles

@pytest.mark.parametrize("values, q1, q3", [
    (range(1, 9), 2.5, 6.5),        # even: halves [1..4], [5..8]
    (range(1, 8), 2.0, 6.0),        # odd: the median 4 belongs to neither half (np.percentile: 2.5, 5.5)
    ([5.0], 5.0, 5.0),
    ([3.0, 1.0], 1.0, 3.0),
    ([9, 1, 7, 3, 5], 2.0, 8.0),    # unsorted input
])
def test_quartiles_are_medians_of_the_halves(values, q1, q3):
    assert nu.quartiles(np.asarray(values, np.float32)) == (q1, q3)


# ----------------------------------------------------------------------------- allocation

@pytest.mark.parametrize("weights, total, expect", [
    ([2, 12, 2], 16, [2, 12, 2]),       # exact quotas
    ([1, 2, 1], 8, [2, 4, 2]),
    ([1, 1, 1], 4, [2, 1, 1]),          # quotas 1.33 each: the one spare level to the first largest remainder
    ([1, 3, 2], 8, [1, 4, 3]),          # quotas 1.33, 4, 2.67: floors 1, 4, 2, spare to the .67
    ([1, 100, 3], 16, [1, 14, 1]),      # quotas 0.15 and 0.46 are raised to the minimum of one
    ([0, 7, 1], 8, [1, 6, 1]),          # a zero-range cluster keeps exactly one level
    ([0, 0, 0], 256, [1, 1, 1]),        # nothing to share
    ([5], 16, [16]),
])
def test_allocation_hand_computed(weights, total, expect):
    got = nu.allocate_levels(weights, total)
    assert got == expect
    if any(weights):
        assert sum(got) == total


def test_allocation_sums_to_total_and_follows_range_times_count():
    rng = np.random.default_rng(0)
    for _ in range(300):
        total = int(2 ** rng.integers(2, 9))
        w = rng.uniform(0, 1, 3) * rng.choice([0.0, 1.0, 1.0, 1.0], 3)
        if not w.any():
            continue
        got = np.array(nu.allocate_levels(w, total))
        assert got.sum() == total and np.all(got >= 1)
        quota = total * w / w.sum()
        if np.all(quota >= 1):  # no minimum to enforce: largest remainder keeps every share within one level
            assert np.all(np.abs(got - quota) < 1), (w, total, got, quota)
        big = int(np.argmax(w))
        assert got[big] == got.max()  # the largest range x count gets the most levels


def test_allocation_refuses_too_few_levels():
    with pytest.raises(QuantizationError):
        nu.allocate_levels([1, 1, 1], 2)


# ----------------------------------------------------------------------------- quantize, by hand

W8 = np.array([-10, -1, -0.5, 0, 0.5, 1, 1.5, 12], np.float32)  # Q1 -0.75, Q3 1.25, fences -3.75, 4.25


def test_hand_example_two_bits():
    r = nu.quantize(W8, 2)
    s = r.slices[0]
    assert (s.q1, s.q3) == (-0.75, 1.25)
    assert [c.count for c in s.clusters] == [1, 6, 1]
    # range x count = 0, 2.5 x 6, 0 -> [1, 4, 1] over 4 levels -> [1, 2, 1]
    assert [c.levels for c in s.clusters] == [1, 2, 1]
    np.testing.assert_allclose(s.levels, [-10, -1, 1.5, 12])
    np.testing.assert_array_equal(r.codes, [0, 1, 1, 1, 2, 2, 2, 3])
    np.testing.assert_allclose(r.dequantize(), [-10, -1, -1, -1, 1.5, 1.5, 1.5, 12])


def test_hand_example_three_bits_is_exact():
    r = nu.quantize(W8, 3)  # centre gets 6 levels at step 0.5: every weight is a level
    assert [c.levels for c in r.slices[0].clusters] == [1, 6, 1]
    np.testing.assert_allclose(r.dequantize(), W8)
    assert nu.sqnr_db(W8, r.dequantize()) == float("inf")


def test_weight_maps_within_its_own_cluster_not_globally():
    # 99 centre weights in [-1, 1], high outliers 3.4 and 10: the high cluster's single level is 6.7;
    # 3.4 is nearer to the centre's top level 1.0 yet must take its own cluster's level.
    w = np.concatenate([np.linspace(-1, 1, 99), [3.4, 10.0]]).astype(np.float32)
    r = nu.quantize(w, 2)
    high = r.slices[0].clusters[2]
    assert high.count == 2 and high.levels == 1
    assert r.dequantize()[-2] == pytest.approx(6.7)


def _brute_force(w, bits):
    """Independent re-implementation: fences from sorted halves, linspace levels, argmin per cluster."""
    x = np.sort(w.astype(np.float64))
    n = len(x)
    lower, upper = x[: n // 2], x[(n + 1) // 2:]
    q1, q3 = np.median(lower), np.median(upper)
    lo_f, hi_f = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    masks = [w < lo_f, (w >= lo_f) & (w <= hi_f), w > hi_f]
    weights = [(w[m].max() - w[m].min()) * m.sum() if m.any() else None for m in masks]
    present = [i for i, v in enumerate(weights) if v is not None]
    alloc = dict(zip(present, nu.allocate_levels([weights[i] for i in present], 2 ** bits)))
    out = np.empty_like(w, np.float64)
    for i in present:
        m = masks[i]
        lo, hi = w[m].min(), w[m].max()
        lv = np.array([(lo + hi) / 2]) if alloc[i] == 1 or hi == lo else np.linspace(lo, hi, alloc[i])
        out[m] = lv[np.argmin(np.abs(w[m][:, None] - lv[None, :]), axis=1)]
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_matches_brute_force_on_heavy_tailed_weights(bits):
    rng = np.random.default_rng(bits)
    w = (rng.standard_t(3, 2000) * 0.05).astype(np.float32)
    r = nu.quantize(w, bits)
    np.testing.assert_allclose(r.dequantize(), _brute_force(w.astype(np.float64), bits), rtol=0, atol=1e-6)
    assert len(r.slices[0].levels) == 2 ** bits
    assert np.all(np.diff(r.slices[0].levels) > 0)


def test_centre_gets_finer_steps_than_a_uniform_grid():
    """The point of the method: on heavy tails the dense centre is resolved more finely."""
    rng = np.random.default_rng(1)
    w = rng.standard_t(2, 5000).astype(np.float32)
    r = nu.quantize(w, 4)
    centre = r.slices[0].clusters[1]
    uniform_step = (w.max() - w.min()) / 15
    assert centre.step < uniform_step / 3
    inside = (w >= centre.lo) & (w <= centre.hi)
    err_nu = np.abs(r.dequantize() - w)[inside].mean()
    grid = np.linspace(w.min(), w.max(), 16)
    err_uni = np.abs(grid[np.argmin(np.abs(w[:, None] - grid), 1)] - w)[inside].mean()
    assert err_nu < err_uni / 3


# ----------------------------------------------------------------------------- degenerate tensors

def test_all_equal():
    r = nu.quantize(np.full((3, 3), 0.25, np.float32), 4)
    assert len(r.slices[0].levels) == 1
    np.testing.assert_array_equal(r.codes, 0)
    np.testing.assert_array_equal(r.dequantize(), 0.25)


def test_no_outliers_centre_takes_all_levels():
    w = np.linspace(-1, 1, 64).astype(np.float32)
    r = nu.quantize(w, 4)
    assert [c.levels for c in r.slices[0].clusters] == [0, 16, 0]
    np.testing.assert_allclose(r.slices[0].levels, np.linspace(-1, 1, 16), atol=1e-7)


def test_one_sided_outliers():
    w = np.concatenate([np.linspace(0, 1, 50), [5.0, 6.0, 9.0]]).astype(np.float32)
    r = nu.quantize(w, 4)
    cl = r.slices[0].clusters
    assert cl[0].count == 0 and cl[0].levels == 0 and cl[0].lo is None
    assert cl[2].count == 3 and cl[1].levels + cl[2].levels == 16


@pytest.mark.parametrize("w", [[0.3], [0.3, -0.2], [1.0, 2.0, 3.0]])
def test_tiny_tensors(w):
    w = np.asarray(w, np.float32)
    r = nu.quantize(w, 4)
    step = (w.max() - w.min()) / 15  # no outliers: 16 uniform levels over the extent, ends exact
    assert np.all(np.abs(r.dequantize() - w) <= step / 2 + 1e-7)
    assert r.dequantize()[np.argmax(w)] == w.max() and r.dequantize()[np.argmin(w)] == w.min()


@pytest.mark.parametrize("bad", [np.zeros(0), np.array([1.0, np.nan]), np.array([np.inf, 0.0])])
def test_bad_tensors_refused(bad):
    with pytest.raises(QuantizationError):
        nu.quantize(bad, 4)


@pytest.mark.parametrize("bits", [1, 9, 4.0, True])
def test_bad_bits_refused(bits):
    with pytest.raises(ConfigError):
        nu.quantize(np.ones(4), bits)


# ----------------------------------------------------------------------------- per channel

@pytest.mark.parametrize("axis", [0, 3])
def test_per_channel_is_per_slice(axis):
    rng = np.random.default_rng(axis)
    w = (rng.standard_t(3, (4, 3, 3, 5)) * rng.uniform(0.1, 2, (4, 1, 1, 1))).astype(np.float32)
    r = nu.quantize(w, 3, axis=axis)
    assert r.per_channel and r.codes.shape == w.shape and len(r.slices) == w.shape[axis]
    deq = r.dequantize()
    for c in range(w.shape[axis]):
        ref = nu.quantize(np.take(w, c, axis=axis), 3)
        np.testing.assert_array_equal(np.take(deq, c, axis=axis), ref.dequantize())
        np.testing.assert_array_equal(np.take(r.codes, c, axis=axis), ref.codes)
    assert nu.sqnr_db(w, deq) > nu.sqnr_db(w, nu.quantize(w, 3).dequantize())
    stats = r.stats()
    assert stats["scheme"] == "per-channel" and sum(c["count"] for c in stats["clusters"]) == w.size


def test_per_channel_bad_axis():
    with pytest.raises(QuantizationError):
        nu.quantize(np.ones((2, 2)), 4, axis=2)
