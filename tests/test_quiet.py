"""The Python API stays as quiet as the CLI: nothing on stdout or stderr after TensorFlow's own import noise."""
import subprocess
import sys

_CODE = r"""
import os, sys
import numpy as np
import tensorflow as tf, keras  # TensorFlow's import-time and device-probing lines are not ours
import tflite_retroq as rq
keras.utils.set_random_seed(0)
inp = keras.Input((8, 8, 3))
x = keras.layers.Rescaling(1 / 255)(inp)
x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, padding="same")(x)))
model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
sys.stderr.write("=MARK=\n"); sys.stderr.flush()  # the user's own model is built: from here on it is all ours
data = rq.synthesize(model, rq.SynthesisConfig(images=6, iterations=2), progress=False)
q = rq.convert(model, data)
rq.evaluate(q, data.images, data.labels, reference=model)
sys.stdout.flush(); sys.stderr.flush()
"""


def test_api_prints_nothing():
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""
    after = proc.stderr.split("=MARK=\n", 1)[1]
    assert after == "", after[-2000:]


def test_hybrid_api_prints_nothing():
    code = _CODE.replace("q = rq.convert(model, data)", "q = rq.convert(model, data, scheme='hybrid', max_per_channel=1)\n"
                         "s = rq.analyze_sensitivity(model, data, weight_bits=4)")
    assert code != _CODE
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr.split("=MARK=\n", 1)[1] == ""
