"""Issue 16: the range-fidelity metric of benchmarks/zoo_models.py, checked against ranges read from Keras."""
import keras
import numpy as np

import tflite_retroq as rq
from benchmarks import range_fidelity


def test_logits_and_feature_ratios_match_keras(bn_model, real_images, pixel_images):
    """The logits' and GAP features' range ratios (uniform-noise images vs "real" ones) equal the ratio of the
    min/max spans computed from the Keras model's own tensors on the same images."""
    real = rq.calibrate(bn_model, rq.SyntheticDataset.from_images(real_images), logit_range="calibrated")
    noise = rq.calibrate(bn_model, rq.SyntheticDataset.from_images(pixel_images), logit_range="calibrated")
    got = range_fidelity.fidelity(noise, real)
    head = keras.Model(bn_model.inputs, [bn_model.get_layer("gap").output, bn_model.output])

    def span(images, which):
        a = np.asarray(head(images)[which], np.float64)
        return a.max() - a.min()

    np.testing.assert_allclose(got["range_logits"], span(pixel_images, 1) / span(real_images, 1), rtol=1e-3)
    np.testing.assert_allclose(got["range_features"], span(pixel_images, 0) / span(real_images, 0), rtol=1e-3)
    assert got["range_tensors"] >= 4
    assert abs(np.log(got["range_worst"])) >= abs(np.log(got["range_median"]))
    same = range_fidelity.fidelity(real, real)
    assert same["range_median"] == same["range_worst"] == same["range_logits"] == 1.0
