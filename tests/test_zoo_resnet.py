"""The Keras port of the pretrained CIFAR-10 ResNets reproduces the PyTorch reference.

These tests need the shared zoo (../shared/zoo, or $RETROQ_ZOO). They FAIL, never
skip, when it is missing: CI provides it.
"""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

# benchmarks/ is not an installed package: make the repository root importable even
# when pytest is run as plain `pytest` (which does not put the cwd on sys.path).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from benchmarks.zoo import cifar_resnet as cr  # noqa: E402


@pytest.fixture(scope="module")
def resnet20():
    return cr.build_resnet(20)


@pytest.fixture(scope="module")
def cifar_test():
    return cr.load_cifar(split="test")


def test_default_zoo_dir_is_shared_zoo(monkeypatch):
    monkeypatch.delenv(cr.ZOO_ENV_VAR, raising=False)
    d = cr.default_zoo_dir()
    assert d.parts[-2:] == ("shared", "zoo")
    assert (d / "cifar10" / "resnet20.npz").is_file(), (
        f"shared model zoo missing at {d}; set {cr.ZOO_ENV_VAR}"
    )


def test_resnet20_reference_accuracy(resnet20, cifar_test):
    images, labels = cifar_test
    assert images.shape == (1017, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int64
    logits = resnet20.predict(images, batch_size=256, verbose=0)
    assert logits.shape == (1017, 10)
    acc = 100.0 * np.mean(np.argmax(logits, axis=1) == labels)
    assert abs(acc - cr.REFERENCE_ACCURACY[20]) <= 0.1 + 1e-9, acc


def test_option_a_shortcut_matches_numpy_slicing_and_padding():
    rng = np.random.default_rng(0)
    for (h, w, c, planes) in [(32, 32, 16, 32), (16, 16, 32, 64), (7, 9, 4, 8)]:
        x = rng.standard_normal((3, h, w, c)).astype(np.float32)
        inp = keras.Input(shape=(h, w, c))
        model = keras.Model(inp, cr.option_a_shortcut(inp, planes))
        got = keras.ops.convert_to_numpy(model(x))
        p = planes // 4
        want = np.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (p, p)))
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_invalid_depth_raises():
    for depth in (18, 110, 0):
        with pytest.raises(ValueError):
            cr.build_resnet(depth)


def test_missing_zoo_names_file_and_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(cr.ZOO_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        cr.load_cifar()
    msg = str(err.value)
    assert "test_first1017.npz" in msg and cr.ZOO_ENV_VAR in msg
    with pytest.raises(FileNotFoundError, match="resnet20.npz"):
        cr.build_resnet(20, tmp_path)


def test_resnet20_keras_roundtrip_safe_mode(resnet20, cifar_test, tmp_path):
    images = cifar_test[0][:64]
    path = tmp_path / "resnet20.keras"
    resnet20.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        resnet20.predict(images, verbose=0), loaded.predict(images, verbose=0)
    )
