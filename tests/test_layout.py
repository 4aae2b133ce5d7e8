"""The package layout of tflite_retroq/README.md holds: no import runs up a floor, no module over 400 lines."""
import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "tflite_retroq"

# The floors of tflite_retroq/README.md; a module may import only from lower floors (or its own subpackage).
FLOORS = {
    "errors": 1, "config": 2, "io_utils": 2, "resources": 2, "quant": 2,
    "model": 3, "tflite": 3, "dataset": 3,
    "synthesis": 4, "evaluate": 4, "static_shape": 4, "methods": 4,
    "converter": 5, "targets": 5, "reports": 5,
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
