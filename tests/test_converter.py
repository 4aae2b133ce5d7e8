"""convert(): int8 flatbuffers checked tensor by tensor against an independent numpy computation,
and end to end on the LiteRT interpreter."""
import numpy as np
import pytest

import tflite_retroq as rq
from tflite_retroq import ConfigError, DataError
from tflite_retroq.tflite.weight_bits import limit_weight_bits

from conftest import C, H, NUM_CLASSES, W

INT8, INT32, FLOAT32 = 9, 2, 0  # TFLite TensorType codes
_NP = {INT8: np.int8, INT32: np.int32, FLOAT32: np.float32}


# ----------------------------------------------------------------------------- flatbuffer reading (test-local)

def _fu():
    from ai_edge_litert.tools import flatbuffer_utils
    return flatbuffer_utils


def _read(b):
    return _fu().convert_bytearray_to_object(bytearray(b))


def _array(m, t):
    raw = np.asarray(m.buffers[t.buffer].data, np.uint8).tobytes()
    return np.frombuffer(raw, _NP[t.type]).reshape([int(d) for d in t.shape])


def _scales(t):
    q = t.quantization
    return None if q is None or q.scale is None else np.asarray(q.scale, np.float32)


def _weight_ops(b):
    """[(kind, input tensor, weight tensor, bias tensor)] in graph order, plus the ModelT."""
    m = _read(b)
    sg = m.subgraphs[0]
    out = []
    for op in sg.operators:
        kind = _fu().opcode_to_name(m, op.opcodeIndex)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            out.append((kind, sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]], sg.tensors[op.inputs[2]]))
    return m, out


def _io_types(b):
    m = _read(b)
    sg = m.subgraphs[0]
    return sg.tensors[sg.inputs[0]].type, sg.tensors[sg.outputs[0]].type


# ----------------------------------------------------------------------------- independent numpy reference

def _bn_scale(bn):
    g, beta, mu, var = (np.asarray(v.numpy(), np.float64) for v in (bn.gamma, bn.beta, bn.moving_mean,
                                                                    bn.moving_variance))
    return g / np.sqrt(var + bn.epsilon), beta, mu


def folded_float_weights(model):
    """BN-folded float weights of the BN model in TFLite layouts, computed in numpy.

    The Rescaling(1/255) front is a pure scale, which the converter folds into the first conv too.
    """
    s1, beta1, mu1 = _bn_scale(model.get_layer("bn1"))
    s2, beta2, mu2 = _bn_scale(model.get_layer("bn2"))
    k, b = (np.asarray(a, np.float64) for a in model.get_layer("conv").get_weights())
    rescale = float(model.get_layer("rescale").scale)
    conv_w = np.transpose(k * rescale * s1, (3, 0, 1, 2))  # keras [kh,kw,in,out] -> tflite [out,kh,kw,in]
    conv_b = (b - mu1) * s1 + beta1
    k2, b2 = (np.asarray(a, np.float64) for a in model.get_layer("dw").get_weights())
    dw_w = (k2[:, :, :, 0] * s2)[None]  # keras [kh,kw,C,1] -> tflite [1,kh,kw,C]
    dw_b = (b2 - mu2) * s2 + beta2
    k3, b3 = (np.asarray(a, np.float64) for a in model.get_layer("fc").get_weights())
    return [("CONV_2D", conv_w.astype(np.float32), conv_b.astype(np.float32)),
            ("DEPTHWISE_CONV_2D", dw_w.astype(np.float32), dw_b.astype(np.float32)),
            ("FULLY_CONNECTED", k3.T.astype(np.float32), b3.astype(np.float32))]


