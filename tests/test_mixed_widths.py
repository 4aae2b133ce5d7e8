"""Per-layer weight widths (tflite/weight_bits.py with a mapping) and mixed INT4/INT8 storage (tflite/int4.py).

The mixed file is run on LiteRT against its int8-container twin; widths are read back from the file
(codes' range through the schema object API), independently of the passes that wrote them.
"""
import numpy as np
import pytest

from tflite_retroq.errors import ConfigError, TFLiteModelError
from tflite_retroq.tflite import model as tfm


@pytest.fixture(scope="module")
def mixed(lut_model, lut_calibrated):
    """(int8 W8 file, per-layer widths, int8-container mixed file, op indices at 4 bits)."""
    import tflite_retroq as rq
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    cal, data = lut_calibrated
    w8 = rq.convert(lut_model, data, calibrated=cal)
    ops = [w.index for w in tfm.weight_ops(tfm.read(w8))]
    assert len(ops) == 4  # conv1, dw, conv2, fc
    widths = {ops[0]: 4, ops[1]: 8, ops[2]: 4, ops[3]: 6}
    return w8, widths, limit_weight_bits(w8, cal, widths), data


def _codes(data: bytes):
    m = tfm.read(data)
    return {w.index: (m.subgraphs[0].tensors[w.weight].type, tfm.tensor_array(m, m.subgraphs[0], w.weight))
            for w in tfm.weight_ops(m)}


def test_per_layer_widths_written(mixed):
    w8, widths, twin, _ = mixed
    before, after = _codes(w8), _codes(twin)
    for op, bits in widths.items():
        q = after[op][1].astype(np.int32)
        assert np.abs(q).max() == 2 ** (bits - 1) - 1, (op, bits)  # the full grid at this width, no wider
    unlisted = {k: v for k, v in widths.items() if v == 8}
    for op in unlisted:  # 8 bits re-derived from the float weights equals the converter's own tensor
        assert np.array_equal(before[op][1], after[op][1])


def test_per_layer_widths_untouched_when_absent(mixed, lut_calibrated):
    from tflite_retroq.tflite.weight_bits import limit_weight_bits
    w8, widths, _, _ = mixed
    first = min(widths)
    out = _codes(limit_weight_bits(w8, lut_calibrated[0], {first: 4}))
    ref = _codes(w8)
    assert np.abs(out[first][1].astype(int)).max() == 7
    for op in ref:
        if op != first:
            assert np.array_equal(ref[op][1], out[op][1])
    with pytest.raises(TFLiteModelError, match="not weight ops"):
        limit_weight_bits(w8, lut_calibrated[0], {999: 4})
    with pytest.raises(TFLiteModelError, match="not supported"):
        limit_weight_bits(w8, lut_calibrated[0], {first: 9})


def test_mixed_int4_int8_runs_identical_to_twin(mixed):
    from tflite_retroq.evaluate import run_tflite
    from tflite_retroq.tflite.int4 import to_int4
    _, widths, twin, data = mixed
    four = {op for op, b in widths.items() if b == 4}
    out = to_int4(twin, four)
    types = {op: t for op, (t, _) in _codes(out).items()}
    assert {op for op, t in types.items() if t == tfm.INT4} == four
    assert all(t == 9 for op, t in types.items() if op not in four)  # the others stay int8
    a, b = _codes(twin), _codes(out)
    for op in a:  # same integers, only the container differs
        assert np.array_equal(a[op][1], b[op][1])
    for resolver in ("builtin", "reference"):
        assert np.array_equal(run_tflite(twin, data.images, resolver=resolver),
                              run_tflite(out, data.images, resolver=resolver)), resolver
    m = tfm.read(twin)
    halved = sum(int(np.prod(m.subgraphs[0].tensors[w.weight].shape)) // 2 for w in tfm.weight_ops(m) if w.index in four)
    assert abs((len(twin) - len(out)) - halved) <= 16 * len(four)  # half a byte saved per 4-bit weight, padding aside
    # a 6-bit layer is not 4-bit: asking for it is refused, not clipped
    six = next(op for op, b in widths.items() if b == 6)
    with pytest.raises(TFLiteModelError, match="outside"):
        to_int4(twin, four | {six})


def _with_codes(data: bytes, op: int, codes_of) -> bytes:
    """`data` with op `op`'s int8 weight codes replaced by codes_of(shape) (schema object API)."""
    m = tfm.read(data)
    w = next(w for w in tfm.weight_ops(m) if w.index == op)
    t = m.subgraphs[0].tensors[w.weight]
    tfm.set_tensor_data(m, m.subgraphs[0], w.weight, codes_of(tuple(t.shape)).astype(np.int8))
    return tfm.write(m)


@pytest.mark.parametrize("low,high,ok", [(0, 12, False), (1, 8, False), (-9, -1, False), (-8, 7, True), (0, 7, True)])
def test_int4_refuses_codes_outside_4_bits(mixed, low, high, ok):
    """All-positive 8-bit codes (0..12), 8 alone, -9 alone are not 4-bit codes; -8..7 are."""
    from tflite_retroq.tflite.int4 import to_int4
    _, widths, twin, _ = mixed
    op = min(op for op, b in widths.items() if b == 4)
    rng = np.random.default_rng(0)

    def codes(shape):
        c = rng.integers(low, high + 1, shape)
        c.reshape(-1)[:2] = [low, high]
        return c

    bad = _with_codes(twin, op, codes)
    if ok:
        out = _codes(to_int4(bad, {op}))
        assert out[op][0] == tfm.INT4 and out[op][1].min() == low and out[op][1].max() == high
    else:
        with pytest.raises(TFLiteModelError, match=r"outside \[-8, 7\]"):
            to_int4(bad, {op})
        with pytest.raises(TFLiteModelError, match=r"outside \[-8, 7\]"):
            to_int4(bad)


def test_int4_with_lut_pack_refused(lut_model, lut_calibrated):
    import tflite_retroq as rq
    cal, data = lut_calibrated
    with pytest.raises(ConfigError, match="choose one"):
        rq.convert(lut_model, data, weight_bits=4, calibrated=cal, weight_dtype="int4", pack="lut")


def test_cli_int4_with_lut_pack_exit_2(tmp_path):
    import subprocess
    from conftest import retroq_command
    (tmp_path / "m.keras").write_bytes(b"")  # refused before the model is opened
    out = tmp_path / "x.tflite"
    proc = subprocess.run(retroq_command() + ["convert", str(tmp_path / "m.keras"), "-o", str(out), "--weight-bits", "4",
                                              "--weight-dtype", "int4", "--pack", "lut"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "lut" in lines[0] and "int4" in lines[0], proc.stderr
    assert not out.exists()
