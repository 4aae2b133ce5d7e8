"""SyntheticDataset: .npz round trip, typed errors, atomic save, the converter hook."""
import json
import os

import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import DataError, OutputError, SyntheticDataset


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return SyntheticDataset(
        images=rng.normal(size=(7, 5, 4, 3)).astype(np.float32),
        labels=np.array([0, 0, 1, 1, 2, 2, 3]),
        metadata={"mode": "retro", "seed": 3, "input_space": {"lo": [0.0, 0.0, 0.0], "hi": None}},
        loss_history={"total": [3.0, 2.0, 1.5], "bn": [1.0, 0.5, 0.25], "class": []},
    )


def test_save_load_round_trip(tmp_path, data):
    path = str(tmp_path / "d.npz")
    assert data.save(path) == path
    back = SyntheticDataset.load(path)
    np.testing.assert_array_equal(back.images, data.images)
    assert back.images.dtype == np.float32 and back.labels.dtype == np.int64
    np.testing.assert_array_equal(back.labels, data.labels)
    assert back.metadata == data.metadata
    assert back.loss_history == data.loss_history
    assert back.mode == "retro" and len(back) == 7
    # the file is a plain .npz readable without the package
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["images"], data.images)
        assert json.loads(str(z["meta"]))["metadata"]["seed"] == 3
    assert [p for p in os.listdir(tmp_path)] == ["d.npz"]  # no temp file left


def test_round_trip_of_synthesized_data(tmp_path, bn_model):
    d = rq.synthesize(bn_model, rq.SynthesisConfig(mode="gaussian", samples_per_class=2), progress=False)
    p = str(tmp_path / "g.npz")
    d.save(p)
    back = SyntheticDataset.load(p)
    np.testing.assert_array_equal(back.images, d.images)
    assert back.metadata == json.loads(json.dumps(d.metadata))


def test_load_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        SyntheticDataset.load(str(tmp_path / "nope.npz"))


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_load_corrupt(tmp_path, content):
    p = tmp_path / "bad.npz"
    p.write_bytes(content)
    with pytest.raises(DataError, match="not a tflite_retroq dataset"):
        SyntheticDataset.load(str(p))


def test_load_truncated(tmp_path, data):
    p = tmp_path / "d.npz"
    data.save(str(p))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError):
        SyntheticDataset.load(str(p))


def test_load_foreign_npz(tmp_path):
    p = str(tmp_path / "other.npz")
    np.savez(p, images=np.zeros((1, 2, 2, 3), np.float32))  # no labels / meta
    with pytest.raises(DataError, match="no 'labels' or 'meta' array.*from_images"):
        SyntheticDataset.load(p)
    q = str(tmp_path / "fmt.npz")
    np.savez(q, images=np.zeros((1, 2, 2, 3), np.float32), labels=np.zeros(1, np.int64),
             meta=np.asarray(json.dumps({"format": "something/else"})))
    with pytest.raises(DataError, match="format"):
        SyntheticDataset.load(q)


def test_load_refuses_pickles(tmp_path):
    p = str(tmp_path / "pickle.npz")
    np.savez(p, images=np.array([object()], dtype=object), labels=np.zeros(1), meta=np.asarray("{}"))
    with pytest.raises(DataError):
        SyntheticDataset.load(p)


def test_save_to_unwritable_directory(tmp_path, data):
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o500)
    try:
        # as root, directory permissions do not bind: /proc accepts no new files from anyone
        target = "/proc/retroq-test.npz" if os.access(d, os.W_OK) else str(d / "x.npz")
        with pytest.raises(OutputError, match="Cannot write"):
            data.save(target)
        assert not os.path.exists(target)
        assert os.listdir(d) == []
    finally:
        os.chmod(d, 0o700)


def test_save_when_temp_file_cannot_be_created(tmp_path, data, monkeypatch):
    import tempfile

    def deny(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", deny)
    with pytest.raises(OutputError, match="Permission denied"):
        data.save(str(tmp_path / "x.npz"))
    assert os.listdir(tmp_path) == []


def test_save_to_missing_directory_or_directory(tmp_path, data):
    with pytest.raises(OutputError, match="does not exist"):
        data.save(str(tmp_path / "missing" / "x.npz"))
    with pytest.raises(OutputError, match="is a directory"):
        data.save(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path, data, monkeypatch):
    """A failure half-way through writing leaves neither the target nor a temp file."""
    target = tmp_path / "x.npz"

    def boom(f, **kw):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OutputError):
        data.save(str(target))
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path, data, monkeypatch):
    target = tmp_path / "x.npz"
    data.save(str(target))
    before = target.read_bytes()

    def boom(f, **kw):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OutputError):
        data.save(str(target))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.npz"]


@pytest.mark.parametrize("images, labels, needle", [
    (np.zeros((0, 2, 2, 3)), np.zeros(0), "non-empty"),
    (np.zeros((2, 2, 3)), np.zeros(2), "non-empty"),
    (np.zeros((2, 2, 2, 3)), np.zeros(3), "labels must have shape"),
    (np.full((1, 2, 2, 3), np.nan), np.zeros(1), "NaN"),
])
def test_constructor_validation(images, labels, needle):
    with pytest.raises(DataError, match=needle):
        SyntheticDataset(images=images, labels=labels)


def test_check_fits(data):
    data.check_fits((5, 4, 3))
    with pytest.raises(DataError, match="synthesize data for this model"):
        data.check_fits((4, 5, 3))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_representative_dataset_covers_all_images(data, batch_size):
    gen = rq.representative_dataset(data, batch_size=batch_size)
    assert callable(gen)
    batches = list(gen())
    assert all(isinstance(b, list) and len(b) == 1 for b in batches)
    arrays = [b[0] for b in batches]
    assert all(a.dtype == np.float32 and a.ndim == 4 and a.shape[1:] == (5, 4, 3) for a in arrays)
    if batch_size == 1:
        assert all(a.shape[0] == 1 for a in arrays)
    assert len(arrays) == -(-7 // batch_size)
    np.testing.assert_array_equal(np.concatenate(arrays), data.images)
    # a generator function: calling it again starts over (the converter may iterate twice)
    assert len(list(gen())) == len(batches)


def test_representative_dataset_max_samples(data):
    arrays = [b[0] for b in data.representative_dataset(max_samples=4)()]
    assert len(arrays) == 4
    np.testing.assert_array_equal(np.concatenate(arrays), data.images[:4])


def test_from_images():
    imgs = np.ones((3, 2, 2, 1), np.float64)
    d = SyntheticDataset.from_images(imgs)
    assert d.images.dtype == np.float32 and d.mode == "real"
    np.testing.assert_array_equal(d.labels, [0, 0, 0])
