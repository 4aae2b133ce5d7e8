"""tflite.model: safe reading of flatbuffers and buffer-fresh tensor edits."""
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import TFLiteModelError
from tflite_retroq.tflite import model as tfm


@pytest.mark.parametrize("data", [
    b"", b"TFL3", b"hello world, not a model", b"\x00" * 1024,
    b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64,  # right identifier, garbage body
])
def test_read_garbage(data):
    with pytest.raises(TFLiteModelError):
        tfm.read(data)


def test_read_truncated(int8_bytes):
    for cut in (len(int8_bytes) // 2, len(int8_bytes) // 8, 12):
        with pytest.raises(TFLiteModelError):
            tfm.read(int8_bytes[:cut])


def test_read_file(tmp_path, int8_bytes):
    with pytest.raises(TFLiteModelError, match="does not exist"):
        tfm.read_file(str(tmp_path / "none.tflite"))
    p = tmp_path / "m.tflite"
    p.write_bytes(int8_bytes)
    assert len(tfm.read_file(str(p)).subgraphs) == 1


def test_read_write_round_trip_runs(int8_bytes, calib_data):
    again = tfm.write(tfm.read(int8_bytes))
    x = calib_data.images[:4]
    np.testing.assert_array_equal(rq.run_tflite(again, x), rq.run_tflite(int8_bytes, x))


def _raw(m, t):
    return np.asarray(m.buffers[t.buffer].data, np.uint8).tobytes()


def test_weight_ops_and_tensor_array(int8_bytes):
    m = tfm.read(int8_bytes)
    ops = list(tfm.weight_ops(m))
    assert [o.kind for o in ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    sg = m.subgraphs[0]
    conv = ops[0]
    w = tfm.tensor_array(m, sg, conv.weight)
    assert w.dtype == np.int8 and w.shape == (8, 3, 3, 3)
    assert w.tobytes() == _raw(m, sg.tensors[conv.weight])
    b = tfm.tensor_array(m, sg, conv.bias)
    assert b.dtype == np.int32 and b.shape == (8,)
    assert tfm.tensor_array(m, sg, conv.input) is None  # activations hold no data
    assert tfm.scales(sg.tensors[conv.weight]).size == 8
    assert tfm.quantized_dimension(sg.tensors[ops[1].weight]) == 3
    assert set(tfm.by_output_name(m)) == {o.output_name for o in ops}


def test_set_tensor_data_uses_fresh_buffer(int8_bytes):
    m = tfm.read(int8_bytes)
    sg = m.subgraphs[0]
    conv = next(iter(tfm.weight_ops(m)))
    snapshot = [(t.buffer, _raw(m, t) if t.buffer < len(m.buffers) and m.buffers[t.buffer].data is not None
                 else None) for t in sg.tensors]
    n_buffers = len(m.buffers)
    old_buffer = sg.tensors[conv.weight].buffer
    old_bytes = _raw(m, sg.tensors[conv.weight])
    new = np.arange(8 * 27, dtype=np.int64).reshape(8, 3, 3, 3) % 13 - 6
    tfm.set_tensor_data(m, sg, conv.weight, new)
    assert len(m.buffers) == n_buffers + 1
    assert sg.tensors[conv.weight].buffer == n_buffers
    assert np.asarray(m.buffers[old_buffer].data, np.uint8).tobytes() == old_bytes  # old buffer untouched
    for i, (t, (buf, raw)) in enumerate(zip(sg.tensors, snapshot)):
        if i == conv.weight:
            continue
        assert t.buffer == buf
        if raw is not None:
            assert _raw(m, t) == raw
    # survives serialization, with the declared dtype (int8) whatever the input dtype
    back = tfm.read(tfm.write(m))
    bsg = back.subgraphs[0]
    got = tfm.tensor_array(back, bsg, conv.weight)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, new)


def test_set_tensor_data_never_aliases_shared_buffer(int8_bytes):
    """Two tensors sharing one buffer: rewriting one leaves the other's data as it was."""
    m = tfm.read(int8_bytes)
    sg = m.subgraphs[0]
    ops = list(tfm.weight_ops(m))
    a, b = ops[0].bias, ops[1].bias  # both int32 [8]
    sg.tensors[b].buffer = sg.tensors[a].buffer
    shared = tfm.tensor_array(m, sg, b).copy()
    tfm.set_tensor_data(m, sg, a, np.full(8, 7, np.int32))
    np.testing.assert_array_equal(tfm.tensor_array(m, sg, b), shared)
    np.testing.assert_array_equal(tfm.tensor_array(m, sg, a), np.full(8, 7))


def test_set_tensor_data_shape_mismatch(int8_bytes):
    m = tfm.read(int8_bytes)
    sg = m.subgraphs[0]
    conv = next(iter(tfm.weight_ops(m)))
    n = len(m.buffers)
    with pytest.raises(TFLiteModelError, match="does not match"):
        tfm.set_tensor_data(m, sg, conv.weight, np.zeros((3, 3), np.int8))
    assert len(m.buffers) == n


def test_set_quantization(int8_bytes):
    m = tfm.read(int8_bytes)
    sg = m.subgraphs[0]
    t = sg.tensors[next(iter(tfm.weight_ops(m))).weight]
    tfm.set_quantization(t, np.array([0.5, 0.25]), 3)
    np.testing.assert_array_equal(tfm.scales(t), [0.5, 0.25])
    assert list(t.quantization.zeroPoint) == [0, 0] and tfm.quantized_dimension(t) == 3


def test_weight_bits_pass_leaves_no_orphan_buffers(bn_model, calib_data):
    """The W4 pass rewrites every weight into fresh buffers; the replaced ones must not stay in the file."""
    cal = rq.calibrate(bn_model, calib_data)
    w8 = tfm.read(rq.convert(bn_model, None, calibrated=cal))
    w4 = tfm.read(rq.convert(bn_model, None, weight_bits=4, calibrated=cal))
    referenced = {0} | {t.buffer for sg in w4.subgraphs for t in sg.tensors} | {md.buffer for md in w4.metadata or []}
    assert referenced == set(range(len(w4.buffers)))
    assert len(w4.buffers) == len(w8.buffers)
