"""Session-scoped tiny Keras models shared by the core test modules.

Every model is small (16x16x3 input, a handful of channels) so the whole suite runs
in a few minutes on two CPU cores. BatchNorm layers get explicit, non-trivial moving
statistics and gamma/beta so folding and BN-statistics tests are not vacuous.
"""
import contextlib
import os
import signal
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

H, W, C = 16, 16, 3
NUM_CLASSES = 4

# No test may hang the suite: every test runs under a SIGALRM bound, `@pytest.mark.timeout(S)` for its
# own, else RETROQ_TEST_TIMEOUT seconds (default an hour, far past any test on a loaded 2-core machine).
# An endless Python loop is interrupted; a test that waits on a child process passes its own timeout.
DEFAULT_TEST_TIMEOUT = int(os.environ.get("RETROQ_TEST_TIMEOUT", "3600"))


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): fail the test when it runs longer than `seconds`")


@contextlib.contextmanager
def alarm_after(seconds: int, expired):
    """Run the block under SIGALRM: `expired(signum, frame)` (which raises) fires after `seconds`. Nested
    bounds keep the outer one: its remaining time is re-armed when the inner block ends."""
    old = signal.signal(signal.SIGALRM, expired)
    outer, t0 = signal.alarm(seconds), time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if outer:
            signal.alarm(max(1, outer - int(time.monotonic() - t0)))


@pytest.fixture(autouse=True)
def _bounded_test(request):
    marker = request.node.get_closest_marker("timeout")
    seconds = int(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT
    if seconds <= 0 or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(*_):
        pytest.fail(f"{request.node.nodeid} ran longer than its bound of {seconds} s (a hang?)", pytrace=False)

    with alarm_after(seconds, _expired):
        yield


def _keras():
    import keras
    return keras


def set_bn_stats(bn, rng):
    """Random but sane BN parameters: |gamma| away from 0, var > 0, mean/beta non-zero."""
    ch = int(bn.moving_mean.shape[0])
    bn.gamma.assign(rng.uniform(0.5, 1.5, ch).astype(np.float32) * rng.choice([-1.0, 1.0], ch).astype(np.float32))
    bn.beta.assign(rng.normal(0.0, 0.3, ch).astype(np.float32))
    bn.moving_mean.assign(rng.normal(0.0, 0.5, ch).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.3, 2.0, ch).astype(np.float32))


def _randomize_biases(model, rng):
    """Layers are created with zero biases; give them non-zero ones so bias paths are tested."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype(np.float32))


def build_bn_model(seed=0):
    """Rescaling(1/255) -> Conv -> BN -> ReLU -> DepthwiseConv -> BN -> GAP -> Dense (logits)."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((H, W, C), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(NUM_CLASSES, name="fc")(x)
    model = keras.Model(inp, out, name="tiny_bn")
    rng = np.random.default_rng(seed + 100)
    _randomize_biases(model, rng)
    # Moving statistics as if the model had been trained on "real" images: smooth, coloured
    # pictures (unlike N(0,1) noise), so the statistics are reachable by synthesis yet far
    # from what Gaussian images give; then perturbed a little.
    real = structured_images(64, rng)
    for name in ("bn1", "bn2"):  # in order: bn2's input depends on bn1's parameters
        bn = model.get_layer(name)
        set_bn_stats(bn, rng)
        a = np.asarray(keras.Model(model.input, bn.input)(real), np.float64)
        mu, sd = a.mean(axis=(0, 1, 2)), a.std(axis=(0, 1, 2))
        ch = mu.shape[0]
        bn.moving_mean.assign((mu + 0.1 * sd * rng.standard_normal(ch)).astype(np.float32))
        bn.moving_variance.assign((sd ** 2 * rng.uniform(0.8, 1.25, ch)).astype(np.float32))
    return model


def structured_images(n, rng):
    """Blocky, per-channel-biased images in [0, 255] (a stand-in for a real data set)."""
    low = rng.uniform(0.0, 1.0, (n, H // 4, W // 4, C))
    img = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2)
    return np.clip(img * np.array([200.0, 120.0, 60.0]) + np.array([30.0, 80.0, 150.0]), 0, 255).astype(np.float32)


@pytest.fixture(scope="session")
def bn_model():
    return build_bn_model(0)


@pytest.fixture(scope="session")
def nobn_model():
    """No BatchNorm at all, logits output, no preprocessing front: its input space must be stated (untrained)."""
    keras = _keras()
    keras.utils.set_random_seed(1)
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(NUM_CLASSES)(x)
    model = keras.Model(inp, out, name="tiny_nobn")
    _randomize_biases(model, np.random.default_rng(1))
    return model


@pytest.fixture(scope="session")
def softmax_model():
    """Conv -> BN -> ReLU -> GAP -> Dense(softmax): the output already is probabilities."""
    keras = _keras()
    keras.utils.set_random_seed(2)
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inp, out, name="tiny_softmax")
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            set_bn_stats(layer, rng)
    _randomize_biases(model, rng)
    dense = model.layers[-1]
    dense.kernel.assign(dense.kernel.numpy() * 8.0)  # confident (far from uniform) probabilities
    return model


