"""The package layout of tflite_retroq/README.md holds: no import runs up a floor, no module over 400 lines."""
import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "tflite_retroq"

# The floors of tflite_retroq/README.md; a module may import only from lower floors (or its own subpackage).
FLOORS = {
    "errors": 1, "config": 2, "io_utils": 2, "resources": 2, "quant": 2,
    "model": 3, "tflite": 3, "dataset": 3,
    "synthesis": 4, "evaluate": 4, "static_shape": 4, "methods": 4,
    "converter": 5, "targets": 5, "reports": 5, "quality": 5,
    "__init__": 6, "cli": 7, "demo": 7,
}


def _room(module: str) -> str:
    """'tflite_retroq.model.loading' -> 'model'; the package itself -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tflite_retroq"):
            if node.module == "tflite_retroq":
                for alias in node.names:
                    yield f"tflite_retroq.{alias.name}" if alias.name in FLOORS else "tflite_retroq"
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tflite_retroq."):
                    yield alias.name


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        yield path, ".".join(rel.parts)


def test_every_room_has_a_floor():
    rooms = {_room(name) for _, name in _modules()}
    assert rooms <= set(FLOORS), f"modules without a floor in tflite_retroq/README.md: {rooms - set(FLOORS)}"


def test_no_import_runs_up_or_sideways():
    bad = []
    for path, name in _modules():
        room = _room(name)
        for target in _imports(path):
            other = _room(target)
            if other == room:
                continue
            if FLOORS[other] >= FLOORS[room]:
                bad.append(f"{name} (floor {FLOORS[room]}) imports {target} (floor {FLOORS[other]})")
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines():
    long = {name: n for path, name in _modules() if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_layout_check_catches_an_upward_import(tmp_path):
    """The check itself bites: an import of the converter from model/ is reported."""
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from tflite_retroq.converter import convert\n")
    targets = list(_imports(fake))
    assert targets == ["tflite_retroq.converter"] and FLOORS[_room(targets[0])] > FLOORS["model"]


PUBLIC_API = {
    "synthesize", "convert", "RetroQConverter", "calibrate", "quantize_calibrated", "float_tflite", "representative_dataset",
    "evaluate", "run_tflite", "EvalResult", "fold_batchnorm", "load_model", "SyntheticDataset",
    "SynthesisConfig", "SynthesisMode", "QuantizationConfig", "Scheme", "IOType", "InputSpec",
    "analyze_sensitivity", "select_layers", "SensitivityResult", "LayerSensitivity", "HybridPlan", "HybridConfig",
    "RetroQError", "ModelError", "InputSpecError", "DataError", "TFLiteModelError", "OutputError", "ConfigError",
    "OutOfMemoryError", "QuantizationError", "TargetError", "vela_estimate", "VelaEstimate", "tflm_run",
    "TFLMResult", "litert_latency", "LiteRTLatency", "estimate_quality", "holdout_images", "QualityEstimate",
    "RoundingConfig",
}


def test_public_api_is_exactly_the_listed_names():
    """The narrow API of tflite_retroq/__init__.py: adding or dropping a name is a deliberate act, made here too."""
    import tflite_retroq as rq
    assert set(rq.__all__) == PUBLIC_API
    assert all(hasattr(rq, name) for name in rq.__all__)


def test_every_internal_import_names_something_that_exists():
    """Lazy imports inside functions run only on their path: check them all statically, so a moved name
    fails here instead of in the one CLI path that imports it."""
    import importlib
    missing = []
    for path, name in _modules():
        if name.endswith("__main__") or name == "tflite_retroq.demo":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tflite_retroq"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{name}: from {node.module} import {alias.name}")
    assert not missing, "\n".join(missing)