def _half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def np_quantize(w, bits, axis):
    """Symmetric: scale = max|w| / (2^(b-1)-1) per `axis` (None: per tensor), round half away from
    zero (as the TFLite converter does; see test_guards.py for the ties), clip."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, np.float32)
    if axis is None:
        maxabs = np.max(np.abs(w)).reshape(1)
        bshape = [1] * w.ndim
    else:
        maxabs = np.max(np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1), axis=1)
        bshape = [1] * w.ndim
        bshape[axis] = -1
    scale = (maxabs / np.float32(qmax)).astype(np.float32)
    q = np.clip(_half_away(w.astype(np.float64) / scale.reshape(bshape).astype(np.float64)), -qmax, qmax)
    return q.astype(np.int8), scale


PC_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def calib(calib_data):
    """Calibrate on half of the synthetic images; the other half is held out."""
    return rq.SyntheticDataset(images=calib_data.images[::2], labels=calib_data.labels[::2],
                               metadata=calib_data.metadata)


@pytest.fixture(scope="module")
def heldout(calib_data):
    return calib_data.images[1::2]


@pytest.fixture(scope="module")
def calibrated(bn_model, calib):
    return rq.calibrate(bn_model, calib)


@pytest.fixture(scope="module")
def variants(bn_model, calib, calibrated):
    out = {}
    for scheme in ("per-channel", "per-tensor"):
        for bits in (8, 6, 4):
            out[scheme, bits] = rq.convert(bn_model, calib, scheme=scheme, weight_bits=bits, calibrated=calibrated)
    out["float-io"] = rq.convert(bn_model, calib, io="float", calibrated=calibrated)
    return out


# ----------------------------------------------------------------------------- structure

@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
@pytest.mark.parametrize("bits", [8, 6, 4])
def test_weight_scales_layout(variants, scheme, bits):
    m, ops = _weight_ops(variants[scheme, bits])
    assert [k for k, *_ in ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    for kind, _inp, w, b in ops:
        assert w.type == INT8 and b.type == INT32
        s = _scales(w)
        zp = np.asarray(w.quantization.zeroPoint)
        assert np.all(zp == 0) and np.all(s > 0)
        if scheme == "per-tensor":
            assert s.size == 1
        else:
            dim = PC_AXIS[kind]
            assert w.quantization.quantizedDimension == dim
            assert s.size == int(w.shape[dim]) > 1
        assert _scales(b).size == s.size


def test_io_types(variants, heldout):
    assert _io_types(variants["per-channel", 8]) == (INT8, INT8)
    assert _io_types(variants["per-tensor", 4]) == (INT8, INT8)
    assert _io_types(variants["float-io"]) == (FLOAT32, FLOAT32)
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=variants["float-io"])
    assert it.get_input_details()[0]["dtype"] == np.float32
    assert it.get_output_details()[0]["dtype"] == np.float32
    # same arithmetic inside: int8 and float I/O differ only by the (de)quantization at the edges
    y_int8 = rq.run_tflite(variants["per-channel", 8], heldout)
    y_float = rq.run_tflite(variants["float-io"], heldout)
    sg = _read(variants["per-channel", 8]).subgraphs[0]
    out_scale = _scales(sg.tensors[sg.outputs[0]])[0]
    assert np.max(np.abs(y_int8 - y_float)) <= 2 * out_scale + 1e-6


def test_low_bits_with_float_io(bn_model, calib, calibrated, heldout):
    b = rq.convert(bn_model, calib, weight_bits=4, io="float", calibrated=calibrated)
    assert _io_types(b) == (FLOAT32, FLOAT32)
    m, ops = _weight_ops(b)
    assert len(ops) == 3
    for (kind, _inp, w, _b), (_k, wf, _bf) in zip(ops, folded_float_weights(bn_model)):
        np.testing.assert_array_equal(_array(m, w), np_quantize(wf, 4, PC_AXIS[kind])[0])
    assert rq.run_tflite(b, heldout).shape == (len(heldout), NUM_CLASSES)


def test_per_channel_weights_are_int8_converter_output(bn_model, variants, calibrated):
    """The default per-channel int8 weights equal max|w|/127 quantization of numpy-folded weights."""
    _, ops = _weight_ops(variants["per-channel", 8])
    m = _read(variants["per-channel", 8])
    for (kind, inp, w, b), (kind_np, wf, bf) in zip(ops, folded_float_weights(bn_model)):
        assert kind == kind_np
        q, s = np_quantize(wf, 8, PC_AXIS[kind])
        np.testing.assert_array_equal(_array(m, w), q)
        np.testing.assert_allclose(_scales(w), s, rtol=1e-6)


@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
@pytest.mark.parametrize("bits", [6, 4])
def test_low_bit_weights_bit_exact_against_numpy(bn_model, variants, scheme, bits):
    b_ = variants[scheme, bits]
    m, ops = _weight_ops(b_)
    qmax = 2 ** (bits - 1) - 1
    for (kind, inp, w, b), (kind_np, wf, bf) in zip(ops, folded_float_weights(bn_model)):
        assert kind == kind_np
        axis = PC_AXIS[kind] if scheme == "per-channel" else None
        q_expect, s_expect = np_quantize(wf, bits, axis)
        q = _array(m, w)
        assert q.shape == q_expect.shape
        np.testing.assert_array_equal(q, q_expect, err_msg=f"{kind} weights")
        np.testing.assert_allclose(_scales(w), s_expect, rtol=1e-6)
        assert np.abs(q.astype(int)).max() <= qmax
        # max|w| lands exactly on the largest level (per channel, or per tensor)
        mags = np.abs(np.moveaxis(q.astype(int), PC_AXIS[kind], 0)).reshape(q.shape[PC_AXIS[kind]], -1).max(1)
        assert (np.all(mags == qmax) if axis is not None else mags.max() == qmax)
        # bias: int32 round(b / (input_scale * weight_scale)), input scale from the .tflite
        in_scale = _scales(inp)[0]
        bias_scale = (np.float32(in_scale) * _scales(w)).astype(np.float32)
        np.testing.assert_allclose(_scales(b), np.broadcast_to(bias_scale, _scales(b).shape), rtol=1e-7)
        b_expect = _half_away(bf.astype(np.float64) / bias_scale.astype(np.float64)).astype(np.int32)
        np.testing.assert_array_equal(_array(m, b), b_expect, err_msg=f"{kind} bias")


def test_limit_weight_bits_8_reproduces_converter(variants, calibrated):
    for scheme in ("per-channel", "per-tensor"):
        q8 = variants[scheme, 8]
        redo = limit_weight_bits(q8, calibrated, 8)
        m1, ops1 = _weight_ops(q8)
        m2, ops2 = _weight_ops(redo)
        assert len(m2.buffers) == len(m1.buffers)  # fresh buffers replaced the old ones, no orphans left...
        for (k1, i1, w1, b1), (k2, i2, w2, b2) in zip(ops1, ops2):
            assert k1 == k2
            np.testing.assert_array_equal(_array(m2, w2), _array(m1, w1))  # ...with identical contents
            np.testing.assert_array_equal(_array(m2, b2), _array(m1, b1))
            np.testing.assert_array_equal(_scales(w2), _scales(w1))
            np.testing.assert_array_equal(_scales(b2), _scales(b1))
            assert w2.quantization.quantizedDimension == w1.quantization.quantizedDimension


def test_fewer_bits_lower_fidelity(bn_model, variants, heldout):
    ref = np.asarray(bn_model(heldout), np.float64)

    def sqnr(y):
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2))

    s8 = sqnr(rq.run_tflite(variants["per-channel", 8], heldout))
    s4 = sqnr(rq.run_tflite(variants["per-channel", 4], heldout))
    assert s8 > s4


# ----------------------------------------------------------------------------- end to end

def test_int8_close_to_keras_float(bn_model, variants, heldout):
    ref = np.asarray(bn_model(heldout), np.float64)
    for key in (("per-channel", 8), ("per-tensor", 8), "float-io"):
        y = rq.run_tflite(variants[key], heldout).astype(np.float64)
        assert y.shape == (len(heldout), NUM_CLASSES)
        sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2))
        agree = np.mean(np.argmax(y, 1) == np.argmax(ref, 1))
        assert sqnr > 15.0, (key, sqnr)
        assert agree >= 0.85, (key, agree)


def test_user_converter_with_representative_dataset_hook(bn_model, calib, heldout):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    conv = tf.lite.TFLiteConverter.from_keras_model(bn_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rq.representative_dataset(calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    model_bytes = conv.convert()

    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    s_in, zp_in = inp["quantization"]
    s_out, zp_out = out["quantization"]
    ref = np.asarray(bn_model(heldout), np.float64)
    ys = []
    for x in heldout:  # quantize by hand, batch 1 as allocated
        xq = np.clip(np.rint(x / s_in) + zp_in, -128, 127).astype(np.int8)[None]
        it.set_tensor(inp["index"], xq)
        it.invoke()
        ys.append((it.get_tensor(out["index"]).astype(np.float64) - zp_out) * s_out)
    y = np.concatenate(ys)
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2)) > 15.0
    # every weight tensor of the user's model is int8
    _, ops = _weight_ops(model_bytes)
    assert len(ops) == 3 and all(w.type == INT8 for _, _, w, _ in ops)


def test_convert_accepts_array_and_generator(bn_model, calib, calibrated):
    ref = rq.quantize_calibrated(calibrated, "per-channel")
    # Arrays and generators are the user's own data and retro data calibrates plainly: no logits pass on either.
    from_array = rq.convert(bn_model, calib.images)
    gen = calib.representative_dataset()
    from_gen = rq.convert(bn_model, gen)
    x = calib.images[:4]
    np.testing.assert_array_equal(rq.run_tflite(from_array, x), rq.run_tflite(ref, x))
    np.testing.assert_array_equal(rq.run_tflite(from_gen, x), rq.run_tflite(ref, x))


def test_convert_rejects_bad_data(bn_model):
    with pytest.raises(DataError, match="synthesize data for this model"):
        rq.convert(bn_model, np.zeros((2, H + 1, W, C), np.float32))
    with pytest.raises(DataError, match="must be a SyntheticDataset"):
        rq.convert(bn_model, "images.npz")


def test_convert_rejects_bad_options(bn_model, calibrated):
    with pytest.raises(ConfigError):
        rq.convert(bn_model, None, weight_bits=5, calibrated=calibrated)
    with pytest.raises(ConfigError):
        rq.convert(bn_model, None, scheme="per-layer", calibrated=calibrated)
