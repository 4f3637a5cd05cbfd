"""The channels-last int8 pipeline: the layout pass (qrt/fusion/channels_last.py), com.microsoft
QLinearConv with ``channels_last=1`` and NhwcMaxPool.

The pass only moves bytes, so a model run through it must give exactly what the NCHW path gives
(same integer arithmetic); the rewritten graph uses onnxruntime's own op set, so onnxruntime must
run it too and agree with itself on the original graph within one output step (its requantization
rounds in float32, qrt's in float64, so a tie may land one step apart).
"""
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from int8_helpers import assert_within_one_step, random_q, run_ort, run_qrt, stable_seed
from qrt.fusion import to_channels_last
from quantized_models import eval_input, ort_quantized, output_step, qrt_quantized

MS = "com.microsoft"


def _ops(model):
    return [(n.op_type, n.domain) for n in model.graph.node]


@pytest.mark.parametrize("name", ["cnn", "zoo"])
@pytest.mark.parametrize("activation", ["QUInt8", "QInt8"])
@pytest.mark.parametrize("quantizer", ["qrt", "ort"])
def test_pass_keeps_results_exact(name, activation, quantizer):
    make = qrt_quantized if quantizer == "qrt" else ort_quantized
    model = make(name, "QOperator", activation, per_channel=True)
    x = {"input": eval_input(name)}
    so = qrt.SessionOptions()
    sess = qrt.InferenceSession(model.SerializeToString(), so)
    assert ("QLinearConv", MS) in _ops(sess.model), "the pass did not run at the default level"
    nchw = run_qrt(model, x, graph_optimization_level=qrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    for got, want in zip(sess.run(None, x), nchw):
        np.testing.assert_array_equal(got, want)
    # onnxruntime runs the rewritten graph (its NHWC ops) as it runs the original one.
    rewritten = to_channels_last(model)
    step = output_step(model)
    for got, want in zip(run_ort(rewritten, x), run_ort(model, x)):
        assert np.abs(got - want).max() <= step * 1.001


def test_pass_converts_chain_and_reorders_only_at_its_edges():
    model = qrt_quantized("cnn", "QOperator", "QUInt8", per_channel=True)
    rewritten = to_channels_last(model)
    ops = _ops(rewritten)
    assert ("QLinearConv", "") not in ops
    assert ("NhwcMaxPool", MS) in ops
    convs = sum(op == ("QLinearConv", MS) for op in ops)
    assert convs == sum(op[0] == "QLinearConv" for op in _ops(model))
    # classic_cnn is conv -> pool -> conv -> pool -> flatten: one reorder in, one out.
    assert sum(op[0] == "Transpose" for op in ops) == 2
    names = {n.name for n in rewritten.graph.node}
    assert {n.name for n in model.graph.node} <= names


def test_profile_names_every_original_node(tmp_path):
    model = qrt_quantized("zoo", "QOperator", "QUInt8", per_channel=True)
    so = qrt.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = qrt.InferenceSession(model.SerializeToString(), so)
    sess.run(None, {"input": eval_input("zoo")})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    profiled = {e["name"] for e in events if e.get("cat") == "Node"}
    assert {n.name for n in model.graph.node} <= profiled


def _conv_model(x_shape, w, group, pads, strides, channels_last, x_dtype, bias=True):
    rng = np.random.default_rng(stable_seed("conv", *w.shape))
    M = w.shape[0]
    zx = np.array(5 if x_dtype == np.int8 else 131, x_dtype)
    inits = [numpy_helper.from_array(np.array(0.03, np.float32), "xs"), numpy_helper.from_array(zx, "xz"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array((rng.random(M) * 0.01 + 0.002).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(M, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.4, np.float32), "ys"),
             numpy_helper.from_array(np.array(7 if x_dtype == np.int8 else 120, x_dtype), "yz")]
    inputs = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias:
        inits.append(numpy_helper.from_array(rng.integers(-3000, 3000, M).astype(np.int32), "b"))
        inputs.append("b")
    attrs = dict(kernel_shape=list(w.shape[2:]), pads=pads, strides=strides, group=group)
    if channels_last:
        attrs["channels_last"] = 1
    node = helper.make_node("QLinearConv", inputs, ["y"], domain=MS if channels_last else "", **attrs)
    elem = TensorProto.INT8 if x_dtype == np.int8 else TensorProto.UINT8
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])


