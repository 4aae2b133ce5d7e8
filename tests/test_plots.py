"""The figures say what they show: axis labels, whole titles, captions with the pixel range, and no
curve or label that does not exist (issue 18)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tflite_retroq.dataset import SyntheticDataset  # noqa: E402
from tflite_retroq.reports import plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """Keep each figure the plot functions close, to look at it afterwards."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def _data(mode, lo=None, hi=None, n=8):
    rng = np.random.default_rng(0)
    space = {"source": "test", "lo": lo, "hi": hi}
    history = {k: list(np.linspace(2, 1, 5)) for k in ("total", "bn", "prior", "class")}
    return SyntheticDataset(images=rng.uniform(0, 1, (n, 6, 6, 1)), labels=np.arange(n) % 4,
                            metadata={"mode": mode, "input_space": space}, loss_history=history)


def _texts(fig):
    return [t.get_text() for t in fig.texts] + [ax.get_title(loc="left") for ax in fig.axes]


def test_zeroq_losses_draw_no_class_curve(figures, tmp_path):
    plots.plot_losses(_data("zeroq"), str(tmp_path / "z.png"))
    plots.plot_losses(_data("retro"), str(tmp_path / "r.png"))
    zeroq, retro = ([l.get_label() for l in f.axes[0].get_lines()] for f in figures)
    assert "class" not in zeroq and "class" in retro
    ax = figures[0].axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()


def test_gaussian_grid_is_not_labelled_by_class(figures, tmp_path):
    plots.plot_images(_data("gaussian"), str(tmp_path / "g.png"))
    plots.plot_images(_data("retro"), str(tmp_path / "r.png"))
    gaussian, retro = (" ".join(_texts(f)) for f in figures)
    assert "class 0" not in gaussian and "class 0" in retro


def test_grid_caption_states_the_pixel_range(figures, tmp_path):
    plots.plot_images(_data("retro", lo=[0.0], hi=[255.0]), str(tmp_path / "a.png"))
    plots.plot_images(_data("retro"), str(tmp_path / "b.png"))
    known, unknown = (" ".join(_texts(f)) for f in figures)
    assert "[0, 255]" in known and "no pixel range known" in unknown


def test_weight_histogram_has_axis_labels_and_whole_title(figures):
    name = "model/conv2d_3/BiasAdd;model/batch_normalization_3/FusedBatchNormV3;model/conv2d_3/Conv2D" * 2
    fig = plots.plot_weight_levels([(name, np.random.default_rng(0).normal(size=500), {"levels": [0.0]}, None)])
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.get_title(loc="left").replace("\n", "") == name
