"""methods/simulate.py against the LiteRT interpreter: every op, fed the interpreter's own inputs, gives the
interpreter's output to within one quantization step of that output (fixed-point vs float requantization)."""
import numpy as np
import pytest

from tflite_retroq.tflite import model as tfm


@pytest.fixture(scope="module")
def residual_int8():
    """Conv -> ReLU -> Conv + skip (ADD) -> MaxPool -> AvgPool -> Flatten -> Dense -> softmax, int8, and images."""
    import keras
    import tflite_retroq as rq
    keras.utils.set_random_seed(21)
    inp = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    b = keras.layers.Conv2D(6, 3, padding="same")(a)
    x = keras.layers.Add()([a, b])
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="valid", activation="relu6")(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(5)
    images = rng.standard_normal((24, 12, 12, 3)).astype(np.float32)
    return rq.convert(model, rq.SyntheticDataset.from_images(images)), images


@pytest.mark.parametrize("which", ["bn", "residual"])
def test_each_op_within_one_step_of_the_interpreter(which, residual_int8, int8_bytes, calib_data):
    from tflite_retroq.methods.rounding import capture
    from tflite_retroq.methods.simulate import Int8Graph, supported
    data, images = (int8_bytes, calib_data.images[:16]) if which == "bn" else residual_int8
    m = tfm.read(data)
    assert supported(m)
    sg = m.subgraphs[0]
    produced = [int(op.outputs[0]) for op in sg.operators]
    ref = capture(data, images, produced + [int(sg.inputs[0])])
    kinds, equal = set(), []
    for i, op in enumerate(sg.operators):
        g = Int8Graph(m, images)
        g.values.update({t: v for t, v in ref.items() if t != int(op.outputs[0])})
        got = np.asarray(g.value(int(op.outputs[0])))
        t = sg.tensors[int(op.outputs[0])]
        step = float(tfm.scales(t)[0]) if t.type == 9 else 1e-6
        want = ref[int(op.outputs[0])]
        assert got.shape == want.shape, tfm.op_name(m, op)
        assert np.max(np.abs(got - want)) <= step * 1.001, (tfm.op_name(m, op), np.max(np.abs(got - want)) / step)
        kinds.add(tfm.op_name(m, op))
        equal.append(np.mean(np.abs(got - want) < step / 2))
    assert np.mean(equal) > 0.95   # off by one step is the exception, not the rule
    if which == "residual":
        assert {"ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D", "SOFTMAX"} <= kinds


def test_invalidate_recomputes_downstream_only(int8_bytes, calib_data):
    """After a weight change, values from before the op are kept; the op's output follows the new weights."""
    from tflite_retroq.methods.simulate import Int8Graph
    m = tfm.read(int8_bytes)
    sg = m.subgraphs[0]
    wops = list(tfm.weight_ops(m))
    g = Int8Graph(m, calib_data.images[:8])
    last = int(sg.outputs[0])
    before = np.asarray(g.value(last))
    first_in = g.values[wops[-1].input]
    codes = tfm.tensor_array(m, sg, wops[-1].weight)
    tfm.set_tensor_data(m, sg, wops[-1].weight, np.zeros_like(codes))
    g.invalidate(wops[-1].index)
    assert g.values[wops[-1].input] is first_in
    after = np.asarray(g.value(last))
    assert not np.array_equal(before, after)


def test_blocks_cut_at_single_tensors(residual_int8):
    """The residual fixture: the skip forks at the first conv's output, so the second conv and the ADD form
    one block (two tensors alive inside it); every op lies in exactly one block, each block reads the last."""
    from tflite_retroq.methods.blocks import cut_blocks
    data, _ = residual_int8
    m = tfm.read(data)
    sg = m.subgraphs[0]
    blocks = cut_blocks(m)
    assert [i for b in blocks for i in range(b.first_op, b.last_op + 1)] == list(range(len(sg.operators)))
    kinds = [[tfm.op_name(m, sg.operators[i]) for i in range(b.first_op, b.last_op + 1)] for b in blocks]
    assert ["CONV_2D", "ADD"] in kinds
    assert all(len(k) == 1 for k in kinds if k != ["CONV_2D", "ADD"])
    for b, prev in zip(blocks[1:], blocks):
        assert b.input == prev.output


def test_depthwise_pointwise_paired():
    """pair_depthwise joins a DEPTHWISE_CONV_2D block with the 1x1 CONV_2D block after it, and nothing else."""
    import keras
    import tflite_retroq as rq
    from tflite_retroq.methods.blocks import cut_blocks, pair_depthwise
    keras.utils.set_random_seed(41)
    inp = keras.Input((8, 8, 4))
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 1, activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    images = np.random.default_rng(2).standard_normal((16, 8, 8, 4)).astype(np.float32)
    m = tfm.read(rq.convert(keras.Model(inp, out), rq.SyntheticDataset.from_images(images)))
    sg = m.subgraphs[0]
    kinds = [[tfm.op_name(m, sg.operators[i]) for i in range(b.first_op, b.last_op + 1)]
             for b in pair_depthwise(m, cut_blocks(m))]
    assert ["DEPTHWISE_CONV_2D", "CONV_2D"] in kinds
    assert sum(k.count("CONV_2D") for k in kinds) == 2 and ["CONV_2D"] in kinds   # the 3x3 conv stays alone