CONV_CASES = [  # (C, M, k, group, pad, stride, size)
    (16, 24, 1, 1, 0, 1, 9),     # read in place (no copy)
    (16, 40, 3, 1, 1, 1, 11),    # padded
    (3, 8, 3, 1, 1, 2, 13),      # channels rounded up to 4
    (12, 6, 3, 3, 1, 1, 7),      # grouped, 4 channels a group
    (6, 6, 3, 3, 0, 1, 8),       # grouped, 2 channels a group (rounded up)
    (8, 16, 3, 8, 1, 2, 9),      # depthwise, channel multiplier 2
    (64, 64, 1, 1, 0, 1, 40),    # one long row cut into segments
]


@pytest.mark.parametrize("x_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("case", CONV_CASES)
def test_channels_last_conv_matches_nchw_and_onnxruntime(case, x_dtype):
    C, M, k, group, pad, stride, size = case
    rng = np.random.default_rng(stable_seed("cl", *case))
    w = random_q(rng, (M, C // group, k, k), np.int8)
    x = random_q(rng, (2, C, size, size - 1), x_dtype)
    pads, strides = [pad] * 4, [stride] * 2
    want = run_qrt(_conv_model(x.shape, w, group, pads, strides, False, x_dtype), {"x": x})[0]
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    model = _conv_model(x_nhwc.shape, w, group, pads, strides, True, x_dtype)
    got = run_qrt(model, {"x": x_nhwc})[0]
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))
    if x_dtype == np.uint8:     # onnxruntime's channels-last QLinearConv
        assert_within_one_step(got, run_ort(model, {"x": x_nhwc})[0], max_fraction=0.01)


def _pool_model(x_shape, dtype, **attrs):
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    node = helper.make_node("NhwcMaxPool", ["x"], ["y"], domain=MS, **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                              [helper.make_tensor_value_info("y", elem, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2]),
                                   dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
                                   dict(kernel_shape=[2, 3], pads=[1, 0, 1, 2], strides=[1, 2]),
                                   dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
                                   dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 1, 2, 1])])
def test_nhwc_max_pool_matches_onnxruntime(dtype, attrs):
    rng = np.random.default_rng(stable_seed("pool", str(attrs), np.dtype(dtype).name))
    x = random_q(rng, (2, 11, 10, 70), dtype)
    model = _pool_model(x.shape, dtype, **attrs)
    got = run_qrt(model, {"x": x})[0]
    np.testing.assert_array_equal(got, run_ort(model, {"x": x})[0])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("axis", [1, 3, -1, 0])
def test_qlinear_concat_tables_equal_elementwise_requantization(dtype, axis):
    """Each input through its 256-byte table gives exactly the per-element requantization."""
    from qrt.kernels.cpu import qelementwise as kq
    rng = np.random.default_rng(stable_seed("concat", axis, np.dtype(dtype).name))
    sizes = (3, 1, 4)
    shapes = [[2, 5, 4, 6] for _ in sizes]
    for shape, c in zip(shapes, sizes):
        shape[axis] = c
    xs = [random_q(rng, s, dtype) for s in shapes]
    scales = [np.float32(0.05), np.float32(0.02), np.float32(0.031)]
    zps = [dtype(3), dtype(-2 if dtype == np.int8 else 200), dtype(9)]
    y_s, y_z = np.float32(0.031), dtype(9)                 # input 2 is on the output grid already
    inits = [numpy_helper.from_array(np.array(y_s), "ys"), numpy_helper.from_array(np.array(y_z), "yz")]
    inputs = ["ys", "yz"]
    for i in range(3):
        inits += [numpy_helper.from_array(np.array(scales[i]), f"s{i}"), numpy_helper.from_array(np.array(zps[i]), f"z{i}")]
        inputs += [f"x{i}", f"s{i}", f"z{i}"]
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    node = helper.make_node("QLinearConcat", inputs, ["y"], domain=MS, axis=axis)
    graph = helper.make_graph([node], "cat", [helper.make_tensor_value_info(f"x{i}", elem, s) for i, s in enumerate(shapes)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    got = run_qrt(model, {f"x{i}": x for i, x in enumerate(xs)})[0]
    shift = 128 if dtype == np.int8 else 0
    info = np.iinfo(dtype)
    parts = []
    for x, s, z in zip(xs, scales, zps):
        part = np.empty_like(x)
        kq.requantize(x.reshape(-1).view(np.uint8), np.uint8(shift), np.int32(int(z) + shift), np.float32(s / y_s),
                      np.float32(int(y_z) + shift), np.float32(info.min + shift), np.float32(info.max + shift),
                      part.reshape(-1).view(np.uint8))
        parts.append(part)
    np.testing.assert_array_equal(got, np.concatenate(parts, axis=axis))
    np.testing.assert_array_equal(got.take(range(sizes[0] + sizes[1], sum(sizes)), axis=axis), xs[2])
