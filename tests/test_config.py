"""Config validation (clear typed errors) and JSON round trips."""
import json

import pytest

from tflite_retroq import (ConfigError, InputSpec, InputSpecError, IOType, QuantizationConfig, RetroQError, Scheme,
                           SynthesisConfig, SynthesisMode)
from tflite_retroq.config import as_channels


def test_synthesis_defaults_and_enum_coercion():
    c = SynthesisConfig(mode="zeroq", samples_per_class=3, iterations=7, learning_rate=1, seed=5)
    assert c.mode is SynthesisMode.ZEROQ
    assert isinstance(c.learning_rate, float) and c.learning_rate == 1.0
    assert SynthesisConfig(mode=SynthesisMode.GAUSSIAN).mode is SynthesisMode.GAUSSIAN
    assert SynthesisConfig().mode is SynthesisMode.RETRO


@pytest.mark.parametrize("kwargs, needle", [
    ({"mode": "deepinversion"}, "mode='deepinversion'"),
    ({"samples_per_class": 0}, "samples_per_class"),
    ({"samples_per_class": 2.5}, "samples_per_class"),
    ({"samples_per_class": True}, "samples_per_class"),
    ({"iterations": -1}, "iterations"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"bn_weight": -1.0}, "bn_weight"),
    ({"prior_weight": float("inf")}, "prior_weight"),
    ({"class_weight": -0.5}, "class_weight"),
    ({"seed": "0"}, "seed"),
    ({"seed": 1.0}, "seed"),
])
def test_synthesis_config_rejects(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        SynthesisConfig(**kwargs)
    assert needle in str(e.value)
    assert isinstance(e.value, RetroQError)


def test_bad_mode_lists_choices():
    with pytest.raises(ConfigError) as e:
        SynthesisConfig(mode="nope")
    for choice in ("'retro'", "'zeroq'", "'gaussian'"):
        assert choice in str(e.value)


def test_zero_iterations_allowed():
    assert SynthesisConfig(iterations=0).iterations == 0


def test_synthesis_round_trip_through_json():
    c = SynthesisConfig(mode="zeroq", samples_per_class=3, iterations=11, learning_rate=0.05, bn_weight=2.0,
                        prior_weight=0.5, class_weight=0.0, seed=42)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["mode"] == "zeroq"
    assert SynthesisConfig.from_dict(d) == c
    # unknown keys (from newer versions) are ignored
    assert SynthesisConfig.from_dict({**d, "future_knob": 1}) == c


@pytest.mark.parametrize("kwargs, needle", [
    ({"scheme": "per-row"}, "scheme="),
    ({"io": "uint16"}, "io="),
    ({"weight_bits": 5}, "weight_bits=5"),
    ({"weight_bits": 16}, "choose 8, 6 or 4"),
])
def test_quantization_config_rejects(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        QuantizationConfig(**kwargs)
    assert needle in str(e.value)


def test_quantization_config_to_dict():
    q = QuantizationConfig(scheme="per-tensor", weight_bits=4, io="float")
    assert q.scheme is Scheme.PER_TENSOR and q.io is IOType.FLOAT
    assert json.loads(json.dumps(q.to_dict())) == {"scheme": "per-tensor", "weight_bits": 4, "io": "float"}
    assert QuantizationConfig(**q.to_dict()) == q


@pytest.mark.parametrize("kwargs, needle", [
    ({"mean": (0.5,)}, "both input mean and input std"),
    ({"std": (0.5,)}, "both input mean and input std"),
    ({"mean": (0.5, 0.5), "std": (0.0, 1.0)}, "must be > 0"),
    ({"mean": (0.5, 0.5), "std": (0.2, 0.2, 0.2)}, "one per channel"),
    ({"mean": ("a",), "std": (1.0,)}, "must be numbers"),
    ({"mean": (float("nan"),), "std": (1.0,)}, "finite"),
    ({"value_range": (1.0, 0.0)}, "LO < HI"),
    ({"value_range": (0.0, 1.0, 2.0)}, "LO < HI"),
])
def test_input_spec_rejects(kwargs, needle):
    with pytest.raises(InputSpecError) as e:
        InputSpec(**kwargs)
    assert needle in str(e.value)


def test_input_spec_normalizes_and_round_trips():
    s = InputSpec(mean=[0.485, 0.456, 0.406], std=0.25, value_range=[0, 1])
    assert s.mean == (0.485, 0.456, 0.406) and s.std == (0.25,) and s.value_range == (0.0, 1.0)
    assert not s.is_empty and InputSpec().is_empty
    assert InputSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert InputSpec.from_dict(None) == InputSpec()


def test_as_channels():
    assert as_channels((2.0,), 3, "x") == (2.0, 2.0, 2.0)
    assert as_channels((1.0, 2.0, 3.0), 3, "x") == (1.0, 2.0, 3.0)
    assert as_channels(None, 3, "x") is None
    with pytest.raises(InputSpecError, match="input mean has 2 values but the model input has 3 channels"):
        as_channels((1.0, 2.0), 3, "input mean")


def test_configs_are_frozen():
    with pytest.raises(Exception):
        SynthesisConfig().seed = 3  # type: ignore[misc]
