"""The residual fusion (qrt/fusion/residual.py, qrt::DequantizeAdd): DequantizeLinear of one or both
operands -> Add / two-input Sum [-> Relu] [-> QuantizeLinear] as one pass.

The fused kernel performs the separate kernels' float32 operations in their order, so the fused
session (ORT_ENABLE_ALL) must equal the unfused one (ORT_ENABLE_EXTENDED: the nodes one by one) bit
for bit, float outputs included (signed zeros and NaN through Relu too). Against onnxruntime on the
original model: its DequantizeLinear, Add and Relu are the same IEEE float32 operations, so the float
outputs are exact, except that its Relu passes NaN through where qrt's gives 0 (qrt's Relu kernel, not
this fusion: the NaN is left out of that comparison); its QuantizeLinear may round a tie the other way
(one step, on few elements).
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from int8_helpers import run_ort, stable_seed

ALL = qrt.GraphOptimizationLevel.ORT_ENABLE_ALL
EXTENDED = qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
SHAPE = [2, 8, 5, 7]


def _session(model, level, threads=None):
    so = qrt.SessionOptions()
    so.graph_optimization_level = level
    if threads:
        so.intra_op_num_threads = threads
    return qrt.InferenceSession(model.SerializeToString(), so)


def _model(op="Sum", both_dequantized=True, relu=True, quantize=True, float_read=True, dtype=np.uint8,
           shape=SHAPE, b_shape=None):
    """a (8-bit) -> DQ, b (8-bit -> DQ, or float) -> op -> [Relu] -> [Q]; the float result is a graph
    output when ``float_read``."""
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    zero = 3 if dtype == np.int8 else 131
    inits = [numpy_helper.from_array(np.array(v, t), n) for n, v, t in
             (("as", 0.043, np.float32), ("az", zero, dtype), ("bs", 0.071, np.float32), ("bz", zero - 7, dtype),
              ("ys", 0.09, np.float32), ("yz", zero + 2, dtype))]
    b_shape = b_shape or shape
    nodes = [helper.make_node("DequantizeLinear", ["a", "as", "az"], ["af"], name="dq_a")]
    inputs = [helper.make_tensor_value_info("a", elem, shape)]
    if both_dequantized:
        nodes.append(helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], name="dq_b"))
        inputs.append(helper.make_tensor_value_info("b", elem, b_shape))
    else:
        inputs.append(helper.make_tensor_value_info("bf", TensorProto.FLOAT, b_shape))
    nodes.append(helper.make_node(op, ["af", "bf"], ["s"], name="add"))
    out = "s"
    if relu:
        nodes.append(helper.make_node("Relu", ["s"], ["r"], name="relu"))
        out = "r"
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)] if float_read else []
    if quantize:
        nodes.append(helper.make_node("QuantizeLinear", [out, "ys", "yz"], ["q"], name="q"))
        outputs.append(helper.make_tensor_value_info("q", elem, None))
    graph = helper.make_graph(nodes, "residual", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _feeds(model, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == TensorProto.FLOAT:
            x = (rng.standard_normal(shape) * 4).astype(np.float32)
            flat = x.reshape(-1)
            flat[:4] = [-0.0, 0.0, np.nan, -np.inf]      # signed zero and NaN through the sum and Relu
            feeds[i.name] = x
        else:
            dtype = np.int8 if i.type.tensor_type.elem_type == TensorProto.INT8 else np.uint8
            info = np.iinfo(dtype)
            feeds[i.name] = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    return feeds


def _assert_same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8 if got.dtype.itemsize == 1 else np.uint32),
                                  want.view(np.uint8 if want.dtype.itemsize == 1 else np.uint32))


CASES = {
    "sum_relu_quantize": {},
    "add": dict(op="Add"),
    "one_dequantized": dict(both_dequantized=False),
    "no_relu": dict(relu=False),
    "float_only": dict(quantize=False),
    "quantized_only": dict(float_read=False),
    "int8": dict(dtype=np.int8),
    "broadcast": dict(both_dequantized=False, b_shape=[1, 8, 1, 1]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_equals_the_nodes_bit_for_bit(name):
    model = _model(**CASES[name])
    feeds = _feeds(model, stable_seed(name))
    fused = _session(model, ALL)
    kinds = [n.op_type for n in fused.model.graph.node]
    assert kinds == ["DequantizeAdd"], kinds
    names = fused.model.graph.node[0].name.split("+")
    assert names[-1] == ("q" if CASES[name].get("quantize", True) else "relu" if CASES[name].get("relu", True)
                         else "add")
    got = fused.run(None, feeds)
    want = _session(model, EXTENDED).run(None, feeds)
    for g, w in zip(got, want):
        _assert_same_bits(g, w)
    finite = {k: np.where(np.isnan(v), np.float32(1), v) if v.dtype == np.float32 else v for k, v in feeds.items()}
    got = fused.run(None, finite)
    for g, r in zip(got, run_ort(model, finite)):
        if g.dtype == np.float32:
            _assert_same_bits(g, r)
        else:
            off = np.abs(g.astype(int) - r.astype(int))
            assert off.max() <= 1 and np.mean(off != 0) <= 0.01


def test_dequantize_read_elsewhere_stays():
    model = _model()
    model.graph.output.append(helper.make_tensor_value_info("bf", TensorProto.FLOAT, None))
    fused = _session(model, ALL)
    assert [n.op_type for n in fused.model.graph.node] == ["DequantizeLinear", "DequantizeAdd"]
    assert fused.model.graph.node[0].name == "dq_b"
    feeds = _feeds(model, 1)
    for g, w in zip(fused.run(None, feeds), _session(model, EXTENDED).run(None, feeds)):
        _assert_same_bits(g, w)


def test_large_tensor_on_two_threads_equals_the_nodes():
    """Past PARALLEL_MIN_ELEMENTS the fused kernel runs in chunks on the thread pool: same bits."""
    model = _model(shape=[1, 64, 80, 80])
    feeds = _feeds(model, 2)
    got = _session(model, ALL, threads=2).run(None, feeds)
    for g, w in zip(got, _session(model, EXTENDED).run(None, feeds)):
        _assert_same_bits(g, w)


def test_channels_last_residual_chain_has_no_transposes():
    """Between convolutions the fused node runs on channels-last operands (qrt/fusion/channels_last.py)."""
    from test_channels_last_flow import residual_model
    model = residual_model()
    sess = _session(model, ALL)
    nodes = sess.model.graph.node
    fused = [n for n in nodes if n.op_type == "DequantizeAdd"]
    assert len(fused) == 1 and all(i.endswith("_nhwc") for i in (fused[0].input[0], fused[0].input[3]))
    assert sorted(n.output[0] for n in nodes if n.op_type == "Transpose") == ["c3", "relu", "xq_nhwc"]
