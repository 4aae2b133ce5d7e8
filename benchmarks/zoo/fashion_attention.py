"""Two small Fashion-MNIST attention models the transformer benchmark trains itself (seeded, cached).

* ``vit``: a tiny vision transformer: 4x4 patch embedding, a depthwise 3x3 on the patch grid as
  positional encoding (zero padding tells position; no custom layer, so the cache reloads as a
  plain `.keras`), two pre-LN blocks (LayerNormalization, MultiHeadAttention, GELU MLP), no BatchNorm.
* ``conv_attn``: a conv stem with BatchNorm (two strided Conv-BN-ReLU) then one attention block
  on the 7x7 feature grid: the hybrid shape of MobileViT-style edge models.

Both take raw pixels 0..255 behind a Rescaling(1/255) front and output logits. Trained on the
first `train_images` training images for a few epochs (a few minutes on 2 shared cores), cached
under ``benchmarks/.cache/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from benchmarks.zoo.fashion import CACHE, cached_model, load_fashion_mnist

KINDS = ("vit", "conv_attn")


def _block(keras, x, dim: int, heads: int, mlp: int, name: str):
    y = keras.layers.LayerNormalization(name=f"{name}_ln1")(x)
    y = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"{name}_mha")(y, y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = keras.layers.LayerNormalization(name=f"{name}_ln2")(x)
    y = keras.layers.Dense(mlp, activation="gelu", name=f"{name}_mlp1")(y)
    y = keras.layers.Dense(dim, name=f"{name}_mlp2")(y)
    return keras.layers.Add(name=f"{name}_add2")([x, y])


def build(kind: str):
    import keras
    dim = 32
    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inp)
    if kind == "vit":
        x = keras.layers.Conv2D(dim, 4, strides=4, name="patches")(x)
        x = keras.layers.Add(name="pos")([x, keras.layers.DepthwiseConv2D(3, padding="same", name="pos_dw")(x)])
        blocks = 2
    elif kind == "conv_attn":
        for i, filters in enumerate((16, dim)):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
            # momentum 0.9: a few hundred training steps must leave moving statistics that match the weights
            # (with the default 0.99 the model scored 23 % after 3 epochs of 12000 images).
            bn = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")
            x = keras.layers.ReLU(name=f"relu{i}")(bn(x))
        blocks = 1
    else:
        raise ValueError(f"kind must be one of {KINDS}")
    x = keras.layers.Reshape((49, dim), name="tokens")(x)
    for b in range(blocks):
        x = _block(keras, x, dim, heads=2, mlp=2 * dim, name=f"block{b}")
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(x), name=f"fashion_{kind}")


def trained_model(kind: str, cache_dir: Optional[Path] = None, epochs: int = 3, train_images: int = 20000):
    """The trained model, cached after the first call."""
    import keras

    def fit():
        keras.utils.set_random_seed(0)
        x, y = load_fashion_mnist("train")
        model = build(kind)
        model.compile(optimizer=keras.optimizers.Adam(2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x[:train_images], y[:train_images], epochs=epochs, batch_size=128, verbose=0)
        return model

    return cached_model(Path(cache_dir or CACHE) / f"fashion_{kind}_e{epochs}_n{train_images}.keras", fit)
