"""A tiny labelled task for trained fixtures: the class is the pattern of an image (horizontal, vertical or
diagonal stripes, or a checkerboard) under random colours, phase and noise. A patch embedding sees it, a
per-token LayerNorm does not erase it (unlike brightness), and a few epochs learn it."""
import numpy as np

H, W, C, CLASSES = 16, 16, 3, 4


def stripes(n, seed):
    """(images in [0, 255] float32, int labels)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    phase = rng.integers(0, 2, n)[:, None, None]
    patterns = [(i[None] + phase) % 2, (j[None] + phase) % 2, (i[None] + j[None] + phase) % 2,
                (i[None] // 2 + j[None] // 2 + phase) % 2]
    p = np.choose(y[:, None, None], patterns).astype(np.float32)[..., None]
    bg = rng.uniform(0, 120, (n, 1, 1, C))
    fg = bg + rng.uniform(80, 135, (n, 1, 1, C))
    img = p * fg + (1 - p) * bg + rng.normal(0, 20, (n, H, W, C))
    return np.clip(img, 0, 255).astype(np.float32), y


def train(model, n=1024, epochs=8, seed=0):
    """Fit on the task (cross-entropy on logits); returns the model."""
    import keras
    x, y = stripes(n, seed)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model