@pytest.fixture(scope="session")
def nested_model():
    """A functional model whose middle is a functional sub-model holding Conv -> BN."""
    keras = _keras()
    keras.utils.set_random_seed(3)
    sub_in = keras.Input((H, W, 6))
    y = keras.layers.Conv2D(6, 3, padding="same", name="sub_conv")(sub_in)
    y = keras.layers.BatchNormalization(name="sub_bn")(y)
    y = keras.layers.ReLU()(y)
    block = keras.Model(sub_in, y, name="block")
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(6, 3, padding="same", name="stem")(inp)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = block(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(NUM_CLASSES, name="head")(x)
    model = keras.Model(inp, out, name="tiny_nested")
    rng = np.random.default_rng(3)
    set_bn_stats(model.get_layer("stem_bn"), rng)
    set_bn_stats(block.get_layer("sub_bn"), rng)
    _randomize_biases(model, rng)
    return model


@pytest.fixture(scope="session")
def sequential_model():
    keras = _keras()
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input((H, W, C)),
        keras.layers.Conv2D(5, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(NUM_CLASSES),
    ], name="tiny_seq")
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            set_bn_stats(layer, rng)
    _randomize_biases(model, rng)
    return model


@pytest.fixture(scope="session")
def pixel_images():
    """Random images in the BN model's pixel space [0, 255]."""
    return np.random.default_rng(7).uniform(0, 255, (12, H, W, C)).astype(np.float32)


@pytest.fixture(scope="session")
def real_images():
    """Images from the BN model's "training distribution" (see build_bn_model)."""
    return structured_images(32, np.random.default_rng(9))


@pytest.fixture(scope="session")
def normal_images():
    """Random images in N(0, 1) space (models without a preprocessing front)."""
    return np.random.default_rng(8).standard_normal((12, H, W, C)).astype(np.float32)


@pytest.fixture(scope="session")
def calib_data(bn_model):
    """Retro-synthesized data for the BN model (8 images per class), shared by converter/evaluate tests."""
    import tflite_retroq as rq
    return rq.synthesize(bn_model, rq.SynthesisConfig(mode="retro", samples_per_class=8, iterations=60, seed=5),
                         progress=False)


@pytest.fixture(scope="session")
def int8_bytes(bn_model, calib_data):
    """The default per-channel full-int8 .tflite of the BN model."""
    import tflite_retroq as rq
    return rq.convert(bn_model, calib_data)


@pytest.fixture(scope="session")
def flatten_model():
    """Conv (stride 2) -> DepthwiseConv -> Flatten -> Dense on 8x8x2: Flatten brings SHAPE/STRIDED_SLICE/PACK
    into the stock converter's dynamic-batch .tflite (our export folds them). Weight sizes are multiples of 16 bytes (Vela pads weight streams to 16)."""
    keras = _keras()
    keras.utils.set_random_seed(11)
    inp = keras.Input((8, 8, 2), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(4, name="fc")(x)
    model = keras.Model(inp, out, name="tiny_flatten")
    _randomize_biases(model, np.random.default_rng(11))
    return model


def build_lut_model(seed=11):
    """Large enough for LUT packing to shrink a tensor (a 3x3x16->32 conv, 4608 weights), still tiny:
    Rescaling -> Conv(16) -> BN -> ReLU -> DepthwiseConv -> Conv(32, stride 2, ReLU) -> GAP -> Dense."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((H, W, C), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(NUM_CLASSES, name="fc")(x)
    model = keras.Model(inp, out, name="tiny_lut")
    rng = np.random.default_rng(seed)
    set_bn_stats(model.get_layer("bn1"), rng)
    _randomize_biases(model, rng)
    k = model.get_layer("conv2").kernel.numpy()  # heavy tails, as trained weights have
    model.get_layer("conv2").kernel.assign((k * (1 + 3 * (rng.random(k.shape) < 0.02))).astype(np.float32))
    return model


@pytest.fixture(scope="session")
def lut_model():
    return build_lut_model()


@pytest.fixture(scope="session")
def lut_calibrated(lut_model):
    """(calibrated float .tflite, retro data) of lut_model: calibrate once, quantize many ways."""
    import tflite_retroq as rq
    data = rq.synthesize(lut_model, rq.SynthesisConfig(mode="retro", samples_per_class=4, iterations=20, seed=3),
                         progress=False)
    return rq.calibrate(lut_model, data), data


def stock_int8(model, images):
    """The stock TFLiteConverter's full-int8 export (dynamic batch: a Flatten computes its shape at run time,
    SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE), calibrated on `images` one at a time: the independent reference."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[None]] for x in images)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def retroq_command():
    """The `retroq` console script of this interpreter's environment (or `python -m tflite_retroq.cli`)."""
    import shutil
    import sys
    from pathlib import Path
    exe = Path(sys.executable).with_name("retroq")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("retroq")
    return [found] if found else [sys.executable, "-m", "tflite_retroq.cli"]
